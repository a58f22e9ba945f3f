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


# A small phantom, prepared once per test session: (70 / 20 / 20) samples at 3:2 (+ off-box probes in
# valid and test), hidden splits at 40 % AP in both classes (all its 10 PA opacities: 20 / 20 is the most
# it balances), 100x100 crops and 128x128 whole images. Deterministic for the seed.
PHANTOM_PATIENTS = 260
PHANTOM_SIZES = (70, 20, 20)
PHANTOM_AP_SHARE = 0.4


@pytest.fixture(scope="session")
def phantom_rsna(tmp_path_factory) -> Path:
    """An RSNA-format phantom download (stage_2_train_images/, the two label CSVs)."""
    from hygieia.rsna.phantom import generate_phantom

    out = tmp_path_factory.mktemp("phantom_rsna")
    generate_phantom(out, patients=PHANTOM_PATIENTS, seed=0)
    return out


@pytest.fixture(scope="session")
def phantom_prepared(tmp_path_factory, phantom_rsna, weights_path) -> Path:
    """``hygieia prepare`` output for the small phantom (input_data/, reference_data/, full_128/...)."""
    from hygieia.prepare.pipeline import prepare

    out = tmp_path_factory.mktemp("phantom_prepared")
    train, valid, test = PHANTOM_SIZES
    prepare(phantom_rsna, out, train=train, valid=valid, test=test, full_size=128,
            hidden_ap_share=PHANTOM_AP_SHARE, id_secret="phantom-fixture-" + "0" * 32, weights=weights_path)
    return out
