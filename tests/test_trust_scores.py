"""The scores that cannot be gamed: box-blind maps at chance, worst-group accuracy, the shortcut gap,
the metric table, all-zero maps, and the published outputs' aggregates only, in both phases."""

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import write_fake_dataset, write_fake_ingestion_output
from leaks import find_leaks

from hygieia import dataset as ds
from hygieia.boxes import box_mask
from hygieia.files import write_json, write_npz
from hygieia.scoring import blind_maps, groups, metrics, shortcut
from hygieia.scoring import classification as cls
from hygieia.scoring import explanation as xp
from hygieia.scoring import score as sc
from hygieia.scoring.keys import LEADERBOARD_COLUMNS, NULLABLE_KEYS, PRIMARY_KEY, SCORE_KEYS
from hygieia.scoring.split import ScoredSplit

ROOT = Path(__file__).resolve().parents[1]
SIZE = 100


def test_every_key_comes_from_the_metric_table():
    assert SCORE_KEYS == [m.key for m in metrics.METRICS] and SCORE_KEYS[0] == PRIMARY_KEY
    assert [c["title"] for c in LEADERBOARD_COLUMNS] == [m.title for m in metrics.METRICS]
    assert NULLABLE_KEYS == ["shortcut_gap"]
    table = metrics.metric_table_markdown()
    for metric in metrics.METRICS:
        assert f"(`{metric.key}`" in table and metric.reference in table and metric.sorting in ("asc", "desc")
    assert len(table.strip().splitlines()) == len(metrics.METRICS) + 2
    assert "{{metric_table}}" in (ROOT / "pages" / "evaluation.md").read_text()


def blind_scores(heatmap, boxes, prior):
    """Every explanation column of one box-blind map on each image, in the batched form."""
    maps = xp.Maps(heatmap, boxes, prior)
    return {m.key: m.per_image(maps) for m in metrics.MAP_METRICS}


def centred_boxes(n, rng):
    """Boxes placed as windows placed around their box make them: near the crop's centre."""
    w, h = rng.uniform(20, 45, n), rng.uniform(20, 45, n)
    x, y = SIZE / 2 - w / 2 + rng.normal(0, 8, n), SIZE / 2 - h / 2 + rng.normal(0, 8, n)
    return [np.array([[a, b, c, d]]) for a, b, c, d in zip(x, y, w, h)]


@pytest.fixture(scope="module")
def boxes():
    rng = np.random.default_rng(5)
    train, test = centred_boxes(300, rng), centred_boxes(200, rng)
    prior = np.mean([box_mask(b, (SIZE, SIZE)) for b in train], axis=0).astype(np.float32)
    return train, test, prior


def test_box_blind_maps_score_at_chance_on_every_explanation_column(boxes):
    train, test, prior = boxes
    scores = {name: blind_scores(m, test, prior) for name, m in blind_maps.fixed_maps(prior).items()}
    share = np.array([box_mask(b, (SIZE, SIZE)).mean() for b in test])
    uniform = scores["uniform"]
    assert uniform["activation_in_box"] == pytest.approx(share)
    assert uniform["pointing_game"] == pytest.approx(share)   # ties share the credit
    assert uniform["activation_over_prior"] == pytest.approx(share - prior.max())
    # The centre map beats uniform by far (the geometry leaks), but not the prior-relative column.
    assert scores["centre Gaussian"]["activation_in_box"].mean() > 1.5 * share.mean()
    for name, columns in scores.items():   # the prior-relative column is built to be 0 for every blind map
        assert cls.bootstrap_mean(columns["activation_over_prior"])[0] <= 0.0, name
    assert abs(scores["box prior's peak"]["activation_over_prior"].mean()) < 0.05  # the best fixed map


def test_a_box_regressor_on_the_metadata_stays_at_chance(boxes):
    train, test, prior = boxes
    rng = np.random.default_rng(6)

    def meta(n, prefix):
        return pd.DataFrame({"id": [f"{prefix}{i}" for i in range(n)], "age": rng.integers(20, 90, n),
                             "sex": rng.choice(["M", "F"], n), "view_position": rng.choice(["AP", "PA"], n)})

    train_meta, test_meta = meta(len(train), "t"), meta(len(test), "s")
    train_boxes = pd.DataFrame(np.vstack(train), columns=["x", "y", "width", "height"]).assign(id=train_meta["id"])
    maps = blind_maps.box_regressor_maps(train_meta.set_index("id"), train_boxes, test_meta, (SIZE, SIZE))
    assert len(maps) == len(test) and len({m.tobytes() for m in maps}) > 1  # one map per image
    over = [metrics.explain_image(m, b, prior)["activation_over_prior"] for m, b in zip(maps, test)]
    assert cls.bootstrap_mean(np.array(over))[0] <= 0.0


def test_view_only_and_constant_rules_score_worst_group_accuracy_zero():
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 2, 400)
    view = np.where(rng.random(400) < np.where(truth == 1, 0.75, 0.2), "AP", "PA")
    group = groups.class_by(truth, view)
    view_rule = (view == "AP").astype(int)
    assert (view_rule == truth).mean() > 0.7   # the rule looks good on accuracy...
    result = groups.worst_group_accuracy(truth, view_rule, group)
    assert result["value"] == 0.0 and result["group"] == "normal / AP"   # ...and fails a whole group
    assert result["ci"] == [0.0, 0.0]
    assert groups.worst_group_accuracy(truth, np.ones(400, int), group)["value"] == 0.0
    perfect = groups.worst_group_accuracy(truth, truth, group)
    assert perfect["value"] == 1.0 and perfect["ci"] == [1.0, 1.0]
    noisy = np.where(rng.random(400) < 0.1, 1 - truth, truth)
    result = groups.worst_group_accuracy(truth, noisy, group)
    assert result["value"] == min(result["groups"].values()) and result["ci"][0] <= result["value"] <= result["ci"][1]


def shortcut_split(seed=8):
    """300 normals (20 % AP), 200 opacities and 100 probes from opacity films (75 % AP), as leftover
    opacity films are; a marker burnt into every opacity film."""
    rng = np.random.default_rng(seed)
    truth = np.r_[np.zeros(300, int), np.ones(200, int), np.ones(100, int)]
    probes = np.r_[np.zeros(500, int), np.ones(100, int)]
    view = np.where(rng.random(600) < np.where(truth == 1, 0.75, 0.2), "AP", "PA")
    return rng, truth, probes, view


def test_shortcut_gap_catches_a_film_cue_and_not_an_opacity_reader():
    rng, truth, probes, view = shortcut_split()
    reads_marker = np.where(truth == 1, rng.random(600) < 0.9, rng.random(600) < 0.1).astype(int)
    reads_opacity = np.where(probes == 1, rng.random(600) < 0.1,   # calls probes like normals
                             np.where(truth == 1, rng.random(600) < 0.8, rng.random(600) < 0.1)).astype(int)
    marker = shortcut.shortcut_gap(truth, reads_marker, probes, view)
    opacity = shortcut.shortcut_gap(truth, reads_opacity, probes, view)
    assert marker["value"] == marker["raw"] > 0.7 and marker["ci"] == marker["raw_ci"] and marker["ci"][0] > 0.6
    assert abs(opacity["raw"]) < 0.1 and opacity["raw_ci"][0] < 0 < opacity["raw_ci"][1]
    assert opacity["value"] == max(opacity["raw"], 0) and opacity["ci"] == [0.0, opacity["raw_ci"][1]]
    assert [row["stratum"] for row in marker["strata"]] == ["AP", "PA"] and marker["n_unmatched"] == 0
    none = shortcut.shortcut_gap(truth[:500], reads_marker[:500], probes[:500], view[:500])
    assert none["value"] is None and "no off-box probe" in none["reason"]


def test_calling_probe_like_items_negative_gains_nothing_on_the_shortcut_gap():
    """A model that guesses the probes (say, items whose whole-film features say opacity while the crop looks
    clean) and calls them negative drives the gap below 0, which scores 0: what a model that reads the opacity
    scores up to noise, and no better."""
    rng, truth, probes, view = shortcut_split()
    reads_opacity = np.where(truth == 1, rng.random(600) < 0.8, rng.random(600) < 0.1).astype(int)
    honest = np.where(probes == 1, rng.random(600) < 0.1, reads_opacity)   # probes called like normals
    guesser = np.where(probes == 1, 0, reads_opacity)                       # every probe guessed and called 0
    honest_gap, guessed_gap = (shortcut.shortcut_gap(truth, c, probes, view) for c in (honest, guesser))
    assert guessed_gap["raw"] < -0.05 and guessed_gap["raw_ci"][1] < 0
    assert guessed_gap["value"] == 0.0 and guessed_gap["ci"] == [0.0, 0.0]
    assert 0 <= honest_gap["value"] < 0.1
    metric = metrics.BY_KEY["shortcut_gap"]
    assert metric.sorting == "asc" and metric.value_range == (0, 1)   # 0, the best value, is the guesser's floor


def test_shortcut_gap_matches_views_so_the_view_alone_makes_no_gap():
    _, truth, probes, view = shortcut_split()
    reads_view = (view == "AP").astype(int)
    unmatched = shortcut.shortcut_gap(truth, reads_view, probes)
    matched = shortcut.shortcut_gap(truth, reads_view, probes, view)
    # unmatched, the gap is the difference of the probes' and the normals' AP shares
    share = (view[probes == 1] == "AP").mean() - (view[(truth == 0)] == "AP").mean()
    assert unmatched["value"] == pytest.approx(share) and share > 0.4
    assert matched["value"] == 0 and matched["ci"] == [0.0, 0.0]
    only_ap_normals = np.where((truth == 0) & (view == "PA"), "AP", view)
    lonely = shortcut.shortcut_gap(truth, reads_view, probes, only_ap_normals)
    assert lonely["n_unmatched"] == (view[probes == 1] == "PA").sum() > 0
    assert lonely["n_probes"] - lonely["n_unmatched"] == (view[probes == 1] == "AP").sum()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_dataset(tmp_path_factory.mktemp("trust"), sizes=(30, 40, 40), seed=11, probes=4)


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    return write_fake_ingestion_output(tmp_path_factory.mktemp("res"), dataset, seed=12)


def ids_of(ref_dir):
    return pd.read_csv(ref_dir / "meta.csv", dtype={"id": str})["id"].tolist()


def scoring_outputs(ref_dir, run_dir, out, capsys) -> dict[str, bytes]:
    """What a participant and the public see of a scoring run: its output files and its log."""
    assert sc.main([str(ref_dir), str(run_dir), str(out)]) == 0
    captured = capsys.readouterr()
    seen = {path.name: path.read_bytes() for path in out.iterdir()}
    assert set(seen) >= {"scores.json", "scores.txt", "detailed_scores.json", "detailed_results.html"}
    return {**seen, "stdout": captured.out.encode(), "stderr": captured.err.encode()}


@pytest.mark.parametrize("split", ["valid", "test"])
def test_published_outputs_hold_no_id_and_no_hidden_image_in_either_phase(split, dataset, run_dir, tmp_path,
                                                                           capsys):
    ref_dir = dataset / "reference_data" / split
    assert json.loads((ref_dir / "split.json").read_text()) == {"final": split == "test", "split": split}
    seen = scoring_outputs(ref_dir, run_dir, tmp_path / "out", capsys)
    reference = ds.load_reference_split(ref_dir)
    assert find_leaks(seen, reference["ids"], reference["images"]) == {}
    page = seen["detailed_results.html"].decode()
    assert "Worst-group accuracy" in page and "score_locally.py" in page
    assert len(re.findall(r"data:image/png", page)) == 4   # the score charts and the histograms only
    detailed = json.loads(seen["detailed_scores.json"])
    assert "images" not in detailed["explanation"] and "all_zero_ids" not in detailed["explanation"]
    assert "roc" not in detailed["classification"] and detailed["per_image"] is False
    assert detailed["final"] is (split == "test") and detailed["scores"]["worst_group_accuracy"] is not None


def test_per_image_results_name_and_show_images_on_request(dataset, run_dir, tmp_path, capsys, monkeypatch):
    """The other side of the test above, and proof that its search finds what it looks for."""
    monkeypatch.setenv(sc.PER_IMAGE_ENV, "1")
    ref_dir = dataset / "reference_data" / "valid"
    seen = scoring_outputs(ref_dir, run_dir, tmp_path / "out", capsys)
    reference = ds.load_reference_split(ref_dir)
    leaks = find_leaks(seen, reference["ids"], reference["images"])
    assert leaks["detailed_results.html"]["n_ids"] > 4 and leaks["detailed_results.html"]["n_images"] >= 8
    assert leaks["detailed_scores.json"]["n_ids"] > 4 and "HYGIEIA_PER_IMAGE=1" in seen["stderr"].decode()
    probe_ids = [i for i, probe in zip(reference["ids"], reference["probes"]) if probe]
    page = seen["detailed_results.html"].decode()
    assert len(probe_ids) == 4 and not any(i in page for i in probe_ids)   # probes are never named


def test_probes_are_left_out_of_the_other_metrics(dataset, run_dir):
    ref_dir = dataset / "reference_data" / "valid"
    ref, run = sc.load_inputs(ref_dir, run_dir)
    results = sc.compute_results(ref, run, ref_dir, progress=False)
    assert results["n_scored"] == 40 and results["n_probes"] == 4
    assert results["classification"]["n"] == 40
    gap = results["shortcut"]
    called = run["predictions"]["label"].to_numpy()
    assert gap["probe_positive_rate"] == pytest.approx(called[ref["probes"] == 1].mean())
    view = ref["meta"].loc[ref["ids"], "view_position"].to_numpy()
    matched = shortcut.shortcut_gap(ref["labels"], called, ref["probes"], view)   # probes matched on view
    assert gap["value"] == pytest.approx(matched["value"], abs=1e-6) and gap["strata"][0]["n_normal"] > 0
    assert {row["stratum"] for row in gap["strata"]} <= {"AP", "PA"}
    assert results["scores"]["shortcut_gap"] == pytest.approx(gap["value"], abs=1e-6)
    assert set(results["chance"]) == set(SCORE_KEYS)


def test_chance_references_are_the_best_blind_rules_scores(dataset, run_dir):
    """Computed on the split by each metric's own code: the best constant rule for what reads labels,
    the best box-blind map for what reads heatmaps."""
    ref_dir = dataset / "reference_data" / "valid"
    ref, run = sc.load_inputs(ref_dir, run_dir)
    results = sc.compute_results(ref, run, ref_dir, progress=False)
    chance = results["chance"]
    p = results["classification"]["n_positive"] / results["classification"]["n"]
    assert 0.2 < p < 0.8
    assert chance["accuracy"] == pytest.approx(max(p, 1 - p)) and chance["auroc"] == 0.5
    assert chance["recall"] == 1.0 and chance["precision"] == pytest.approx(p)
    assert chance["fbeta2"] == pytest.approx(5 * p / (4 * p + 1))   # everything positive, not the prevalence
    assert chance["worst_group_accuracy"] == 0.0 and chance["shortcut_gap"] == 0.0
    blind = results["blind_maps"]["maps"]
    for key in metrics.EXPLANATION_KEYS:
        assert chance[key] == max(scores[key] for scores in blind.values()) == results["blind_maps"]["best"][key]
    # every positive is explained by the box-blind map: its activation in box is the mean over them
    split = ScoredSplit.of_run(ref, run)
    uniform = split.box_blind["uniform"]
    shares = [box_mask(split.boxes[i], (SIZE, SIZE)).mean() for i in split.positive_ids]
    assert uniform.true_positive_ids == split.positive_ids
    assert blind["uniform"]["activation_in_box"] == pytest.approx(np.mean(shares), abs=1e-6)


def test_everything_positive_scores_f_beta_0_769_at_prevalence_0_4():
    truth = np.r_[np.ones(40, int), np.zeros(60, int)]
    counts = cls.Counts.of(truth, np.ones(100, int))
    assert metrics.BY_KEY["fbeta2"].rate(counts) == pytest.approx(0.769, abs=5e-4) == 5 * 0.4 / (4 * 0.4 + 1)
    assert metrics.BY_KEY["fbeta2"].rate(cls.Counts.of(truth, np.zeros(100, int))) == 0.0


def test_a_split_without_probes_writes_no_shortcut_gap_and_says_why(dataset, run_dir, tmp_path, capsys):
    ref_dir = Path(shutil.copytree(dataset / "reference_data" / "valid", tmp_path / "ref"))
    labels = pd.read_csv(ref_dir / "labels.csv", dtype={"id": str})
    labels.assign(probe=0, label=np.where(labels["probe"] == 1, 0, labels["label"])).to_csv(
        ref_dir / "labels.csv", index=False)
    assert sc.main([str(ref_dir), str(run_dir), str(tmp_path / "out")]) == 0
    assert "shortcut_gap=null" in capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "detailed_scores.json").read_text())
    assert results["scores"]["shortcut_gap"] is None
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert set(scores) == set(SCORE_KEYS) - {"shortcut_gap"}
    assert "shortcut_gap" not in (tmp_path / "out" / "scores.txt").read_text()
    assert "no off-box probe" in (tmp_path / "out" / "detailed_results.html").read_text()


def test_all_zero_maps_are_counted_and_shown(dataset, run_dir, tmp_path):
    res = Path(shutil.copytree(run_dir, tmp_path / "res"))
    with np.load(res / "heatmaps.npz") as archive:
        ids, maps = archive["ids"], archive["maps"].copy()
    maps[:3] = 0
    write_npz(res / "heatmaps.npz", ids=ids, maps=maps)
    ref_dir = dataset / "reference_data" / "valid"
    results = sc.score(ref_dir, res, tmp_path / "out", progress=False)
    zero = [i for i in ids[:3] if i in set(ids_of(ref_dir))]
    assert results["explanation"]["n_all_zero_maps"] == len(zero) > 0
    assert f"{len(zero)} of the" in (tmp_path / "out" / "detailed_results.html").read_text()


def test_baseline_row_from_the_reference_folder(dataset, run_dir, tmp_path):
    ref_dir = Path(shutil.copytree(dataset / "reference_data" / "valid", tmp_path / "ref"))
    write_json(ref_dir / "baseline_scores.json", {"accuracy": 0.8123, "worst_group_accuracy": 0.4321})
    results = sc.score(ref_dir, run_dir, tmp_path / "out", progress=False)
    assert results["baseline"]["accuracy"] == 0.8123 and results["baseline"]["iou_95"] is None
    page = (tmp_path / "out" / "detailed_results.html").read_text()
    assert "0.8123" in page and "0.4321" in page and "No baseline row" not in page


def test_missing_reference_files_are_named(dataset, run_dir, tmp_path):
    for name in ("box_prior.npy", "split.json"):
        ref_dir = Path(shutil.copytree(dataset / "reference_data" / "valid", tmp_path / name))
        (ref_dir / name).unlink()
        with pytest.raises(sc.DataError, match=re.escape(name)):
            sc.score(ref_dir, run_dir, tmp_path / "out", progress=False)
    ref_dir = Path(shutil.copytree(dataset / "reference_data" / "valid", tmp_path / "noprobe"))
    labels = pd.read_csv(ref_dir / "labels.csv", dtype={"id": str})
    labels.drop(columns="probe").to_csv(ref_dir / "labels.csv", index=False)
    with pytest.raises(sc.DataError, match=r"labels.csv: missing column\(s\) \['probe'\]"):
        sc.score(ref_dir, run_dir, tmp_path / "out", progress=False)


def test_box_blind_map_values_pinned_on_a_centred_box():
    """Every training and scored box is the centre quarter of the crop: the values follow by hand."""
    box = np.array([[25.0, 25.0, 50.0, 50.0]])
    prior = box_mask(box, (SIZE, SIZE)).astype(np.float32)       # every training box the same
    maps = blind_maps.fixed_maps(prior)
    uniform = {k: v[0] for k, v in blind_scores(maps["uniform"], [box], prior).items()}
    assert uniform == pytest.approx({"activation_in_box": 0.25, "pointing_game": 0.25, "cc_map": 0.0,
                                     "iou_95": 2500 / 9500,   # a 95 x 100 rectangle holds 95 %
                                     "activation_over_prior": 0.25 - 1.0})
    gaussian = {k: v[0] for k, v in blind_scores(maps["centre Gaussian"], [box], prior).items()}
    one_axis = 0.8664  # P(|x| < 1.5 sigma): the box's half side is 25 = 1.5 x (100 / 6)
    assert gaussian["activation_in_box"] == pytest.approx(one_axis ** 2, abs=0.01)
    assert gaussian["pointing_game"] == 1.0    # the four central maxima lie in the box
    for name in ("box prior (mean mask)", "box prior's peak"):
        scores = blind_scores(maps[name], [box], prior)
        assert scores["activation_in_box"][0] == 1.0 and scores["activation_over_prior"][0] == 0.0
    meta = pd.DataFrame({"id": ["a", "b", "c"], "age": [30, 50, 70], "sex": ["M", "F", "M"],
                         "view_position": ["AP", "PA", "PA"]})
    boxes = pd.DataFrame({"id": ["a", "b", "c"], "x": 25.0, "y": 25.0, "width": 50.0, "height": 50.0})
    regressed = blind_maps.box_regressor_maps(meta.set_index("id"), boxes, meta.iloc[:1], (SIZE, SIZE))
    result = metrics.explain_image(regressed[0], box, prior)
    assert result["activation_over_prior"] == pytest.approx(0.0) and result["pointing_game"] == 1.0


def test_an_empty_view_field_is_its_own_group_not_an_empty_one():
    # the starting kit's local hold-out has no view position: read from CSV, the field is NaN,
    # which never equals itself, so grouping on the raw values made empty groups and crashed
    meta = pd.read_csv(io.StringIO("id,view_position\na,\nb,AP\nc,\n"))
    values = groups.column_values(meta, "view_position")
    assert list(values) == ["missing", "AP", "missing"]
    rows = groups.group_rows(np.array([0, 1, 1]), np.array([0.2, 0.8, 0.6]), np.array([0, 1, 1]), values)
    assert [(row["group"], row["n"], row["accuracy"]) for row in rows] == [("AP", 1, 1.0), ("missing", 2, 1.0)]
