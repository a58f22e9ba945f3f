"""The scoring run end to end on a fake dataset: outputs, argument forms, and every refused run."""

import html
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import write_fake_dataset, write_fake_ingestion_output

from hygieia.dataset import IngestionFailed
from hygieia.errors import DataError, HygieiaError
from hygieia.files import write_npz
from hygieia.scoring import score as sc
from hygieia.scoring.metrics import EXPLANATION_KEYS
from hygieia.scoring.keys import SCORE_KEYS

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "scoring_program" / "score.py"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_dataset(tmp_path_factory.mktemp("scoring_data"), sizes=(6, 40, 30), seed=1, probes=4)


@pytest.fixture(scope="module")
def ref_dir(dataset):
    return dataset / "reference_data" / "valid"


@pytest.fixture(scope="module")
def good_res(dataset, tmp_path_factory):
    return write_fake_ingestion_output(tmp_path_factory.mktemp("res"), dataset, seed=2)


@pytest.fixture()
def res(good_res, tmp_path):
    """A copy of a good ingestion output, to break."""
    return Path(shutil.copytree(good_res, tmp_path / "res"))


def run_entry(*args):
    return subprocess.run([sys.executable, str(ENTRY), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def edit_predictions(res, change):
    """Rewrite predictions.csv as ``change(table)`` returns it."""
    table = pd.read_csv(res / "predictions.csv", dtype={"id": str})
    change(table).to_csv(res / "predictions.csv", index=False)


def set_cell(row, column, value):
    def change(table):
        table.loc[row, column] = value
        return table
    return change


def edit_heatmaps(res, change):
    with np.load(res / "heatmaps.npz") as archive:
        ids, maps = archive["ids"], archive["maps"]
    ids, maps = change(ids, maps.astype(np.float32))
    write_npz(res / "heatmaps.npz", ids=ids, maps=maps.astype(np.float16))


def edit_report(res, **fields):
    report = json.loads((res / "ingestion.json").read_text())
    report.update(fields)
    (res / "ingestion.json").write_text(json.dumps(report))


def first_valid_positive(res, label=1):
    table = pd.read_csv(res / "predictions.csv", dtype={"id": str})
    return table[(table["label"] == label) & table["id"].str.startswith("valid")]["id"].iloc[0]


def test_scores_and_detailed_results(ref_dir, good_res, tmp_path):
    out = tmp_path / "out"
    assert sc.main([str(ref_dir), str(good_res), str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) == set(SCORE_KEYS) and all(len(key) <= 36 for key in scores)
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values())
    lines = (out / "scores.txt").read_text().splitlines()
    assert [line.split(": ")[0] for line in lines] == SCORE_KEYS
    detailed = json.loads((out / "detailed_scores.json").read_text())
    assert detailed["scores"] == scores
    assert detailed["n_scored"] == 40  # the valid split only; test rows are ignored
    explanation = detailed["explanation"]
    tp = detailed["classification"]["confusion_matrix"][1][1]
    assert explanation["n_true_positives"] == tp > 0 and "images" not in explanation  # published: no row
    assert sum(explanation["histograms"]["iou_95"]) == sum(explanation["histograms"]["activation_in_box"]) == tp
    assert set(explanation["cc_map_by_tau"]) == {"0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8"}
    assert explanation["full_positive_set"]["iou_95"] <= scores["iou_95"]
    assert {row["group"] for row in detailed["bias"]["sex"]} == {"F", "M"}
    assert sum(row["n"] for row in detailed["bias"]["view_position"]) == 40
    assert "<img" in (out / "detailed_results.html").read_text()
    assert not (out / "metadata").exists()


def test_per_image_results_on_request(ref_dir, good_res, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(sc.PER_IMAGE_ENV, "1")
    assert sc.main([str(ref_dir), str(good_res), str(tmp_path / "out")]) == 0
    assert "HYGIEIA_PER_IMAGE=1" in capsys.readouterr().err
    detailed = json.loads((tmp_path / "out" / "detailed_scores.json").read_text())
    explanation = detailed["explanation"]
    assert detailed["per_image"] is True and explanation["n_true_positives"] == len(explanation["images"]) > 0
    assert detailed["scores"]["activation_in_box"] == pytest.approx(
        np.mean([row["activation_in_box"] for row in explanation["images"]]), abs=1e-6)
    assert np.histogram([row["iou_95"] for row in explanation["images"]], bins=10, range=(0, 1))[0].tolist() == \
        explanation["histograms"]["iou_95"]
    assert len(detailed["classification"]["roc"]["fpr"]) > 2
    monkeypatch.setenv(sc.PER_IMAGE_ENV, "yes")
    assert sc.main([str(ref_dir), str(good_res), str(tmp_path / "out2")]) == 2
    assert "HYGIEIA_PER_IMAGE must be 1" in capsys.readouterr().err


def test_same_inputs_give_the_same_bytes(ref_dir, good_res, tmp_path):
    for out in ("a", "b"):
        ref, run = sc.load_inputs(ref_dir, good_res)
        sc.write_scores(tmp_path / out, sc.compute_results(ref, run, ref_dir, progress=False))
    for name in ("scores.json", "scores.txt", "detailed_scores.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.slow
def test_legacy_argument_form_through_the_entry_point(ref_dir, good_res, tmp_path):
    shutil.copytree(ref_dir, tmp_path / "input" / "ref")
    shutil.copytree(good_res, tmp_path / "input" / "res")
    (tmp_path / "input" / "res" / "metadata").write_text(
        "exitCode: 0\ningestionExitCode: 0\nelapsedTime: 3.2\n")
    done = run_entry(tmp_path / "input", tmp_path / "output")
    assert done.returncode == 0, done.stderr
    assert set(json.loads((tmp_path / "output" / "scores.json").read_text())) == set(SCORE_KEYS)


def test_codabench_paths_without_arguments():
    assert sc.parse_paths([]) == (Path("/app/input/ref"), Path("/app/input/res"), Path("/app/output"))
    assert sc.parse_paths(["in", "out"]) == (Path("in/ref"), Path("in/res"), Path("out"))
    assert sc.main(["only-one"]) == 2


def test_no_explanation_scores_zero_and_says_why(ref_dir, res, tmp_path):
    edit_report(res, explanation=None)
    (res / "heatmaps.npz").unlink()
    results = sc.score(ref_dir, res, tmp_path / "out", progress=False)
    prior_peak = float(np.load(ref_dir / "box_prior.npy").max())
    assert all(results["scores"][k] == 0.0 for k in EXPLANATION_KEYS if k != "activation_over_prior")
    assert results["scores"]["activation_over_prior"] == pytest.approx(-prior_peak, abs=1e-6)  # as all-zero maps
    assert results["scores"]["accuracy"] > 0.5
    assert "no explanation" in results["explanation"]["reason"]
    assert "no explanation" in (tmp_path / "out" / "detailed_results.html").read_text()


def test_the_cli_subcommand(ref_dir, good_res, tmp_path):
    import argparse

    from hygieia.scoring import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["score", str(ref_dir), str(good_res), str(tmp_path / "out")])
    assert args.func(args) == 0
    assert (tmp_path / "out" / "scores.json").is_file()
    assert "images" not in json.loads((tmp_path / "out" / "detailed_scores.json").read_text())["explanation"]
    args = parser.parse_args(["score", str(ref_dir), str(good_res), str(tmp_path / "own"), "--per-image"])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "own" / "detailed_scores.json").read_text())["explanation"]["images"]


def break_failed(res):
    edit_report(res, status="failed", error={"stage": "fit", "message": "ValueError: the model exploded",
                                             "traceback": "Traceback ...\nValueError: the model exploded"})


BROKEN = {
    "ingestion failed": (break_failed, "the model exploded"),
    "worker exit code": (lambda res: (res / "metadata").write_text("ingestionExitCode: 137\n"),
                         "ingestionExitCode=137"),
    "ingestion unfinished": (lambda res: edit_report(res, status="running", stage="predict"),
                             "did not finish"),
    "no ingestion.json": (lambda res: (res / "ingestion.json").unlink(), "ingestion.json: file not found"),
    "no predictions": (lambda res: (res / "predictions.csv").unlink(), "predictions.csv: file not found"),
    "missing ids": (lambda res: edit_predictions(res, lambda t: t.drop(index=[0, 1, 2])),
                    "3 of the 44 scored ids have no prediction: valid-"),
    "duplicate ids": (lambda res: edit_predictions(res, set_cell(1, "id", "valid-00000")),
                      "duplicate id"),
    "nan proba": (lambda res: edit_predictions(res, set_cell(4, "proba", np.nan)),
                  "NaN"),
    "proba above one": (lambda res: edit_predictions(res, set_cell(5, "proba", 1.5)),
                        "outside [0, 1]"),
    "label two": (lambda res: edit_predictions(res, set_cell(6, "label", 2)),
                  "label must be 0 or 1"),
    "wrong heatmap shape": (lambda res: edit_heatmaps(res, lambda i, m: (i, m[:, :50, :50])),
                            "maps must have shape (K, 100, 100)"),
    "nan heatmap": (lambda res: edit_heatmaps(res, lambda i, m: (i, np.where(
        i[:, None, None] == first_valid_positive(res), np.nan, m))), "NaN or infinite heatmaps"),
    "negative heatmap": (lambda res: edit_heatmaps(res, lambda i, m: (i, m - 0.5)), "negative heatmap values"),
    "missing heatmap": (lambda res: edit_heatmaps(res, lambda i, m: (
        i[i != first_valid_positive(res)], m[i != first_valid_positive(res)])),
        "no heatmap for 1 predicted positive"),
    "no heatmaps file": (lambda res: (res / "heatmaps.npz").unlink(), "heatmaps.npz: file not found"),
    "ingestion.json not json": (lambda res: (res / "ingestion.json").write_text("{status: ok"), "not valid JSON"),
    "corrupt heatmaps": (lambda res: (res / "heatmaps.npz").write_bytes(b"PK\x03\x04 broken"),
                         "not a readable .npz archive"),
    "unknown method": (lambda res: edit_report(res, explanation="lime"), "explanation must be one of"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_runs_are_refused_with_their_cause(case, ref_dir, res, tmp_path):
    breaker, cause = BROKEN[case]
    breaker(res)
    out = tmp_path / "out"
    with pytest.raises(HygieiaError) as caught:
        sc.score(ref_dir, res, out, progress=False)
    assert cause in str(caught.value)
    assert not (out / "scores.json").exists()
    page = (out / "detailed_results.html").read_text()
    assert "refused" in page and html.escape(cause) in page
    if case == "ingestion failed":
        assert isinstance(caught.value, IngestionFailed) and "Traceback" in page
    else:
        assert isinstance(caught.value, (DataError, IngestionFailed))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["ingestion failed", "negative heatmap"])
def test_broken_runs_exit_non_zero_through_the_entry_point(case, ref_dir, res, tmp_path):
    breaker, cause = BROKEN[case]
    breaker(res)
    done = run_entry(ref_dir, res, tmp_path / "out")
    assert done.returncode == 1
    assert cause in done.stderr
    assert not (tmp_path / "out" / "scores.json").exists()


def test_one_class_reference_is_refused(dataset, good_res, tmp_path):
    ref = Path(shutil.copytree(dataset / "reference_data" / "valid", tmp_path / "ref"))
    labels = pd.read_csv(ref / "labels.csv", dtype={"id": str})
    labels["label"] = 0
    labels["probe"] = 0
    labels.to_csv(ref / "labels.csv", index=False)
    (ref / "boxes.csv").write_text("id,x,y,width,height\n")
    with pytest.raises(DataError, match="only class"):
        sc.score(ref, good_res, tmp_path / "out", progress=False)
