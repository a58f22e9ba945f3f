"""The ingestion run on tiny hand-written submissions: outputs, Grad-CAM, and every failure's message."""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fakes import write_fake_dataset
from hygieia import dataset as ds
from hygieia.submission import commands
from hygieia.errors import HygieiaError
from hygieia.submission.ingestion import HEATMAPS, PREDICTIONS, REPORT, main, read_budget, run_ingestion

# Predicts the even rows positive; optional parts are added by the tests.
BASE = """\
import numpy as np


class Model:
    def fit(self, X, y):
        assert "labels" not in X and len(y) == len(X["ids"]) and set(np.unique(y)) == {0, 1}
        self.n_train = len(y)

    def predict_proba(self, X):
        return np.where(np.arange(len(X["ids"])) % 2 == 0, 0.9, 0.1)
"""
BRIGHTNESS_EXPLAIN = """
    def explain(self, X):
        return X["images"].astype(np.float32) / 255
"""


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory):
    return write_fake_dataset(tmp_path_factory.mktemp("fake"), sizes=(40, 12, 10)) / ds.INPUT_DIR


def submission(tmp_path, code: str, **files) -> Path:
    folder = tmp_path / "submission"
    folder.mkdir()
    (folder / "model.py").write_text(textwrap.dedent(code))
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def ingest(input_dir, tmp_path, folder, capsys=None):
    """Run ingestion's main() as Codabench does; return (exit status, report, stderr)."""
    output, program = tmp_path / "output", tmp_path / "program"
    program.mkdir(exist_ok=True)
    status = main([str(input_dir), str(output), str(program), str(folder)])
    report = json.loads((output / REPORT).read_text())
    err = capsys.readouterr().err if capsys else ""
    return status, report, err


def line_of(code: str, text: str) -> int:
    return next(i for i, line in enumerate(code.splitlines(), 1) if text in line)


def test_explain_model_writes_all_outputs(input_dir, tmp_path, capsys):
    status, report, _ = ingest(input_dir, tmp_path, submission(tmp_path, BASE + BRIGHTNESS_EXPLAIN), capsys)
    assert status == 0 and report["status"] == "ok" and report["error"] is None
    assert report["explanation"] == "explain" and report["device"].startswith(("cpu", "cuda"))
    assert set(report["durations"]) == {"load", "alter", "import", "fit", "predict", "evidence", "explain", "total"}
    assert report["evidence"] == {"grid": 4, "cells": 16, "images": {"valid": 12, "test": 10}, "copies": 352}
    predictions = pd.read_csv(tmp_path / "output" / PREDICTIONS, dtype={"id": str})
    valid, test = (ds.load_input_split(input_dir, split) for split in ("valid", "test"))
    assert predictions.columns.tolist() == ["id", "proba", "label"]
    assert predictions["id"].tolist() == valid["ids"] + test["ids"]
    assert predictions["label"].tolist() == [1 - i % 2 for i in range(12)] + [1 - i % 2 for i in range(10)]
    heatmaps = np.load(tmp_path / "output" / HEATMAPS)
    positives = valid["ids"][::2] + test["ids"][::2]
    assert heatmaps["ids"].tolist() == positives and report["counts"]["heatmaps"] == 11
    assert heatmaps["maps"].dtype == np.float16 and heatmaps["maps"].shape == (11, 100, 100)
    images = np.concatenate([valid["images"][::2], test["images"][::2]]).astype(np.float64)
    expected = images / images.max(axis=(1, 2), keepdims=True)  # each map divided by its own maximum
    assert np.allclose(heatmaps["maps"], expected, atol=1e-3) and report["counts"]["zero_heatmaps"] == 0


def test_predict_overrides_the_threshold_and_no_explanation_is_stated(input_dir, tmp_path, capsys):
    code = BASE + "\n    def predict(self, X):\n        return np.ones(len(X['ids']), dtype=int)\n"
    status, report, _ = ingest(input_dir, tmp_path, submission(tmp_path, code), capsys)
    assert status == 0 and report["explanation"] is None
    assert (pd.read_csv(tmp_path / "output" / PREDICTIONS)["label"] == 1).all()
    heatmaps = np.load(tmp_path / "output" / HEATMAPS)
    assert heatmaps["ids"].shape == (0,) and heatmaps["maps"].shape == (0, 100, 100)


GRADCAM = """
    def gradcam_target(self):
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(1, 2, 3, stride=2, padding=1, bias=False)
                self.head = torch.nn.Linear(2, 2)

            def forward(self, pixels):
                return self.head(self.conv(pixels).relu().mean(dim=(2, 3))){squeeze}

        net = Net()
        with torch.no_grad():
            net.conv.weight.fill_(1 / 9)
            net.head.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
        return net, net.conv
"""


@pytest.mark.parametrize("squeeze", ["", "[:, 1]"])
def test_gradcam_follows_the_contract(input_dir, tmp_path, capsys, squeeze):
    code = BASE + GRADCAM.replace("{squeeze}", squeeze)
    status, report, _ = ingest(input_dir, tmp_path, submission(tmp_path, code), capsys)
    assert status == 0 and report["explanation"] == "gradcam"
    heatmaps = np.load(tmp_path / "output" / HEATMAPS)
    valid, test = (ds.load_input_split(input_dir, split) for split in ("valid", "test"))
    assert heatmaps["ids"].tolist() == valid["ids"][::2] + test["ids"][::2]
    maps = heatmaps["maps"].astype(np.float32)
    assert heatmaps["maps"].dtype == np.float16 and maps.shape == (11, 100, 100)
    assert (maps >= 0).all() and (maps.reshape(11, -1).max(axis=1) > 0).all()
    # Both channels are the 3x3 mean of the pixels and the opacity logit is their spatial mean summed:
    # each channel's Grad-CAM weight is 1/2500, so the map is 2/2500 x the blurred image, upsampled.
    torch = pytest.importorskip("torch")
    pixels = torch.from_numpy(np.concatenate([valid["images"][::2], test["images"][::2]])).float()[:, None] / 255
    blurred = torch.nn.functional.conv2d(pixels, torch.full((1, 1, 3, 3), 1 / 9), stride=2, padding=1)
    expected = torch.nn.functional.interpolate(blurred * 2 / 2500, size=(100, 100), mode="bilinear")[:, 0].numpy()
    expected /= expected.max(axis=(1, 2), keepdims=True)  # ingestion divides each map by its maximum
    assert np.allclose(maps, expected, rtol=2e-3, atol=1e-3)


def expect_failure(input_dir, tmp_path, capsys, code, stage, message, **files):
    status, report, err = ingest(input_dir, tmp_path, submission(tmp_path, code, **files), capsys)
    assert status == 1 and report["status"] == "failed"
    assert report["error"]["stage"] == stage
    assert message in report["error"]["message"], report["error"]["message"]
    assert "Traceback" in report["error"]["traceback"]
    assert err.rstrip().splitlines()[-1] == f"ingestion failed during {stage}: {report['error']['message']}"
    return report


def test_syntax_error_names_the_line(input_dir, tmp_path, capsys):
    code = BASE.replace("def fit(self, X, y):", "def fit(self, X, y)")
    expect_failure(input_dir, tmp_path, capsys, code, "import",
                   f"importing model.py failed: model.py line {line_of(code, 'def fit')}: SyntaxError: ")


def test_missing_model_class(input_dir, tmp_path, capsys):
    expect_failure(input_dir, tmp_path, capsys, BASE.replace("class Model", "class MyModel"), "import",
                   "model.py defines no class named Model")


def test_exception_in_fit_names_the_line(input_dir, tmp_path, capsys):
    code = BASE.replace("self.n_train = len(y)", "raise ValueError('cannot learn')")
    report = expect_failure(input_dir, tmp_path, capsys, code, "fit",
                            f"Model.fit failed: model.py line {line_of(code, 'cannot learn')}: "
                            "ValueError: cannot learn")
    assert not (tmp_path / "output" / PREDICTIONS).exists() and report["files"] == []


@pytest.mark.parametrize("proba, message", [
    ("np.full(len(X['ids']) - 1, 0.5)", "Model.predict_proba returned 11 values for 12 valid images"),
    ("np.where(np.arange(len(X['ids'])) == 3, np.nan, 0.5)", "returned NaN or infinite values for 1 valid images"),
    ("np.full(len(X['ids']), 1.2)", "Model.predict_proba returned values outside [0, 1] for 12 valid images"),
])
def test_bad_probabilities(input_dir, tmp_path, capsys, proba, message):
    code = BASE.replace("np.where(np.arange(len(X[\"ids\"])) % 2 == 0, 0.9, 0.1)", proba)
    expect_failure(input_dir, tmp_path, capsys, code, "predict", message)


def test_bad_labels(input_dir, tmp_path, capsys):
    code = BASE + "\n    def predict(self, X):\n        return np.full(len(X['ids']), 2)\n"
    expect_failure(input_dir, tmp_path, capsys, code, "predict", "Model.predict returned labels other than 0 and 1")


@pytest.mark.parametrize("explain, message", [
    ("X['images'][:, :50].astype(float)", "Model.explain returned heatmaps of shape (6, 50, 100) for 6 valid "
                                          "images; expected (6, 100, 100)"),
    ("X['images'].astype(float) - 300", "Model.explain returned negative heatmap values for 6 valid images"),
])
def test_bad_heatmaps_keep_the_predictions(input_dir, tmp_path, capsys, explain, message):
    code = BASE + BRIGHTNESS_EXPLAIN.replace('X["images"].astype(np.float32) / 255', explain)
    report = expect_failure(input_dir, tmp_path, capsys, code, "explain", message)
    assert report["files"] == [PREDICTIONS, ds.EVIDENCE] and not (tmp_path / "output" / HEATMAPS).exists()
    assert len(pd.read_csv(tmp_path / "output" / PREDICTIONS)) == 22


def test_time_budget_names_the_running_stage(input_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYGIEIA_TIME_BUDGET", "4")
    code = BASE.replace("self.n_train = len(y)", "import time\n        time.sleep(60)")
    report = expect_failure(input_dir, tmp_path, capsys, code, "fit",
                            "time budget of 4 s ($HYGIEIA_TIME_BUDGET) exceeded during fit")
    assert report["durations"]["total"] < 20 and report["time_budget_source"] == "$HYGIEIA_TIME_BUDGET"


def test_data_error_is_reported(tmp_path, capsys):
    status, report, err = ingest(tmp_path / "missing", tmp_path, submission(tmp_path, BASE), capsys)
    assert status == 2 and report["error"]["stage"] == "setup"
    assert report["error"]["message"] == f"input data folder {tmp_path / 'missing'}: not found"
    assert err.strip() == f"ingestion: error: {report['error']['message']}"
    (tmp_path / "empty").mkdir()
    status, report, err = ingest(tmp_path / "empty", tmp_path, tmp_path / "submission", capsys)
    assert status == 1 and report["error"]["stage"] == "load"
    assert "empty/valid/meta.csv: file not found" in report["error"]["message"]


def zip_of(tmp_path, files: dict):
    path = tmp_path / "upload.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


HELPER_MODEL = BASE.replace("import numpy as np\n", "import numpy as np\nfrom helper import PROBA\n").replace(
    "0.9, 0.1)", "PROBA, 0.1)")


@pytest.mark.parametrize("files", [
    {"mine/model.py": HELPER_MODEL, "mine/helper.py": "PROBA = 0.8\n", "__MACOSX/mine/._model.py": "", ".DS_Store": ""},
    {"model.py": HELPER_MODEL, "helper.py": "PROBA = 0.8\n", "README.md": "notes", "data/extra.txt": "x",
     "metadata": "description: mine\n"},
])
def test_zips_with_a_wrapper_folder_or_extra_files_work(input_dir, tmp_path, capsys, files):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["ingest", str(input_dir), str(tmp_path / "output"), str(zip_of(tmp_path, files))])
    assert args.func(args) == 0
    predictions = pd.read_csv(tmp_path / "output" / PREDICTIONS)
    assert predictions["proba"].iloc[0] == 0.8


@pytest.mark.parametrize("files, message", [
    ({"a/model.py": BASE, "b/model.py": BASE}, "found a/model.py, b/model.py"),
    ({"model_v2.py": BASE}, "no model.py at the submission's root or inside one wrapper folder"),
    ({"model.py": BASE, "../escape.py": "x = 1\n"}, "entry '../escape.py' points outside the zip"),
])
def test_zips_without_one_model_file_fail_clearly(input_dir, tmp_path, capsys, files, message):
    report = run_ingestion(input_dir, tmp_path / "output", zip_of(tmp_path, files))
    assert report["status"] == "failed" and report["error"]["stage"] == "import"
    assert message in report["error"]["message"]


def test_sys_exit_in_a_model_is_a_failure_not_an_exit(input_dir, tmp_path, capsys):
    code = BASE.replace("self.n_train = len(y)", "import sys\n        sys.exit(3)")
    expect_failure(input_dir, tmp_path, capsys, code, "fit",
                   f"Model.fit failed: model.py line {line_of(code, 'sys.exit(3)')}: SystemExit: 3")


def test_entry_point_usage(capsys):
    assert main(["only", "two"]) == 2
    assert "usage: ingestion.py [INPUT_DATA OUTPUT PROGRAM_DIR SUBMISSION_DIR]" in capsys.readouterr().err
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ingestion.py") and "/app/input_data" in out and "HYGIEIA_TIME_BUDGET" in out


def test_tiny_huge_and_zero_heatmaps_are_stored_whole_and_zeros_counted(input_dir, tmp_path, capsys):
    code = BASE + """
    def explain(self, X):
        maps = X["images"].astype(np.float64) / 255
        maps[0::3] *= 1e-9
        maps[1::3] *= 1e9
        maps[2] = 0
        return maps
"""
    status, report, _ = ingest(input_dir, tmp_path, submission(tmp_path, code), capsys)
    assert status == 0 and report["counts"]["zero_heatmaps"] == 2  # the third positive of valid and of test
    maps = np.load(tmp_path / "output" / HEATMAPS)["maps"].astype(np.float64)
    valid, test = (ds.load_input_split(input_dir, split) for split in ("valid", "test"))
    images = [split["images"][::2].astype(np.float64) for split in (valid, test)]
    expected = np.concatenate([x / x.max(axis=(1, 2), keepdims=True) for x in images])
    expected[[2, 6 + 2]] = 0
    assert np.allclose(maps, expected, atol=1e-3)


def test_the_time_budget_comes_from_the_environment_then_budget_json(tmp_path, monkeypatch):
    monkeypatch.delenv("HYGIEIA_TIME_BUDGET", raising=False)
    assert read_budget(tmp_path) == (540.0, "default")
    (tmp_path / "budget.json").write_text('{"time_budget_s": 300}')
    assert read_budget(tmp_path) == (300.0, str(tmp_path / "budget.json"))
    monkeypatch.setenv("HYGIEIA_TIME_BUDGET", "42")
    assert read_budget(tmp_path) == (42.0, "$HYGIEIA_TIME_BUDGET")
    monkeypatch.delenv("HYGIEIA_TIME_BUDGET")
    for text in ('{"time_budget": 300}', '{"time_budget_s": -1}', "300 s"):
        (tmp_path / "budget.json").write_text(text)
        with pytest.raises(HygieiaError, match=rf"^{tmp_path / 'budget.json'}: "):
            read_budget(tmp_path)


def test_input_data_in_one_wrapper_folder_is_found_and_said(input_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYGIEIA_TIME_BUDGET", raising=False)
    wrapped = tmp_path / "input"
    shutil.copytree(input_dir, wrapped / "input_data")
    (wrapped / "__MACOSX").mkdir()
    (wrapped / ".DS_Store").write_text("x")
    (tmp_path / "program").mkdir()
    (tmp_path / "program" / "budget.json").write_text('{"time_budget_s": 120}')
    status, report, _ = ingest(wrapped, tmp_path, submission(tmp_path, BASE))
    out = capsys.readouterr().out
    assert status == 0 and len(pd.read_csv(tmp_path / "output" / PREDICTIONS)) == 22
    assert f"the input data is inside the wrapper folder input_data/ of {wrapped}; using it" in out
    assert report["time_budget"] == 120 and report["time_budget_source"] == str(tmp_path / "program" / "budget.json")
    assert f"time budget 120 s ({tmp_path / 'program' / 'budget.json'})" in out


def test_gradcam_module_that_rejects_its_input_is_told_what_it_receives(input_dir, tmp_path, capsys):
    code = BASE + """
    def gradcam_target(self):
        import torch

        net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        return net, net[0]
"""
    report = expect_failure(input_dir, tmp_path, capsys, code, "explain",
                            "Grad-CAM: the gradcam_target() module failed on "
                            "its input, which is always a float32 tensor (N, 1, H, W) of pixels / 255 in [0, 1]; "
                            "it got torch.float32 (6, 1, 100, 100) on cpu: ")
    assert "expected input[6, 1, 100, 100] to have 3 channels" in report["error"]["message"]


def test_the_zip_limits_are_options_of_hygieia_ingest(input_dir, tmp_path):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    archive = zip_of(tmp_path, {"model.py": BASE, "notes.md": "x", "more.md": "y"})
    args = parser.parse_args(["ingest", str(input_dir), str(tmp_path / "output"), str(archive),
                              "--max-submission-files", "2"])
    assert args.func(args) == 1
    report = json.loads((tmp_path / "output" / REPORT).read_text())
    assert report["error"]["stage"] == "import"
    assert report["error"]["message"].startswith(f"{archive}: 3 entries, more than the limit of 2")
