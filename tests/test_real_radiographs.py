"""tools/real_radiographs.py and tools/paired.py: the submissions it writes, the gap it compares the leaderboard's with,
the paired bootstrap (checked by hand), and an end-to-end run on the phantom."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fakes import write_fake_dataset
from hygieia import dataset as ds
from hygieia.scoring import shortcut
from hygieia.submission.loading import import_model_class

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("real_radiographs", ROOT / "tools" / "real_radiographs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_view_only_rule_scores_no_shortcut_gap_and_its_unmatched_gap_is_the_probes_view_mix(tmp_path):
    tool = load_tool()
    data = write_fake_dataset(tmp_path / "data", sizes=(40, 60, 60), probes=12)
    model = import_model_class(tool.write_view_only(data, tmp_path / "view_only"))()
    ref = data / ds.REFERENCE_DIR / "valid"
    inputs = ds.load_input_split(data / ds.INPUT_DIR, "valid")
    proba = model.predict_proba(inputs)
    meta = ds.read_table(ref / ds.META, ds.META_COLUMNS).set_index("id").loc[inputs["ids"]]
    assert np.array_equal(proba, (meta["view_position"] == "AP").to_numpy().astype(float))
    copies = {**inputs, "ids": [f"{i}~5" for i in inputs["ids"]]}   # ingestion's altered copies: the same films
    assert np.array_equal(model.predict_proba(copies), proba)

    res = tmp_path / "res"
    res.mkdir()
    pd.DataFrame({"id": inputs["ids"], "proba": proba, "label": proba.astype(int)}).to_csv(
        res / "predictions.csv", index=False)
    gap = tool.unmatched_gap(ref, res)
    labels = ds.read_table(ref / ds.LABELS, ds.REFERENCE_LABEL_COLUMNS)
    ap = (meta["view_position"] == "AP").to_numpy()
    probes, normal = labels["probe"].to_numpy() == 1, labels["label"].to_numpy() == 0
    assert gap["probe_ap_share"] == ap[probes].mean()
    assert gap["normal_ap_share"] == ap[normal & ~probes].mean()
    assert gap["unmatched_gap"] == gap["probe_ap_share"] - gap["normal_ap_share"]
    leaderboard = shortcut.shortcut_gap(labels["label"].to_numpy(), proba.astype(int), probes,
                                        meta["view_position"].to_numpy())
    assert leaderboard["value"] == 0.0


# ---------------------------------------------------------------- the paired bootstrap (fast, hand-checked)

def load_paired():
    load_tool()  # puts tools/ on sys.path
    import paired

    return paired


def synthetic_answers(paired, seed: int, n: int = 60, probes: int = 12):
    """Two submissions' answers on one split: every image has a view; probes are opacity films' windows."""
    rng = np.random.default_rng(seed)
    ids = [f"i{k:03d}" for k in range(n + probes)]
    truth = np.r_[rng.integers(0, 2, n), np.ones(probes, int)]
    view = rng.choice(["AP", "PA"], n + probes)
    items = pd.DataFrame({"truth": truth, "probe": np.r_[np.zeros(n, bool), np.ones(probes, bool)], "view": view},
                         index=ids)
    answers = []
    for flip in (0.3, 0.4):
        predicted = np.where(rng.random(n + probes) < flip, 1 - truth, truth)
        proba = np.clip(predicted * 0.6 + rng.random(n + probes) * 0.4, 0, 1)
        explained = [i for i, y, p in zip(ids[:n], truth, predicted) if y == 1 and p == 1]
        maps = pd.Series(rng.random(len(explained)), index=explained)
        answers.append(paired.Answers(items.assign(proba=proba, predicted=predicted),
                                      {"activation_in_box": maps}, {}))
    return answers


def draws(n: int, paired) -> np.ndarray:
    return np.random.default_rng(paired.SEED).integers(0, n, size=(paired.N_RESAMPLES, n))


def interval(values) -> list:
    return list(np.nanpercentile(values, [2.5, 97.5]))


def test_paired_accuracy_and_map_differences_are_the_hand_computed_paired_bootstrap():
    paired = load_paired()
    reference, model = synthetic_answers(paired, 0)
    columns = paired.paired_columns(reference, model)

    scored = ~reference.items["probe"].to_numpy()
    right = [(a.items["truth"] == a.items["predicted"]).to_numpy()[scored].astype(float) for a in (reference, model)]
    hand = [right[1][d].mean() - right[0][d].mean() for d in draws(scored.sum(), paired)]
    assert columns["accuracy"]["n"] == scored.sum()
    assert columns["accuracy"]["difference"] == pytest.approx(right[1].mean() - right[0].mean(), abs=1e-12)
    assert columns["accuracy"]["ci"] == pytest.approx(interval(hand), abs=1e-12)

    a, b = reference.per_image["activation_in_box"], model.per_image["activation_in_box"]
    common = [i for i in a.index if i in b.index]
    assert 0 < len(common) < min(len(a), len(b))   # paired on the images both explained, not on each one's own
    values = [a.loc[common].to_numpy(), b.loc[common].to_numpy()]
    hand = [values[1][d].mean() - values[0][d].mean() for d in draws(len(common), paired)]
    cell = columns["activation_in_box"]
    assert (cell["n"], cell["basis"]) == (len(common), "explained true positives of both")
    assert cell["difference"] == pytest.approx(values[1].mean() - values[0].mean(), abs=1e-12)
    assert cell["ci"] == pytest.approx(interval(hand), abs=1e-12)


def test_paired_worst_group_and_shortcut_gap_recompute_each_resample_for_both_models():
    paired = load_paired()
    reference, model = synthetic_answers(paired, 1)
    columns = paired.paired_columns(reference, model)

    scored = reference.items[~reference.items["probe"]]
    group = (scored["truth"].astype(str) + "/" + scored["view"]).to_numpy()

    def worst(answers, rows):
        right = (answers.items["truth"] == answers.items["predicted"]).to_numpy()[~reference.items["probe"]][rows]
        return min(right[group[rows] == g].mean() for g in set(group[rows]))

    hand = [worst(model, d) - worst(reference, d) for d in draws(len(scored), paired)]
    every = np.arange(len(scored))
    assert columns["worst_group_accuracy"]["difference"] == pytest.approx(worst(model, every) - worst(reference, every))
    assert columns["worst_group_accuracy"]["ci"] == pytest.approx(interval(hand), abs=1e-12)

    items = reference.items
    used = items[items["probe"] | (items["truth"] == 0)]   # both views hold probes and normals here
    probe, view = used["probe"].to_numpy(), used["view"].to_numpy()

    def gap(answers, rows):
        called = answers.items.loc[used.index, "predicted"].to_numpy()[rows]
        total, n_probes = 0.0, 0
        for v in ("AP", "PA"):
            normal = ~probe[rows] & (view[rows] == v)
            if normal.any():
                hits = probe[rows] & (view[rows] == v)
                total += (called[hits] - called[normal].mean()).sum()
                n_probes += hits.sum()
        return max(total / n_probes, 0.0) if n_probes else np.nan   # floored at 0, as the leaderboard's

    hand = [gap(model, d) - gap(reference, d) for d in draws(len(used), paired)]
    every = np.arange(len(used))
    cell = columns["shortcut_gap"]
    assert (cell["n"], cell["basis"]) == (len(used), "probes and normal films")
    assert cell["difference"] == pytest.approx(gap(model, every) - gap(reference, every))
    assert cell["ci"] == pytest.approx(interval(hand), abs=1e-12)


def test_a_column_that_gives_ids_and_per_image_values_is_paired_on_common_ids(monkeypatch):
    """A column the table declares later (box reliance, faithfulness) is picked up from the detailed
    results' ``evidence`` without editing the tool."""
    paired = load_paired()
    from hygieia.scoring import metrics as mt

    evidence = mt.SplitMetric(key="box_reliance", title="Box reliance", sorting="desc", value_range=(-1, 1),
                              needs=(), definition="", chance="", reference="", compute=lambda split: {})
    monkeypatch.setattr(mt, "METRICS", (*mt.METRICS, evidence))
    results = [{"per_image": True, "scores": {}, "explanation": {"images": []},
                "evidence": {"box_reliance": {"ids": ids, "images": values, "value": 0.0}}}
               for ids, values in ((["a", "b", "c", "d"], [0.1, 0.2, None, 0.4]), (["d", "c", "b", "e"], [1, 1, 1, 1]))]
    reference, model = (paired.Answers(pd.DataFrame(), paired.per_image_values(r), {}) for r in results)
    cell = paired.paired_column(evidence, reference, model)
    assert cell["n"] == 2   # b and d: c has no value for the reference, a and e are not in both
    assert cell["difference"] == pytest.approx(np.mean([1 - 0.2, 1 - 0.4]))
    assert cell["basis"] == "images both have per-image values for"


def test_the_tool_refuses_scores_it_does_not_recompute_and_model_arguments_name_a_folder(tmp_path):
    paired = load_paired()
    tool = load_tool()
    reference, _ = synthetic_answers(paired, 2)
    items = reference.items[~reference.items["probe"]]
    accuracy = float((items["truth"] == items["predicted"]).mean())
    with pytest.raises(Exception, match="accuracy recomputed here"):
        paired.check_own_scores(paired.Answers(reference.items, {}, {"accuracy": accuracy + 0.01}), "here")

    spec = tool.parse_model(f"mine=My model={ROOT / 'sample_submission'}={tool.FULL}")
    assert (spec.key, spec.title, spec.submission, spec.data) == ("mine", "My model", ROOT / "sample_submission",
                                                                  "full_128")
    with pytest.raises(Exception, match="no model.py"):
        tool.parse_model(f"mine=My model={tmp_path}")


# ------------------------------------------------------------------ end to end on the phantom (slow)

@pytest.mark.slow
def test_box_finder_rows_keep_the_samples_predictions_and_reuse_skips_what_did_not_change(
        phantom_prepared, tmp_path, weights_path, monkeypatch):
    monkeypatch.setenv("HYGIEIA_MOBILENET_WEIGHTS", str(weights_path))
    tool, paired = load_tool(), load_paired()
    out = tmp_path / "runs"
    tool.main([str(phantom_prepared), str(out), "--fast", "--only", "sample", "box_finder", "positive_box_finder"])
    result = json.loads((out / "real_radiographs.json").read_text())
    name = phantom_prepared.name
    runs = out / name

    # the separate box-finder explains the sample's own classifier: the same predictions, its own maps
    sample, box_finder = (runs / key / "ingestion" for key in ("sample", "box_finder"))
    assert (sample / ds.PREDICTIONS).read_bytes() == (box_finder / ds.PREDICTIONS).read_bytes()
    methods = {(r["model"], r["split"]): r["explanation_method"] for r in result["rows"]}
    assert methods["sample", "valid"] == "gradcam" and methods["box_finder", "valid"] == "explain"
    for split in ds.SCORED_SPLITS:
        cells = next(p for p in result["paired"] if p["model"] == "box_finder" and p["split"] == split)["columns"]
        assert cells["accuracy"]["difference"] == 0 and cells["accuracy"]["ci"] == [0, 0]
        assert all(cells[key]["difference"] == 0 for key in ("worst_group_accuracy", "recall", "precision", "auroc"))
        # box reliance is measured through the classifier: the map plays no part, the same images give the same value
        assert cells["box_reliance"]["n"] > 0
        assert cells["box_reliance"]["difference"] == 0 and cells["box_reliance"]["ci"] == [0, 0]

    # "everything is positive" against the sample: the paired interval by hand, from the run's files
    split = "test"
    labels = ds.read_table(phantom_prepared / ds.REFERENCE_DIR / split / ds.LABELS, ds.REFERENCE_LABEL_COLUMNS)
    labels = labels[labels["probe"] == 0].set_index("id")
    right = []
    for key in ("sample", "positive_box_finder"):
        predicted = pd.read_csv(runs / key / "ingestion" / ds.PREDICTIONS).set_index("id").loc[labels.index, "label"]
        right.append((predicted.to_numpy() == labels["label"].to_numpy()).astype(float))
    assert right[1].mean() == (labels["label"] == 1).mean()
    hand = [right[1][d].mean() - right[0][d].mean() for d in draws(len(labels), paired)]
    cell = next(p for p in result["paired"] if p["model"] == "positive_box_finder" and p["split"] == split)
    assert cell["columns"]["accuracy"]["difference"] == pytest.approx(right[1].mean() - right[0].mean())
    assert cell["columns"]["accuracy"]["ci"] == pytest.approx(interval(hand), abs=1e-12)

    # what is published names no image; the tables and the figure are written
    published = (out / "real_radiographs.json").read_text() + (out / "real_radiographs.md").read_text()
    hidden = [i for s in ds.SCORED_SPLITS for i in
              pd.read_csv(phantom_prepared / ds.REFERENCE_DIR / s / ds.LABELS)["id"]]
    assert not [i for i in hidden if i in published]
    assert "| the sample's classifier + a separate box-finder | " + name + " | valid | +0.000 [+0.000, +0.000]" \
        in published
    assert (out / "paired_differences.png").stat().st_size > 10_000
    headline = next(line for line in published.splitlines()
                    if line.startswith("| the sample's classifier + a separate box-finder | " + name + " | "))
    same = "+0.000 [+0.000, +0.000] / +0.000 [+0.000, +0.000]"
    assert headline.split(" | ")[-4:-1] == [same] * 3   # Δ box reliance, worst group, accuracy

    # --reuse: nothing changed, nothing runs; the scoring code changed: only scoring runs again
    models = [m for m in tool.MODELS if m.key == "sample"]
    again = tool.run_all([phantom_prepared], out, models, "sample", reuse=True, fast=True)
    assert all(r["reused"] == {"ingestion": True, "scoring": True} for r in again["rows"])
    monkeypatch.setattr(tool, "SCORING_CODE", ("hygieia/scoring/**/*.py",))   # another digest of the scoring code
    rescored = tool.run_all([phantom_prepared], out, models, "sample", reuse=True, fast=True)
    assert all(r["reused"] == {"ingestion": True, "scoring": False} for r in rescored["rows"])
    assert [r["scores"] for r in rescored["rows"]] == [r["scores"] for r in again["rows"]]
