"""MobileNetV2 features: equal to a direct torchvision forward pass; weight problems reach the user."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path
from hygieia.errors import HygieiaError
from hygieia.prepare.features import FeatureExtractor, extract_features, feature_input
from hygieia.rsna.dicom import read_dicom


def _direct_features(images: np.ndarray, weights_path) -> np.ndarray:
    """An independent pass: torchvision's model and transforms, pooled with adaptive_avg_pool2d."""
    import torch
    import torchvision.transforms.functional as TF
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None)
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    model.eval()
    batch = torch.stack([TF.normalize(TF.to_tensor(np.repeat(image[:, :, None], 3, axis=2)),
                                      [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) for image in images])
    with torch.no_grad():
        pooled = torch.nn.functional.adaptive_avg_pool2d(model.features(batch), 1).flatten(1)
    return pooled.numpy()


@pytest.mark.slow
def test_features_match_direct_torchvision(weights_path):
    folder = shared_path("data", "rsna_real_mini", "stage_2_train_images")
    paths = sorted(folder.glob("*.dcm"))[:3]
    images = np.stack([feature_input(read_dicom(path)[0]) for path in paths])
    assert images.shape == (3, 224, 224) and images.dtype == np.uint8
    features = extract_features(images, weights=weights_path, batch_size=2)
    assert features.shape == (3, 1280) and features.dtype == np.float32
    np.testing.assert_allclose(features, _direct_features(images, weights_path), rtol=1e-4, atol=1e-5)
    assert np.abs(features[0] - features[1]).max() > 0.1  # different radiographs, different features


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(HygieiaError, match=f"{missing} .*does not exist"):
        FeatureExtractor(missing)


def test_wrong_weights_file_is_named(tmp_path):
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"not a state dict")
    with pytest.raises(HygieiaError, match=f"{wrong}: not a torchvision mobilenet_v2 state_dict"):
        FeatureExtractor(wrong)
