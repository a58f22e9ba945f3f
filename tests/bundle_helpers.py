"""Helpers shared by the bundle tests: a bundle built from tests/fakes.py data, and editing its YAML."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import yaml

from fakes import write_fake_dataset
from hygieia.bundle.build import build_bundle


TEST_IMAGE = "hygieia-tests/hygieia:0.1.0-cpu"  # a valid reference: `bundle check` refuses the placeholder


def build_fake_bundle(tmp: Path, with_card: bool = True) -> Path:
    """Fake prepared data (60/20/20) with a small dataset card, built into ``tmp/bundle.zip``."""
    data = write_fake_dataset(tmp / "data")
    if with_card:
        card = data / "card"
        card.mkdir()
        shutil.copy(Path(__file__).resolve().parents[1] / "logo.png", card / "counts.png")
        (card / "dataset_card.md").write_text("# Dataset card\n\n| split | n |\n|---|---|\n| train | 60 |\n\n"
                                              "![Counts per split](counts.png)\n")
    build_bundle(data, tmp / "bundle.zip", docker_image=TEST_IMAGE)
    return tmp / "bundle.zip"


def extract(bundle: Path, dest: Path) -> Path:
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(dest)
    return dest


def edit_yaml(folder: Path, change) -> dict:
    """Apply ``change(competition)`` to ``folder/competition.yaml`` and write it back."""
    path = folder / "competition.yaml"
    competition = yaml.safe_load(path.read_text())
    change(competition)
    path.write_text(yaml.safe_dump(competition, sort_keys=False))
    return competition
