"""tools/real_radiographs.py: the view-only submission it writes, and the gap it compares the leaderboard's with."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd

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
