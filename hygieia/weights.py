"""ImageNet MobileNetV2 weights: a given path, the environment variable, or torchvision's download."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from hygieia.errors import HygieiaError

WEIGHTS_ENV = "HYGIEIA_MOBILENET_WEIGHTS"


def resolve_weights_path(weights: str | Path | None = None) -> Path | None:
    """The explicit path, else ``$HYGIEIA_MOBILENET_WEIGHTS``, else None (use torchvision's download)."""
    chosen = weights or os.environ.get(WEIGHTS_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_file():
        source = "--weights" if weights else f"${WEIGHTS_ENV}"
        raise HygieiaError(f"MobileNetV2 weights file {path} (from {source}) does not exist")
    return path


def load_mobilenet_v2(weights: str | Path | None = None):
    """torchvision ``mobilenet_v2`` with ImageNet weights, in eval mode.

    Offline machines pass a state_dict path (``--weights`` or ``$HYGIEIA_MOBILENET_WEIGHTS``);
    elsewhere torchvision downloads ``IMAGENET1K_V1`` into its cache.
    """
    import torch
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    path = resolve_weights_path(weights)
    if path is None:
        try:
            return mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1).eval()
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise HygieiaError(
                "could not download torchvision's ImageNet MobileNetV2 weights "
                f"({type(err).__name__}: {err}); offline, give a state_dict path with --weights "
                f"or ${WEIGHTS_ENV}") from err
    model = mobilenet_v2(weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, KeyError, pickle.UnpicklingError) as err:
        raise HygieiaError(f"{path}: not a torchvision mobilenet_v2 state_dict ({err})") from err
    return model.eval()
