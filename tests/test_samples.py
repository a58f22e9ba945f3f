"""The three sample submissions, zipped as a participant uploads them, through ingestion_program/ingestion.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from fakes import write_fake_dataset
from hygieia import dataset as ds
from hygieia.scoring.score import compute_results, load_inputs
from hygieia.submission.ingestion import HEATMAPS, PREDICTIONS, REPORT, run_ingestion
from hygieia.submission.loading import import_model_class, open_submission, zip_submission

ENTRY_POINT = ROOT / "ingestion_program" / "ingestion.py"


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory):
    return write_fake_dataset(tmp_path_factory.mktemp("fake"), sizes=(60, 20, 20)) / ds.INPUT_DIR


def run_entry_point(input_dir, tmp_path, sample: str, **env):
    """Zip a sample, unzip it as Codabench does, run the ingestion program in a subprocess."""
    unzipped = open_submission(zip_submission(ROOT / sample, tmp_path / f"{sample}.zip"), tmp_path / "ingested")
    output = tmp_path / "output"
    result = subprocess.run(
        [sys.executable, str(ENTRY_POINT), str(input_dir), str(output), str(ENTRY_POINT.parent), str(unzipped)],
        capture_output=True, text=True, cwd=ENTRY_POINT.parent, env={**os.environ, **env}, timeout=300)
    assert result.returncode == 0, result.stderr
    return output, json.loads((output / REPORT).read_text())


def check_predictions(input_dir, output):
    predictions = pd.read_csv(output / PREDICTIONS, dtype={"id": str})
    ids = [i for split in ds.SCORED_SPLITS for i in ds.load_input_split(input_dir, split)["ids"]]
    assert predictions["id"].tolist() == ids
    assert predictions["proba"].between(0, 1).all() and predictions["proba"].nunique() > 1
    assert (predictions["label"] == (predictions["proba"] >= 0.5)).all()
    return predictions


@pytest.mark.slow
def test_tabular_sample_end_to_end(input_dir, tmp_path):
    output, report = run_entry_point(input_dir, tmp_path, "sample_submission_tabular")
    assert report["status"] == "ok" and report["explanation"] is None
    predictions = check_predictions(input_dir, output)
    # The fake features carry the label (+0.5 on every feature): logistic regression must find it.
    labels = pd.read_csv(input_dir.parent / ds.REFERENCE_DIR / "valid" / ds.LABELS)["label"]
    assert (predictions["label"][:20].to_numpy() == labels.to_numpy()).mean() >= 0.9
    assert np.load(output / HEATMAPS)["maps"].shape == (0, 100, 100)


@pytest.mark.slow
def test_cnn_sample_end_to_end_with_gradcam(input_dir, tmp_path, weights_path):
    output, report = run_entry_point(input_dir, tmp_path, "sample_submission", HYGIEIA_FAST="1",
                                     HYGIEIA_MOBILENET_WEIGHTS=str(weights_path))
    assert report["status"] == "ok" and report["explanation"] == "gradcam"
    predictions = check_predictions(input_dir, output)
    heatmaps = np.load(output / HEATMAPS)
    assert heatmaps["ids"].tolist() == predictions["id"][predictions["label"] == 1].tolist()
    maps = heatmaps["maps"]
    assert maps.dtype == np.float16 and maps.shape == (len(heatmaps["ids"]), 100, 100) and len(maps) > 0
    assert np.isfinite(maps).all() and (maps >= 0).all()
    assert (maps.reshape(len(maps), -1).max(axis=1) > 0).mean() > 0.5


@pytest.mark.slow
def test_cnn_sample_is_deterministic(input_dir, weights_path, monkeypatch):
    monkeypatch.setenv("HYGIEIA_FAST", "1")
    monkeypatch.setenv("HYGIEIA_MOBILENET_WEIGHTS", str(weights_path))
    model_class = import_model_class(ROOT / "sample_submission")
    train, valid = ds.load_input_split(input_dir, "train"), ds.load_input_split(input_dir, "valid")
    y = train.pop("labels")
    probas = []
    for _ in range(2):
        model = model_class()
        model.fit(train, y)
        probas.append(model.predict_proba(valid))
    assert probas[0].shape == (20,) and np.array_equal(probas[0], probas[1])


@pytest.mark.slow
def test_boxes_sample_end_to_end_its_decision_rests_on_the_box(input_dir, tmp_path, weights_path):
    output, report = run_entry_point(input_dir, tmp_path, "sample_submission_boxes", HYGIEIA_FAST="1",
                                     HYGIEIA_MOBILENET_WEIGHTS=str(weights_path))
    assert report["status"] == "ok" and report["explanation"] == "explain"
    predictions = check_predictions(input_dir, output)
    heatmaps = np.load(output / HEATMAPS)
    assert heatmaps["ids"].tolist() == predictions["id"][predictions["label"] == 1].tolist()
    maps = heatmaps["maps"].astype(np.float32)
    assert maps.shape == (len(heatmaps["ids"]), 100, 100) and len(maps) > 0 and (maps >= 0).all()
    # its map is its top-4 cells of an 8 x 8 grid: at most about a quarter of the crop lit
    assert ((maps > 0).mean(axis=(1, 2)) < 0.3).all()
    # The fake opacity is a bright blob in the box: filling in the box's cells must cost more than as
    # much area elsewhere (above chance, 0). The blob is so plain that one filled cell leaves the
    # probability near 1 (its other cells still fire), so the margin is small: the interval is tested.
    results = compute_results(*load_inputs(input_dir.parent / ds.REFERENCE_DIR / "valid", output), progress=False)
    assert results["ci"]["box_reliance"][0] > 0, results["evidence"]
    assert results["scores"]["activation_in_box"] > 0.8


@pytest.mark.slow
def test_boxes_sample_without_the_view_on_non_square_crops(input_dir, weights_path, monkeypatch, capsys):
    monkeypatch.setenv("HYGIEIA_FAST", "1")
    monkeypatch.setenv("HYGIEIA_MOBILENET_WEIGHTS", str(weights_path))
    model = import_model_class(ROOT / "sample_submission_boxes")()
    train, valid = ds.load_input_split(input_dir, "train"), ds.load_input_split(input_dir, "valid")
    y = train.pop("labels")
    with pytest.raises(ValueError, match=r"X\['boxes'\] is missing"):
        model.fit({key: value for key, value in train.items() if key != "boxes"}, y)
    train = {**train, "images": train["images"][:, :, :80], "meta": train["meta"].drop(columns="view_position")}
    valid = {**valid, "images": valid["images"][:, :, :80]}
    model.fit(train, y)
    assert "no view_position; balancing the classes only" in capsys.readouterr().err
    proba, maps = model.predict_proba(valid), model.explain(valid)
    assert proba.shape == (20,) and np.isfinite(proba).all() and maps.shape == (20, 100, 80)


def test_cnn_sample_names_unusable_weights(input_dir, tmp_path, monkeypatch):
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    monkeypatch.setenv("HYGIEIA_MOBILENET_WEIGHTS", str(tmp_path / "bad.pth"))
    report = run_ingestion(input_dir, tmp_path / "output", ROOT / "sample_submission")
    assert report["status"] == "failed" and report["error"]["stage"] == "import"
    assert "Model() failed: model.py line" in report["error"]["message"]
    assert "bad.pth: not a usable mobilenet_v2 state_dict" in report["error"]["message"]


@pytest.mark.slow
@pytest.mark.parametrize("sample", ["sample_submission", "sample_submission_boxes"])
def test_image_samples_on_the_prepared_phantom(request, tmp_path, weights_path, monkeypatch, sample):
    pytest.importorskip("hygieia.prepare.pipeline")
    pytest.importorskip("hygieia.rsna.phantom")
    prepared = request.getfixturevalue("phantom_prepared")
    monkeypatch.setenv("HYGIEIA_FAST", "1")
    monkeypatch.setenv("HYGIEIA_MOBILENET_WEIGHTS", str(weights_path))
    report = run_ingestion(prepared / ds.INPUT_DIR, tmp_path / "output", ROOT / sample)
    assert report["status"] == "ok", report["error"]
    check_predictions(prepared / ds.INPUT_DIR, tmp_path / "output")
    assert report["counts"]["heatmaps"] == report["counts"]["valid_positive"] + report["counts"]["test_positive"]
