"""The two sample submissions, zipped as a participant uploads them, through ingestion_program/ingestion.py."""

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


def test_cnn_sample_names_unusable_weights(input_dir, tmp_path, monkeypatch):
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    monkeypatch.setenv("HYGIEIA_MOBILENET_WEIGHTS", str(tmp_path / "bad.pth"))
    report = run_ingestion(input_dir, tmp_path / "output", ROOT / "sample_submission")
    assert report["status"] == "failed" and report["error"]["stage"] == "import"
    assert "Model() failed: model.py line" in report["error"]["message"]
    assert "bad.pth: not a usable mobilenet_v2 state_dict" in report["error"]["message"]


@pytest.mark.slow
def test_cnn_sample_on_the_prepared_phantom(request, tmp_path, weights_path, monkeypatch):
    pytest.importorskip("hygieia.prepare.pipeline")
    pytest.importorskip("hygieia.rsna.phantom")
    prepared = request.getfixturevalue("phantom_prepared")
    monkeypatch.setenv("HYGIEIA_FAST", "1")
    monkeypatch.setenv("HYGIEIA_MOBILENET_WEIGHTS", str(weights_path))
    report = run_ingestion(prepared / ds.INPUT_DIR, tmp_path / "output", ROOT / "sample_submission")
    assert report["status"] == "ok", report["error"]
    check_predictions(prepared / ds.INPUT_DIR, tmp_path / "output")
    assert report["counts"]["heatmaps"] == report["counts"]["valid_positive"] + report["counts"]["test_positive"]
