"""The shortcut experiment: marker geometry (fast) and a tiny end-to-end run (slow) whose report and
counterfactual mechanics are checked against the prepared images themselves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from hygieia import dataset as ds
from hygieia.experiment import counterfactual as cf
from hygieia.boxes import box_mask
from hygieia.experiment.figures import _examples, example_rows
from hygieia.experiment.findings import Results, findings, separation, separation_auroc
from hygieia.scoring.metrics import METRICS

# Resampling (Lanczos) and the phantom's JPEG blocks let a marker change pixels this close to its box.
MARKER_HALO = 6


def test_marker_in_crop_maps_window_pixels_to_crop_pixels():
    window = (100, 200, 400)  # x0, y0, side: 4 radiograph pixels per crop pixel at size 100
    np.testing.assert_allclose(cf.marker_in_crop((150, 250, 40, 20), window, 100), [[12.5, 12.5, 10, 5]])
    # Partly outside: clipped to the window.
    np.testing.assert_allclose(cf.marker_in_crop((60, 180, 80, 40), window, 100), [[0, 0, 10, 5]])
    # Outside: no box.
    assert cf.marker_in_crop((900, 10, 50, 50), window, 100).shape == (0, 4)


def test_marker_in_whole_scales_radiograph_pixels():
    np.testing.assert_allclose(cf.marker_in_whole((512, 0, 64, 32), 128), [[64, 0, 8, 4]])


def test_marker_boxes_follow_each_samples_window():
    markers = pd.DataFrame({"patientId": ["a", "b", "c"], "has_marker": [1, 0, 1], "text": ["L", "", "R"],
                            "x": [40.0, np.nan, 600.0], "y": [40.0, np.nan, 600.0],
                            "width": [32.0, np.nan, 64.0], "height": [48.0, np.nan, 64.0]}).set_index("patientId")
    samples = pd.DataFrame({"id": ["h1", "h2", "h3"], "patientId": ["a", "b", "c"], "split": "test",
                            "label": [0, 1, 1], "window_x": [0, 0, 512], "window_y": [0, 0, 512],
                            "window_side": [200, 200, 256]}).set_index("id")
    crops = cf.marker_boxes(markers, samples, ["h1", "h2", "h3"], 100, whole=False)
    np.testing.assert_allclose(crops["h1"], [[20, 20, 16, 24]])
    assert crops["h2"].shape == (0, 4)
    np.testing.assert_allclose(crops["h3"], [[34.375, 34.375, 25, 25]])
    whole = cf.marker_boxes(markers, samples, ["h1", "h3"], 128, whole=True)
    np.testing.assert_allclose(whole["h1"], [[5, 5, 4, 6]])
    with pytest.raises(ds.DataError, match="no row for sample id h9"):
        cf.marker_boxes(markers, samples, ["h9"], 100, whole=False)


def test_marker_mass_is_the_share_of_heatmap_on_the_marker():
    on_marker = np.zeros((10, 10))
    on_marker[2:4, 2:4] = 1.0
    uniform = np.ones((10, 10))
    boxes = {"a": np.array([[2.0, 2.0, 2.0, 2.0]]), "b": np.array([[2.0, 2.0, 2.0, 2.0]]), "c": cf.EMPTY_BOXES}
    shares = cf.marker_mass({"a": on_marker, "b": uniform, "c": uniform}, boxes)
    np.testing.assert_allclose(shares, [1.0, 0.04])


def test_flip_rate_counts_changed_labels():
    before = pd.Series([0, 0, 1, 1], index=["a", "b", "c", "d"])
    after = pd.Series([1, 0, 0, 1], index=["d", "c", "b", "a"])  # aligned by id, not by order
    assert cf.flip_rate(before, after) == 0.5


def test_read_markers_names_a_bad_row(tmp_path):
    (tmp_path / cf.MARKERS_FILE).write_text("patientId,has_marker,text,x,y,width,height\n"
                                            "a,1,L,10,10,,20\n")
    with pytest.raises(ds.DataError, match="line 2"):
        cf.read_markers(tmp_path)


def test_findings_follow_the_numbers():
    """The same rules give opposite statements for opposite numbers: nothing is hard-coded."""
    def table(crop_flip, whole_flip):
        rows = []
        for version, flip in (("crops", crop_flip), ("whole", whole_flip)):
            for train, strength, value in (("clean", np.nan, 0.0), ("corner-1", 1.0, flip)):
                for eval_set in ("clean", "confounded", "counterfactual"):
                    rows.append({"version": version, "train": train, "position": "corner", "strength": strength,
                                 "eval": eval_set, "accuracy": 0.8, "activation_in_box": 0.4, "pointing_game": 0.5,
                                 "marker_mass": 0.1, "marker_area": 0.01, "flip_rate": value})
        return Results(pd.DataFrame(rows))

    removes = " ".join(findings(table(crop_flip=0.01, whole_flip=0.4)))
    keeps = " ".join(findings(table(crop_flip=0.4, whole_flip=0.4)))
    assert "Cropping **removes**" in removes and "Cropping **removes**" not in keeps
    assert "does **not remove**" in keeps
    assert "40.0%" in removes and "1.0%" in removes


def test_separation_auroc_follows_each_metrics_direction():
    uses = np.array([True, True, False, False, False])
    gap = np.array([0.4, 0.3, 0.0, 0.1, np.nan])  # higher is worse; the NaN model is left out
    assert separation_auroc(uses, gap, "asc") == 1.0
    assert separation_auroc(uses, gap, "desc") == 0.0  # the same numbers read as higher-is-better
    # users 0.2, 0.9 against others 0.5, 0.5, 0.1: two of the six pairs have the user lower
    assert separation_auroc(uses, np.array([0.2, 0.9, 0.5, 0.5, 0.1]), "desc") == pytest.approx(2 / 6)
    assert np.isnan(separation_auroc(uses, np.array([np.nan, np.nan, 0.1, 0.2, 0.3]), "asc"))  # one kind left


def test_separation_counts_only_models_that_have_the_score():
    models = pd.DataFrame({"version": ["crops", "crops", "whole", "whole"], "train": ["clean", "lung-1"] * 2,
                           "uses_marker": [False, True, False, True]})
    for key in (m.key for m in METRICS if m.key != "shortcut_gap"):
        models[key] = [0.9, 0.5, 0.8, 0.6]
    models["shortcut_gap"] = [0.0, 0.5, np.nan, np.nan]  # whole images hold no probe
    table = separation(models).set_index("key")
    assert table.loc["shortcut_gap", ["users", "non-users"]].tolist() == [1, 1]
    assert table.loc["shortcut_gap", "auroc"] == 1.0 and np.isnan(table.loc["shortcut_gap", "auroc whole"])
    assert table.loc["accuracy", ["users", "non-users", "auroc"]].tolist() == [2, 2, 1.0]


# ------------------------------------------------------------------------------- end to end (slow)

@pytest.fixture(scope="module")
def experiment(tmp_path_factory, weights_path):
    from hygieia.experiment.shortcut import ShortcutConfig, run_experiment

    config = ShortcutConfig(out=tmp_path_factory.mktemp("shortcut"), patients=100, strengths=(1.0,),
                            lung_strengths=(), weights=weights_path, fast=True)
    results = run_experiment(config)
    return config, results


@pytest.mark.slow
def test_report_has_every_version_table_and_figure(experiment):
    config, results = experiment
    report = config.out / "report"
    markdown = (report / "report.md").read_text()
    page = (report / "report.html").read_text()
    for heading in ("## Setup", "## Which scores catch the marker", "## What the numbers show",
                    "## Classification", "## Explanations"):
        assert heading in markdown
    for version in ("crops", "whole", "features"):
        assert f"| {version} | corner-1 |" in markdown and f"| {version} | clean |" in markdown
    # The example figure needs an explained image that shows the marker: on 100 patients, whether one
    # exists depends on the draw (prepare's secret), so it is checked against the runs themselves.
    rows = example_rows(Results(results, {"crops": config.crop, "whole": config.full_size}), config.out / "runs")
    shown = any(_examples(run_dir, eval_set, 1) for _, run_dir, eval_set in rows
                if (run_dir / "marker_boxes.csv").is_file())
    figures = ["separation.png", "accuracy.png", "flip_rate.png", "explanations.png"] + ["examples.png"] * shown
    for figure in figures:
        assert (report / "figures" / figure).stat().st_size > 1000
        assert f"figures/{figure}" in markdown
    assert (report / "figures" / "examples.png").exists() == shown
    assert page.count("data:image/png;base64,") == len(figures) and 'src="figures' not in page
    # One row per version x training variant x evaluation set; the clean model has no confounded set.
    counts = results.groupby(["version", "train"]).size()
    assert counts.to_dict() == {(v, t): (2 if t == "clean" else 3)
                                for v in ("crops", "features", "whole") for t in ("clean", "corner-1")}
    assert results["accuracy"].between(0, 1).all() and results["flip_rate"].between(0, 1).all()
    # At strength 1 every confounded positive carries the marker and no normal does, so the whole-image
    # model's explained images that show one are its true positives (on 100 patients, whether it finds
    # any depends on the draw: prepare's secret).
    whole = results[(results["version"] == "whole") & (results["eval"] == "confounded")]
    assert (whole["marker_images"].gt(0) == whole["recall"].gt(0)).all()


@pytest.mark.slow
def test_every_model_reports_the_scoring_programs_own_scores(experiment):
    """The scores × models table holds what scores.json says, for every model; the hidden sets of
    the crops carry probes, the box prior and split.json, the whole images no probe."""
    import json

    config, _ = experiment
    models = pd.read_csv(config.out / "report" / "models.csv")
    assert len(models) == 6 and set(models["version"]) == {"crops", "whole", "features"}
    for row in models.itertuples(index=False):
        own = "clean" if row.train == "clean" else "confounded"
        run = config.out / "runs" / row.version / row.train
        scores = json.loads((run / "scores" / own / "scores.json").read_text())
        for key in ("worst_group_accuracy", "accuracy"):
            assert getattr(row, key) == pytest.approx(scores[key])
        if row.version == "whole":
            assert np.isnan(row.shortcut_gap) and "shortcut_gap" not in scores
        else:
            assert row.shortcut_gap == pytest.approx(scores["shortcut_gap"]) and row.n_probes > 0
        if row.version == "features":  # no heatmaps: the explanation columns are no score
            assert np.isnan(row.activation_over_prior)
        else:
            assert row.activation_over_prior == pytest.approx(scores["activation_over_prior"])
        reference = run / "ref" / own
        assert (reference / ds.BOX_PRIOR).is_file() and (reference / ds.SPLIT_INFO).is_file()
        probes = ds.read_table(reference / ds.LABELS, ds.REFERENCE_LABEL_COLUMNS)["probe"].astype(int)
        assert (probes.sum() > 0) == (row.version != "whole")
    separated = pd.read_csv(config.out / "report" / "separation.csv")
    assert set(separated["key"]) >= {"worst_group_accuracy", "shortcut_gap", "activation_over_prior",
                                     "activation_in_box"}


def _prepared(config, name, subdir=""):
    return config.out / "cache" / "prepared" / f"{name}-n{config.patients}-s{config.seed}" / subdir


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["corner-1", "corner-0"])
@pytest.mark.parametrize("version, size", [("crops", 100), ("whole", 128)])
def test_marker_is_where_the_report_says_and_nowhere_else(experiment, variant, version, size):
    """Each marked image is its clean twin plus bright marker pixels inside the transformed box (and
    a resampling halo); every other image equals its clean twin byte for byte."""
    config, _ = experiment
    subdir = "full_128" if version == "whole" else ""
    marked = ds.load_reference_split(_prepared(config, variant, subdir) / ds.REFERENCE_DIR / "test")
    clean = ds.load_reference_split(_prepared(config, "clean", subdir) / ds.REFERENCE_DIR / "test")
    assert marked["ids"] == clean["ids"] and (marked["labels"] == clean["labels"]).all()
    phantom = config.out / "cache" / "phantom" / f"{variant}-n{config.patients}-s{config.seed}"
    boxes = cf.marker_boxes(cf.read_markers(phantom), cf.read_samples(_prepared(config, variant)),
                            marked["ids"], size, whole=version == "whole")
    shown = 0
    for k, sample_id in enumerate(marked["ids"]):
        image, twin = marked["images"][k].astype(int), clean["images"][k].astype(int)
        mask = box_mask(boxes[sample_id], image.shape) if len(boxes[sample_id]) else np.zeros(image.shape, bool)
        halo = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=MARKER_HALO) if mask.any() else mask
        assert (image[~halo] == twin[~halo]).all(), sample_id
        if mask.any():
            shown += 1
            assert image[mask].max() >= 200 and image[mask].max() > twin[mask].max(), sample_id
    if version == "whole":  # every marker shows on the whole image: strength 1 marks positives, 0 negatives
        assert shown == int((marked["labels"] == (1 if variant == "corner-1" else 0)).sum())


@pytest.mark.slow
def test_counterfactual_set_marks_negatives_only(experiment):
    config, _ = experiment
    samples = cf.read_samples(_prepared(config, "corner-0"))
    markers = cf.read_markers(config.out / "cache" / "phantom" / f"corner-0-n{config.patients}-s{config.seed}")
    test = samples[samples["split"] == "test"]
    has = markers.loc[test["patientId"], "has_marker"].to_numpy()
    assert (has == 1 - test["label"].astype(int).to_numpy()).all()
