"""Shared test fixtures. Data in ../shared is used where present; tests that need it skip otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HYGIEIA_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared holds the real RSNA files and weights)")
    return path


@pytest.fixture(scope="session")
def weights_path() -> Path:
    """ImageNet MobileNetV2 weights: $HYGIEIA_MOBILENET_WEIGHTS, else ../shared's copy, else skip."""
    env = os.environ.get("HYGIEIA_MOBILENET_WEIGHTS")
    if env and Path(env).is_file():
        return Path(env)
    return shared_path("weights", "mobilenet_v2_imagenet.pth")
