"""Hygieia sample submission: ImageNet MobileNetV2, frozen, with a trained linear layer on top.

The original Hygieia baseline. Images are resized to 128 x 128, repeated to 3 channels and
normalised as for ImageNet; the convolutional part of MobileNetV2 stays frozen, so its pooled
output is computed once per image and only the linear layer (1280 -> 2) is trained: SGD
(lr 0.001, momentum 0.9, batches of 8), cross-entropy, 5 epochs, keeping the epoch with the best accuracy on a
10% internal validation split of train. Explanations: Grad-CAM on the last convolutional block,
computed by the ingestion program from ``gradcam_target()``.

Weights: ``$HYGIEIA_MOBILENET_WEIGHTS`` (a torchvision mobilenet_v2 state_dict) if set, else
``mobilenet_v2_imagenet.pth`` beside this file if present, else torchvision's ``IMAGENET1K_V1``
(downloaded, or found in torch's cache). ``HYGIEIA_FAST=1`` trains on at most 300 images (for tests and demos;
the epochs stay, as training the head on cached features costs little). Runs on CUDA when available.

The report does not give the batch size. Small batches matter on small training sets: with 32,
the 120-image demo training set gets 20 optimizer steps in 5 epochs and the head stays near its
initialisation; 8 gives the same accuracy at the competition's size and learns on small sets too.
"""

import copy
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

IMAGE_SIZE = 128
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EPOCHS, FAST_IMAGES = 5, 300
BATCH_SIZE = 8
EMBED_BATCH_SIZE = 64
LEARNING_RATE, MOMENTUM, DROPOUT = 0.001, 0.9, 0.2
VALIDATION_FRACTION = 0.1
SEED = 0
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "mobilenet_v2_imagenet.pth"


def load_mobilenet_v2():
    """torchvision's mobilenet_v2 with ImageNet weights (see the module docstring for where from)."""
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    path = os.environ.get("HYGIEIA_MOBILENET_WEIGHTS") or (BUNDLED_WEIGHTS if BUNDLED_WEIGHTS.is_file() else None)
    if path is None:
        try:
            return mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1)
        except (OSError, RuntimeError) as err:
            raise RuntimeError("cannot get ImageNet MobileNetV2 weights from torchvision "
                               f"({type(err).__name__}: {err}); offline, set $HYGIEIA_MOBILENET_WEIGHTS "
                               f"or put {BUNDLED_WEIGHTS.name} beside model.py") from err
    model = mobilenet_v2(weights=None)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as err:
        reason = str(err).splitlines()[0]
        raise RuntimeError(f"{path}: not a usable mobilenet_v2 state_dict ({type(err).__name__}: {reason})") from err
    return model


def fold_batchnorm(module):
    """Fold each BatchNorm2d that follows a Conv2d into the convolution (eval mode only: the frozen
    backbone's outputs are unchanged and about a third faster on CPU). Remove this to fine-tune."""
    for child in module.children():
        fold_batchnorm(child)
    children = list(module.named_children())
    for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, norm_name, nn.Identity())
    return module


class Preprocess(nn.Module):
    """(N, 1, H, W) pixels / 255 -> (N, 3, 128, 128) normalised as for ImageNet."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, pixels):
        resized = F.interpolate(pixels, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        return (resized.expand(-1, 3, -1, -1) - self.mean) / self.std


class Network(nn.Module):
    """Pixels / 255 (N, 1, H, W) -> logits (N, 2): preprocessing, MobileNetV2 features, linear head."""

    def __init__(self, backbone):
        super().__init__()
        self.preprocess = Preprocess()
        self.features = backbone.features
        self.head = nn.Linear(backbone.last_channel, 2)

    def embed(self, pixels):
        inputs = self.preprocess(pixels).contiguous(memory_format=torch.channels_last)  # faster on CPU
        return F.adaptive_avg_pool2d(self.features(inputs), 1).flatten(1)

    def forward(self, pixels):
        return self.head(self.embed(pixels))


class Model:
    def __init__(self):
        torch.manual_seed(SEED)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.fast = os.environ.get("HYGIEIA_FAST") == "1"
        backbone = fold_batchnorm(load_mobilenet_v2().eval())
        self.network = Network(backbone).to(self.device, memory_format=torch.channels_last).eval()
        self.network.features.requires_grad_(False)

    def embed(self, images):
        """The frozen backbone's pooled output (N, 1280) for (N, H, W) uint8 images, in batches.

        no_grad rather than inference_mode: training the head saves these tensors for backward.
        """
        chunks = []
        with torch.no_grad():
            starts = range(0, len(images), EMBED_BATCH_SIZE)
            for start in tqdm(starts, desc="MobileNetV2", unit="batch", disable=len(starts) < 10):
                batch = torch.from_numpy(images[start:start + EMBED_BATCH_SIZE]).to(self.device)
                chunks.append(self.network.embed(batch.unsqueeze(1).float() / 255))
        return torch.cat(chunks)

    def fit(self, X, y):
        images, y = X["images"], np.asarray(y)
        rng = np.random.default_rng(SEED)
        if self.fast:
            keep = np.sort(rng.permutation(len(y))[:FAST_IMAGES])
            images, y = images[keep], y[keep]
        order = rng.permutation(len(y))
        n_valid = max(1, round(len(y) * VALIDATION_FRACTION))
        valid, train = torch.from_numpy(order[:n_valid]), torch.from_numpy(order[n_valid:])
        features = self.embed(images)
        labels = torch.from_numpy(y.astype(np.int64)).to(self.device)

        head = self.network.head
        optimizer = torch.optim.SGD(head.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        generator = torch.Generator().manual_seed(SEED)
        best_accuracy, best_state = -1.0, None
        for _ in range(EPOCHS):
            for batch in train[torch.randperm(len(train), generator=generator)].split(BATCH_SIZE):
                logits = head(F.dropout(features[batch], DROPOUT, training=True))
                loss = F.cross_entropy(logits, labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                accuracy = (head(features[valid]).argmax(1) == labels[valid]).float().mean().item()
            if accuracy > best_accuracy:
                best_accuracy, best_state = accuracy, copy.deepcopy(head.state_dict())
        head.load_state_dict(best_state)
        return self

    def predict_proba(self, X):
        with torch.no_grad():
            logits = self.network.head(self.embed(X["images"]))
        return torch.softmax(logits, dim=1)[:, 1].cpu().numpy()

    def gradcam_target(self):
        """The network (pixels / 255 -> logits) and its last convolutional block, for Grad-CAM."""
        return self.network, self.network.features[-1]
