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
from hygieia.experiment.findings import (Results, against_control, constant_versions, findings, goal_finding,
                                         interval_halfwidths, label_stability, mean_range, over_seeds,
                                         beside_box_finding, position_findings, separation,
                                         separation_auroc, separation_by_seed, stability_findings)
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
    for metric in METRICS:  # every column of the table, the ones added later included
        models[metric.key] = [0.9, 0.5, 0.8, 0.6] if metric.sorting == "desc" else [0.0, 0.5, 0.1, 0.4]
    models["shortcut_gap"] = [0.0, 0.5, np.nan, np.nan]  # whole images hold no probe
    table = separation(models).set_index("key")
    assert list(table.index) == [m.key for m in METRICS]
    assert table.loc["shortcut_gap", ["users", "non-users"]].tolist() == [1, 1]
    assert table.loc["shortcut_gap", "auroc"] == 1.0 and np.isnan(table.loc["shortcut_gap", "auroc whole"])
    assert table.loc["accuracy", ["users", "non-users", "auroc"]].tolist() == [2, 2, 1.0]
    assert table.loc["activation_in_box", "family"] == "explanation" and table.loc["accuracy", "family"] == "other"
    # the columns measured through the model are explanation columns too, the map's faithfulness included
    assert table.loc[["box_reliance", "faithfulness"], "family"].tolist() == ["explanation"] * 2


def test_image_models_leave_out_the_pixel_blind_features_models():
    """A column measured by altering the image scores every features model 0, user or not: over all
    models their ties pull the AUROC down; over the image models it is the column's own separation."""
    models = pd.DataFrame({"version": ["crops", "crops", "whole", "whole", "features", "features"],
                           "train": ["clean", "lung-1"] * 3, "uses_marker": [False, True, False, True, False, True]})
    for metric in METRICS:
        models[metric.key] = 0.5
    models["activation_in_box"] = [0.3, 0.1, 0.35, 0.05, 0.0, 0.0]
    table = separation(models).set_index("key")
    assert table.loc["activation_in_box", "auroc image"] == 1.0
    assert table.loc["activation_in_box", "auroc features"] == 0.5
    # users 0.1, 0.05, 0.0 against 0.3, 0.35, 0.0: the features non-user's 0 is below both image users
    # (2 pairs lost), the 0-0 tie counts half: 6.5 of 9 pairs
    assert table.loc["activation_in_box", "auroc"] == pytest.approx(6.5 / 9)
    assert constant_versions(models, "activation_in_box") == ["features"]
    assert constant_versions(models[models["train"] == "clean"], "activation_in_box") == []  # no user to miss


def test_against_control_takes_out_each_versions_own_level():
    """Two architectures at different levels: pooled, the high one's user outranks the low one's non-user;
    as a change from each one's clean-trained control, every user falls and every other model does not."""
    models = pd.DataFrame({"seed": 0, "version": ["crops"] * 3 + ["crops_boxes"] * 3,
                           "train": ["clean", "lung-1", "offbox-1"] * 2,
                           "uses_marker": [False, True, False, False, True, True]})
    for metric in METRICS:
        models[metric.key] = 0.5
    models["box_reliance"] = [0.01, 0.00, 0.015, 0.06, 0.03, 0.02]
    assert against_control(models, "box_reliance").round(3).tolist()[1:3] == [-0.01, 0.005]
    assert np.isnan(against_control(models, "box_reliance")[[0, 3]]).all()
    table = separation(models).set_index("key")
    # pooled: users 0.00, 0.03, 0.02 against 0.01, 0.015, 0.06: 5 of 9 pairs have the user lower
    assert table.loc["box_reliance", "auroc image"] == pytest.approx(5 / 9)
    # changes: users -0.01, -0.03, -0.04 against the crops offbox model's +0.005
    assert table.loc["box_reliance", "auroc image vs control"] == 1.0


def test_marker_shares_box_cell_looks_at_the_evidence_grid():
    """A marker in one of the box's own cells of a 4 x 4 grid over 100 px cannot be told from the opacity by
    filling cells in; one in a cell of its own can."""
    from hygieia.experiment.shortcut import marker_shares_box_cell

    cells = np.array([(t, left, t + 25, left + 25) for t in range(0, 100, 25) for left in range(0, 100, 25)])
    boxes = pd.DataFrame({"id": ["confounded-a", "confounded-b", "clean-a"], "x": [5.0, 5, 5], "y": [5.0, 5, 5],
                          "width": [30.0, 30, 30], "height": [15.0, 15, 15]})  # cells (0, 0) and (0, 1)
    markers = pd.DataFrame({"id": ["confounded-a", "confounded-b"], "x": [40.0, 80], "y": [10.0, 80],
                            "width": [5.0, 10], "height": [5.0, 10]})  # a: cell (0, 1); b: cell (3, 3)
    assert marker_shares_box_cell("confounded", markers, boxes, cells, 100) == 0.5
    assert np.isnan(marker_shares_box_cell("clean", markers, boxes, cells, 100))  # no image shows a marker


def test_position_findings_compare_users_with_their_controls():
    models = pd.DataFrame({"seed": 0, "version": ["whole"] * 4, "train": ["clean", "lung-1", "offbox-1", "offbox-0.8"],
                           "uses_marker": [False, True, True, False], "box_reliance": [0.04, 0.05, 0.0, 0.035],
                           "marker_shares_box_cell": [np.nan, 0.6, 0.2, 0.3]})
    lines = position_findings(models)
    assert lines[0].startswith("`lung` marker: it shares a cell of the evidence grid with the image's own box in "
                               "whole images 60.0%")
    assert "its 1 users +0.010 [+0.010, +0.010], its 0 other models —" in lines[0]
    assert "whole images 25.0%" in lines[1] and "its 1 users -0.040" in lines[1] and "other models -0.005" in lines[1]


def test_beside_box_finding_leaves_out_the_markers_inside_the_lung_field():
    """A lung-field user that keeps its box reliance (its marker sits in the box's cells) spoils the goal over
    every model; over the markers beside the box, users lose box reliance against their controls."""
    rows = []
    for seed in (0, 1, 2):
        for version, level in (("crops", 0.01), ("whole_boxes", 0.05)):
            for train, uses, change, in_box in (("clean", False, 0.0, 0.0), ("offbox-1", True, -0.02, 0.3),
                                                ("corner-1", False, 0.001, 0.1), ("lung-1", True, +0.01, 0.9)):
                rows.append({"seed": seed, "version": version, "train": train, "uses_marker": uses,
                             **{m.key: 0.5 for m in METRICS}, "box_reliance": level + change,
                             "activation_in_box": 0.3 + (0.01 if uses else 0.0), "marker_shares_box_cell": in_box})
    models = pd.DataFrame(rows)
    text = beside_box_finding(models)
    assert "image models using the marker per seed: 2 of 4/2 of 4/2 of 4" in text and "**met**" in text
    assert "`box_reliance` at 1.000 [1.000, 1.000], `activation_in_box` at 0.000 [0.000, 0.000]" in text
    everything = over_seeds(separation_by_seed(models)).set_index("key")
    assert everything.loc["box_reliance", "auroc image vs control mean"] == pytest.approx(0.5)
    assert beside_box_finding(models[models["train"].isin(["clean", "lung-1"])]).startswith("No model")


def _by_seed(key, family, values, image):
    return pd.DataFrame({"seed": [0, 1, 2], "key": key, "family": family, "worse when": "lower",
                         "users": [4, 5, 4], "non-users": [8, 7, 8], "auroc": values, "auroc image": image})


def test_mean_and_range_over_seeds_are_computed_from_the_per_seed_aurocs():
    by_seed = pd.concat([_by_seed("activation_in_box", "explanation", [0.25, 0.5, 0.75], [0.5, 0.6, 0.7]),
                         _by_seed("box_reliance", "explanation", [0.8, np.nan, 1.0], [0.9, 0.95, 1.0])])
    summary = over_seeds(by_seed).set_index("key")
    grad_cam, reliance = summary.loc["activation_in_box"], summary.loc["box_reliance"]
    assert grad_cam[["auroc mean", "auroc min", "auroc max", "auroc seeds"]].tolist() == [0.5, 0.25, 0.75, 3]
    # a seed where the score cannot separate (NaN) is left out of its mean and range, and counted
    assert reliance[["auroc mean", "auroc min", "auroc max", "auroc seeds"]].tolist() == [0.9, 0.8, 1.0, 2]
    assert reliance["auroc image mean"] == pytest.approx(0.95)
    assert reliance["users per seed"] == "4/5/4" and reliance["non-users per seed"] == "8/7/8"
    assert mean_range(grad_cam, "auroc") == "0.500 [0.250, 0.750]"
    assert "**met**" in goal_finding(summary.reset_index())
    assert "`box_reliance` at 0.950 [0.900, 1.000]" in goal_finding(summary.reset_index())
    # the same column below the goal, or Grad-CAM above its bound: not met
    worse = pd.concat([_by_seed("activation_in_box", "explanation", [0.25, 0.5, 0.75], [0.5, 0.6, 0.7]),
                       _by_seed("box_reliance", "explanation", [0.8, 0.8, 0.9], [0.8, 0.85, 0.95])])
    assert "**not met**" in goal_finding(over_seeds(worse))
    sharp = pd.concat([_by_seed("activation_in_box", "explanation", [0.9] * 3, [0.9] * 3),
                       _by_seed("box_reliance", "explanation", [1.0] * 3, [1.0] * 3)])
    assert "**not met**" in goal_finding(over_seeds(sharp))
    # the goal is the headline column's: another explanation column above it is named, and meets nothing
    other = pd.concat([_by_seed("activation_in_box", "explanation", [0.5] * 3, [0.5] * 3),
                       _by_seed("box_reliance", "explanation", [0.6] * 3, [0.6] * 3),
                       _by_seed("iou_95", "explanation", [1.0] * 3, [1.0] * 3)])
    text = goal_finding(over_seeds(other))
    assert "**not met**" in text and "The best explanation column over the image models is `iou_95`" in text


def test_separation_by_seed_keeps_each_seeds_models_apart():
    rows = []
    for seed, gap in ((0, [0.0, 0.5]), (1, [0.4, 0.1])):  # seed 1: the user scores better
        for train, value in zip(("clean", "lung-1"), gap):
            rows.append({"seed": seed, "version": "crops", "train": train, "uses_marker": train == "lung-1",
                         **{m.key: 0.5 for m in METRICS}, "shortcut_gap": value})
    by_seed = separation_by_seed(pd.DataFrame(rows)).set_index(["key", "seed"])
    assert by_seed.loc[("shortcut_gap", 0), "auroc"] == 1.0 and by_seed.loc[("shortcut_gap", 1), "auroc"] == 0.0
    assert over_seeds(by_seed.reset_index()).set_index("key").loc["shortcut_gap", "auroc mean"] == 0.5


def test_label_stability_counts_the_seeds_a_model_uses_the_marker():
    models = pd.DataFrame({"seed": [0, 1, 2] * 2, "version": "crops", "train": ["lung-1"] * 3 + ["lung-0.5"] * 3,
                           "uses_marker": [True, True, True, False, True, False],
                           "flip_rate": [0.2, 0.3, 0.25, 0.02, 0.07, 0.03],
                           "reliance": [0.2, 0.3, 0.25, 0.02, 0.06, 0.03]})
    stability = label_stability(models).set_index("trained on")
    assert stability.loc["lung-1", ["uses marker (seeds)", "same in every seed"]].tolist() == ["3/3", "yes"]
    assert stability.loc["lung-0.5", ["uses marker (seeds)", "same in every seed"]].tolist() == ["1/3", "**no**"]
    text = " ".join(stability_findings(stability.reset_index()))
    assert "1 of the 2 models get the same label in every seed (a user in every seed: 1; in none: 0)" in text
    assert "crops lung-0.5 (a user in 1/3 seeds" in text


def test_interval_halfwidths_are_medians_over_the_scored_sets():
    table = pd.DataFrame({"version": ["crops"] * 3 + ["whole"] * 2, "eval": ["clean", "confounded", "counterfactual",
                                                                             "clean", "confounded"],
                          "accuracy_ci_half": [0.08, 0.12, np.nan, 0.10, 0.30]})
    halves = interval_halfwidths(table).set_index("key")
    assert list(halves.index) == ["accuracy"]  # only the scores whose intervals the table holds
    assert halves.loc["accuracy", "median ±"] == pytest.approx(0.11)
    assert halves.loc["accuracy", "median ± crops"] == pytest.approx(0.10)
    assert halves.loc["accuracy", "largest ±"] == pytest.approx(0.30) and halves.loc["accuracy", "sets"] == 4


def test_a_trained_model_and_its_scores_follow_different_code():
    """The training key follows ingestion, its child and the sample submission, not the scoring program;
    the scoring key follows the scoring program, not ingestion: a new column re-scores, no re-training."""
    from hygieia.experiment import shortcut

    root = shortcut.ROOT
    training = {p.relative_to(root).as_posix() for p in shortcut.code_files(*shortcut.training_entries("image"))}
    scoring = {p.relative_to(root).as_posix() for p in shortcut.code_files(*shortcut.SCORING_CODE)}
    assert {"hygieia/submission/ingestion.py", "hygieia/submission/child.py", "sample_submission/model.py",
            "ingestion_program/ingestion.py"} <= training
    assert {"hygieia/scoring/metrics.py", "hygieia/scoring/score.py", "scoring_program/score.py"} <= scoring
    assert not any(f.startswith("hygieia/scoring/") for f in training)
    assert not any(f.startswith("hygieia/submission/") for f in scoring)
    assert "sample_submission_tabular/model.py" in {
        p.relative_to(root).as_posix() for p in shortcut.code_files(*shortcut.training_entries("tabular"))}


def test_reuse_data_keeps_a_cache_whose_code_digest_alone_changed(tmp_path):
    from hygieia.experiment import shortcut

    folder, built = tmp_path / "cache" / "phantom", []

    def build(staging):
        staging.mkdir(parents=True)
        built.append(staging)

    config = shortcut.ShortcutConfig(out=tmp_path)
    shortcut._cached(folder, {"patients": 100, "code": "old"}, build)
    changed = {"patients": 100, "code": "new"}
    assert shortcut._data_key(config, folder, changed) == changed  # by default the code's digest counts
    config.reuse_data = True
    assert shortcut._data_key(config, folder, changed) == {"patients": 100, "code": "old"}
    other = {"patients": 200, "code": "new"}
    assert shortcut._data_key(config, folder, other) == other  # any other change still rebuilds
    shortcut._cached(folder, shortcut._data_key(config, folder, changed), build)
    assert len(built) == 1 and shortcut.seconds_of(folder) >= 0
    config.reuse_data = False
    shortcut._cached(folder, shortcut._data_key(config, folder, changed), build)
    assert len(built) == 2 and shortcut._read_key(folder) == changed


# ------------------------------------------------------------------------------- end to end (slow)

@pytest.fixture(scope="module")
def experiment(tmp_path_factory, weights_path):
    from hygieia.experiment.shortcut import ShortcutConfig, run_experiment

    config = ShortcutConfig(out=tmp_path_factory.mktemp("shortcut"), patients=100, strengths=(1.0,),
                            lung_strengths=(), offbox_strengths=(), seeds=(0, 1), weights=weights_path, fast=True,
                            versions=("crops", "whole", "features", "crops_boxes"))
    results = run_experiment(config)
    return config, results


SEED = 0  # the seed whose data the mechanics tests look at


@pytest.mark.slow
def test_report_has_every_version_table_and_figure(experiment):
    config, results = experiment
    report = config.out / "report"
    markdown = (report / "report.md").read_text()
    page = (report / "report.html").read_text()
    for heading in ("## Setup", "## Which scores catch the marker", "## Marker users across seeds",
                    "## How precise one score is", "## Time", "## Appendix: seed 0", "## Appendix: seed 1",
                    "### Classification, seed 1", "### Explanations, seed 0"):
        assert heading in markdown
    for version in ("crops", "whole", "features", "crops_boxes"):
        assert f"| {version} | corner-1 |" in markdown and f"| {version} | clean |" in markdown
    # The example figure (seed 0's) needs an explained image that shows the marker: on 100 patients, whether
    # one exists depends on the draw (prepare's secret), so it is checked against the runs themselves.
    first = Results(results[results["seed"] == 0].reset_index(drop=True),
                    {"crops": config.crop, "whole": config.full_size})
    rows = example_rows(first, config.out / "runs" / "s0")
    shown = any(_examples(run_dir, eval_set, 1) for _, run_dir, eval_set in rows
                if (run_dir / "marker_boxes.csv").is_file())
    figures = ["separation_by_seed.png"] + ["s0/examples.png"] * shown + [
        f"s{seed}/{name}" for seed in (0, 1)
        for name in ("separation.png", "accuracy.png", "flip_rate.png", "explanations.png")]
    for figure in figures:
        assert (report / "figures" / figure).stat().st_size > 1000
        assert f"figures/{figure}" in markdown
    assert (report / "figures" / "s0" / "examples.png").exists() == shown
    assert page.count("data:image/png;base64,") == len(figures) and 'src="figures' not in page
    # One row per seed x version x training variant x evaluation set; the clean model has no confounded set.
    counts = results.groupby(["seed", "version", "train"]).size()
    assert counts.to_dict() == {(s, v, t): (2 if t == "clean" else 3) for s in (0, 1)
                                for v in ("crops", "crops_boxes", "features", "whole") for t in ("clean", "corner-1")}
    assert results["accuracy"].between(0, 1).all() and results["flip_rate"].between(0, 1).all()
    # At strength 1 every confounded positive carries the marker and no normal does, so the whole-image
    # model's explained images that show one are its true positives (on 100 patients, whether it finds
    # any depends on the draw: prepare's secret).
    whole = results[(results["version"] == "whole") & (results["eval"] == "confounded")]
    assert (whole["marker_images"].gt(0) == whole["recall"].gt(0)).all()


@pytest.mark.slow
def test_each_seed_is_a_replicate_and_the_summary_is_its_mean_and_range(experiment):
    """Each seed has its own phantoms, data and models; the report's separation over seeds is the
    mean, min and max of the per-seed table it writes beside it, and its text quotes them."""
    config, results = experiment
    report = config.out / "report"
    for kind in ("phantom", "prepared"):
        assert (config.out / "cache" / kind / f"clean-n{config.patients}-s0").is_dir()
        assert (config.out / "cache" / kind / f"clean-n{config.patients}-s1").is_dir()
    first, second = (ds.load_reference_split(_prepared(config, "clean", seed=s) / ds.REFERENCE_DIR / "test")
                     for s in (0, 1))
    assert first["images"].shape != second["images"].shape or (first["images"] != second["images"]).any()
    assert set(results["seed"]) == {0, 1}
    for seed in (0, 1):
        assert (config.out / "runs" / f"s{seed}" / "crops" / "corner-1" / "ingestion" / ds.PREDICTIONS).is_file()
    by_seed = pd.read_csv(report / "separation.csv")
    summary = pd.read_csv(report / "separation_over_seeds.csv").set_index("key")
    assert set(by_seed["seed"]) == {0, 1} and set(summary.index) == {m.key for m in METRICS}
    for key, mine in by_seed.groupby("key"):
        for view in ("auroc", "auroc image", "auroc crops"):
            values = mine[view].dropna()
            assert summary.loc[key, f"{view} seeds"] == len(values)
            if len(values):
                assert summary.loc[key, f"{view} mean"] == pytest.approx(values.mean())
                assert summary.loc[key, f"{view} min"] == pytest.approx(values.min())
                assert summary.loc[key, f"{view} max"] == pytest.approx(values.max())
    markdown = (report / "report.md").read_text()
    section = markdown.split("## Which scores catch the marker")[1].split("## Marker users across seeds")[0]
    assert "Over 2 seeds (0, 1)" in section and "Goal (the headline explanation column `box_reliance`" in section
    assert "The same goal for the markers beside the box" in section
    assert "- `corner` marker: it shares a cell" in section
    stability = pd.read_csv(report / "marker_users.csv")
    assert len(stability) == 8 and stability["uses marker (seeds)"].str.endswith("/2").all()
    # every scored set's interval half-width is read from the scoring program's intervals
    halves = pd.read_csv(report / "intervals.csv").set_index("key")
    assert halves.loc["accuracy", "median ±"] > 0 and halves.loc["accuracy", "sets"] == 2 * 4 * 3


@pytest.mark.slow
def test_every_model_reports_the_scoring_programs_own_scores(experiment):
    """The scores × models table holds what scores.json says, for every model; the hidden sets of
    the crops carry probes, the box prior and split.json, the whole images no probe."""
    import json

    config, _ = experiment
    models = pd.read_csv(config.out / "report" / "models.csv")
    assert len(models) == 16 and set(models["version"]) == {"crops", "whole", "features", "crops_boxes"}
    for row in models.itertuples(index=False):
        own = "clean" if row.train == "clean" else "confounded"
        run = config.out / "runs" / f"s{row.seed}" / row.version / row.train
        scores = json.loads((run / "scores" / own / "scores.json").read_text())
        for key in ("worst_group_accuracy", "accuracy"):
            assert getattr(row, key) == pytest.approx(scores[key])
        if row.version == "whole":
            assert np.isnan(row.shortcut_gap) and "shortcut_gap" not in scores
        else:
            assert row.shortcut_gap == pytest.approx(scores["shortcut_gap"]) and row.n_probes > 0
        if row.version == "features":  # no heatmaps: the map's columns are no score
            assert np.isnan(row.activation_over_prior) and np.isnan(row.faithfulness)
        else:
            assert row.activation_over_prior == pytest.approx(scores["activation_over_prior"])
            assert row.faithfulness == pytest.approx(scores["faithfulness"])
        # box reliance, measured through every model: a features model loses nothing when a cell is filled in
        assert row.box_reliance == pytest.approx(scores["box_reliance"])
        assert (row.box_reliance == 0) or row.version != "features"
        reference = run / "ref" / own
        assert (reference / ds.BOX_PRIOR).is_file() and (reference / ds.SPLIT_INFO).is_file()
        probes = ds.read_table(reference / ds.LABELS, ds.REFERENCE_LABEL_COLUMNS)["probe"].astype(int)
        assert (probes.sum() > 0) == (row.version != "whole")
    separated = pd.read_csv(config.out / "report" / "separation.csv")
    assert set(separated["key"]) >= {"worst_group_accuracy", "shortcut_gap", "activation_over_prior",
                                     "activation_in_box"}


def test_the_scoring_input_of_one_set_carries_its_evidence(tmp_path):
    """The experiment scores each evaluation set of one ingestion output apart: its predictions, maps and the
    evidence measured through the model, restricted to the set's ids (the scoring program requires evidence.npz)."""
    from hygieia.experiment.shortcut import results_subset
    from hygieia.files import write_csv, write_json, write_npz

    output, ids = tmp_path / "ingestion", ["clean-a", "clean-b", "confounded-a", "confounded-b"]
    write_csv(output / ds.PREDICTIONS, pd.DataFrame({"id": ids, "proba": [0.9, 0.2, 0.8, 0.1], "label": [1, 0, 1, 0]}))
    write_npz(output / ds.HEATMAPS, ids=np.array(["clean-a", "confounded-a"]), maps=np.ones((2, 4, 4), np.float16))
    cells = np.array([[0, 0, 2, 2], [0, 2, 2, 4], [2, 0, 4, 2], [2, 2, 4, 4]])
    drops = np.arange(16, dtype=np.float32).reshape(4, 4) / 100
    write_npz(output / ds.EVIDENCE, ids=np.array(ids), cells=cells, base=np.array([0.9, 0.2, 0.8, 0.1], np.float32),
              drops=drops)
    write_json(output / ds.INGESTION_REPORT, {"status": "ok"})
    results_subset(output, ["confounded-a", "confounded-b"], tmp_path / "res")
    evidence = ds.read_evidence(tmp_path / "res" / ds.EVIDENCE, (4, 4), ["confounded-a", "confounded-b"])
    assert evidence["ids"].tolist() == ["confounded-a", "confounded-b"]
    assert (evidence["drops"] == drops[2:]).all() and (evidence["cells"] == cells).all()
    assert evidence["base"].tolist() == pytest.approx([0.8, 0.1])


def _prepared(config, name, subdir="", seed=SEED):
    return config.out / "cache" / "prepared" / f"{name}-n{config.patients}-s{seed}" / subdir


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
    phantom = config.out / "cache" / "phantom" / f"{variant}-n{config.patients}-s{SEED}"
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
    markers = cf.read_markers(config.out / "cache" / "phantom" / f"corner-0-n{config.patients}-s{SEED}")
    test = samples[samples["split"] == "test"]
    has = markers.loc[test["patientId"], "has_marker"].to_numpy()
    assert (has == 1 - test["label"].astype(int).to_numpy()).all()


@pytest.mark.slow
def test_a_change_of_the_scoring_code_rescores_without_retraining(experiment, monkeypatch):
    """The trained model is cached by ingestion's code, its scores by the scoring program's: a new
    scoring key re-runs scoring only, and a rerun with nothing changed gives the same rows."""
    from hygieia.experiment import shortcut

    config, results = experiment
    version, train = config.versions_used()[0], shortcut.Variant("marker", 1.0, "corner")
    run = shortcut.run_folder(config, SEED, version, train)
    trained_at = (run / "ingestion" / ds.PREDICTIONS).stat().st_mtime_ns
    scored = run / "scores" / "confounded" / "scores.json"
    scored_at = scored.stat().st_mtime_ns
    again = pd.DataFrame(shortcut.run_one(config, version, train, SEED))
    mine = results[(results["seed"] == SEED) & (results["version"] == version.name) & (results["train"] == train.name)]
    pd.testing.assert_frame_equal(again, mine.reset_index(drop=True)[again.columns], check_dtype=False)
    assert scored.stat().st_mtime_ns == scored_at
    monkeypatch.setattr(shortcut, "scoring_code", lambda: "the scoring program, changed")
    rescored = pd.DataFrame(shortcut.run_one(config, version, train, SEED))
    assert scored.stat().st_mtime_ns != scored_at
    assert (run / "ingestion" / ds.PREDICTIONS).stat().st_mtime_ns == trained_at
    pd.testing.assert_frame_equal(rescored, again)
