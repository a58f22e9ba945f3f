"""``hygieia bundle build``: layout, self-contained programs, the starting kit, determinism."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from bundle_helpers import TEST_IMAGE, build_fake_bundle
from conftest import PHANTOM_SIZES
from fakes import write_fake_dataset
from hygieia.dataset import SPLITS

from hygieia.bundle.archive import unpack
from hygieia.bundle.build import build_bundle
from hygieia.bundle.check import check_bundle
from hygieia.errors import HygieiaError
from hygieia.scoring.keys import LEADERBOARD_COLUMNS, PRIMARY_KEY, SCORE_KEYS


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("build"))


def names_of(bundle: Path) -> list[str]:
    with zipfile.ZipFile(bundle) as archive:
        return archive.namelist()


def test_layout_has_yaml_at_root_and_every_part(bundle):
    names = set(names_of(bundle))
    for expected in ("competition.yaml", "logo.png", "pages/overview.md", "pages/data.md",
                     "pages/evaluation.md", "pages/model_api.md", "pages/terms.md", "input_data.zip",
                     "ingestion_program/ingestion.py", "ingestion_program/metadata.yaml",
                     "scoring_program/score.py", "scoring_program/metadata.yaml",
                     "reference_data/valid/labels.csv", "reference_data/test/boxes.csv",
                     "starting_kit/sample_submission.zip", "starting_kit/sample_submission_boxes.zip",
                     "starting_kit/sample_submission_tabular.zip",
                     "starting_kit/input_data/train/images.npy", "starting_kit/scoring_program/score.py",
                     "starting_kit/ingestion_program/ingestion.py", "starting_kit/README.ipynb"):
        assert expected in names, expected
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    # hidden labels of the scored splits never reach the public data
    assert not any(n.startswith(("starting_kit/input_data/valid/labels", "starting_kit/input_data/test/labels"))
                   for n in names)


def test_programs_carry_only_the_modules_they_import(bundle):
    names = set(names_of(bundle))

    def vendored(prefix):
        return {n[len(prefix + "hygieia/"):] for n in names if n.startswith(prefix + "hygieia/")}

    ingestion, scoring = vendored("ingestion_program/"), vendored("scoring_program/")
    assert {"__init__.py", "dataset.py", "submission/ingestion.py", "submission/gradcam.py"} <= ingestion
    assert {"__init__.py", "dataset.py", "scoring/keys.py", "scoring/score.py", "scoring/report.py"} <= scoring
    assert not any(m.startswith(("scoring/", "bundle/", "prepare/", "rsna/")) for m in ingestion)
    assert not any(m.startswith(("submission/ingestion", "bundle/", "prepare/", "rsna/")) for m in scoring)
    # the starting kit has its own copy of what its notebook and helpers import
    kit = vendored("starting_kit/")
    assert {"bundle/worker.py", "bundle/build.py", "dataset.py", "submission/loading.py"} <= kit


def test_ingestion_budget_follows_the_phases_time_limit(bundle):
    with zipfile.ZipFile(bundle) as archive:
        budget = json.loads(archive.read("ingestion_program/budget.json"))
        assert json.loads(archive.read("starting_kit/ingestion_program/budget.json")) == budget
    assert budget == {"time_budget_s": 540.0}  # 90 % of min(600, 600)


def test_time_budget_takes_the_smallest_effective_limit():
    from hygieia.bundle.build import time_budget
    tasks = [{"index": 0, "ingestion_program": "ingestion_program"}, {"index": 1, "ingestion_program": "other"}]
    phases = [{"tasks": [0], "execution_time_limit": 3600}, {"tasks": [0], "execution_time_limit": 1200},
              {"tasks": [1], "execution_time_limit": 100}]
    assert time_budget({"tasks": tasks, "phases": phases}) == 540.0
    assert time_budget({"tasks": tasks, "phases": phases, "queue": "gpu"}) == 1080.0


def test_leaderboard_columns_come_from_the_scoring_keys(bundle):
    with zipfile.ZipFile(bundle) as archive:
        competition = yaml.safe_load(archive.read("competition.yaml"))
    columns = competition["leaderboards"][0]["columns"]
    assert [c["key"] for c in columns] == SCORE_KEYS
    assert [c["title"] for c in columns] == [c["title"] for c in LEADERBOARD_COLUMNS]
    assert [c["index"] for c in columns] == list(range(len(SCORE_KEYS)))
    assert competition["leaderboards"][0]["primary_index"] == SCORE_KEYS.index(PRIMARY_KEY) == 0
    assert all(c["sorting"] in ("asc", "desc") and isinstance(c["precision"], int) for c in columns)
    assert "60 images" in competition["phases"][0]["description"]


def test_scoring_program_carries_its_columns_for_the_check(bundle):
    """bundle check reads the keys the scoring program writes from plain JSON: no bundle code runs."""
    with zipfile.ZipFile(bundle) as archive:
        for prefix in ("", "starting_kit/"):
            assert json.loads(archive.read(f"{prefix}scoring_program/leaderboard.json")) == LEADERBOARD_COLUMNS


def test_data_page_inlines_the_dataset_card(bundle):
    with zipfile.ZipFile(bundle) as archive:
        page = archive.read("pages/data.md").decode()
        assert "starting_kit/dataset_card/dataset_card.md" in archive.namelist()
    assert "# Dataset card" in page and "![Counts per split](data:image/png;base64," in page
    assert "counts.png)" not in page


def test_sample_submission_zips_have_model_at_root(bundle):
    with zipfile.ZipFile(bundle) as archive:
        for name in ("sample_submission", "sample_submission_boxes", "sample_submission_tabular"):
            inner = zipfile.ZipFile(io.BytesIO(archive.read(f"starting_kit/{name}.zip")))
            assert "model.py" in inner.namelist()


def test_input_data_holds_the_splits_at_its_root(bundle, tmp_path):
    """Codabench's worker extracts input_data.zip plainly into /app/input_data: the splits land there."""
    with zipfile.ZipFile(bundle) as archive:
        (tmp_path / "input_data.zip").write_bytes(archive.read("input_data.zip"))
    unpack(tmp_path / "input_data.zip", tmp_path / "unpacked")
    assert sorted(p.name for p in (tmp_path / "unpacked").iterdir()) == ["test", "train", "valid"]
    assert (tmp_path / "unpacked" / "train" / "images.npy").is_file()


def test_zip_entries_have_fixed_time_and_permissions(bundle):
    with zipfile.ZipFile(bundle) as archive:
        infos = archive.infolist()
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {stat.S_IMODE(info.external_attr >> 16) for info in infos} == {0o644}
    assert [info.filename for info in infos] == sorted(info.filename for info in infos)


def test_build_is_deterministic(tmp_path, bundle):
    again = build_bundle(Path(bundle).parent / "data", tmp_path / "again.zip", docker_image=TEST_IMAGE)
    assert again.path.read_bytes() == Path(bundle).read_bytes()
    assert "input_data.zip" in again.report() and "samples: train 60, valid 20, test 20" in again.report()


def test_docker_image_option(tmp_path, bundle):
    summary = build_bundle(Path(bundle).parent / "data", tmp_path / "b.zip", docker_image="me/hygieia:9-gpu")
    with zipfile.ZipFile(summary.path) as archive:
        assert yaml.safe_load(archive.read("competition.yaml"))["docker_image"] == "me/hygieia:9-gpu"


def test_missing_data_file_is_named(tmp_path):
    data = write_fake_dataset(tmp_path / "data", sizes=(10, 5, 5))
    (data / "reference_data" / "test" / "boxes.csv").unlink()
    with pytest.raises(HygieiaError, match=r"reference_data/test/boxes\.csv"):
        build_bundle(data, tmp_path / "b.zip")
    assert not (tmp_path / "b.zip").exists()


def test_logo_is_a_square_png(bundle):
    with zipfile.ZipFile(bundle) as archive:
        logo = Image.open(io.BytesIO(archive.read("logo.png")))
    assert logo.format == "PNG" and logo.size[0] == logo.size[1] >= 200


def test_fake_bundle_passes_check(bundle):
    assert [f for f in check_bundle(bundle) if f.level == "error"] == []


@pytest.mark.slow
def test_phantom_bundle_builds_and_passes_check(phantom_prepared, tmp_path):
    summary = build_bundle(phantom_prepared, tmp_path / "bundle.zip")
    # the hidden splits hold their sampled films plus the off-box probes
    served = {split: len(pd.read_csv(phantom_prepared / "input_data" / split / "meta.csv")) for split in SPLITS}
    assert summary.counts == served
    assert served["train"] == PHANTOM_SIZES[0] and served["valid"] > PHANTOM_SIZES[1]
    assert any("placeholder" in str(f) for f in check_bundle(summary.path) if f.level == "error")
    assert [str(f) for f in check_bundle(summary.path, allow_placeholder_image=True) if f.level == "error"] == []
    with zipfile.ZipFile(summary.path) as archive:
        page = archive.read("pages/data.md").decode()
    assert "data:image/png;base64," in page  # prepare's dataset card, figures inlined
