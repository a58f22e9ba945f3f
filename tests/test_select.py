"""Selection and splits on the real RSNA label tables."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from conftest import shared_path
from hygieia.errors import HygieiaError
from hygieia.prepare.select import assign_ids, class_counts, select
from hygieia.rsna.tables import NOT_NORMAL, OPACITY, read_tables

SIZES = {"train": 10000, "valid": 2000, "test": 2000}


@pytest.fixture(scope="module")
def real_patients():
    return read_tables(shared_path("data", "rsna")).patients


@pytest.fixture(scope="module")
def real_selection(real_patients):
    samples, pools = select(real_patients, SIZES, (3, 2), seed=0)
    return assign_ids(samples, seed=0), pools


def test_class_counts():
    assert class_counts(10000, (3, 2)) == (6000, 4000)
    assert class_counts(7, (3, 2)) == (4, 3)  # round(2.8)
    assert class_counts(30, (1, 1)) == (15, 15)
    assert class_counts(10, (1, 0)) == (10, 0)


def test_sizes_and_ratio(real_selection):
    samples, _ = real_selection
    for split, n in SIZES.items():
        rows = samples[samples["split"] == split]
        assert len(rows) == n
        assert int(rows["label"].sum()) == round(n * 2 / 5)
    assert list(samples["split"].unique()) == ["train", "valid", "test"]


def test_patient_disjoint_and_classes(real_selection, real_patients):
    samples, pools = real_selection
    assert samples["patientId"].is_unique
    classes = real_patients.set_index("patientId")["class"]
    chosen = classes[samples["patientId"]].to_numpy()
    assert NOT_NORMAL not in set(chosen)
    assert ((chosen == OPACITY) == (samples["label"] == 1).to_numpy()).all()
    unused = set(pools[0]) | set(pools[1])
    assert not unused & set(samples["patientId"])
    assert len(pools[0]) == 8851 - 8400 and len(pools[1]) == 6012 - 5600


def test_ids_opaque_unique_and_shuffled(real_selection):
    samples, _ = real_selection
    assert samples["id"].is_unique
    assert all(re.fullmatch(r"h[0-9a-f]{8}", i) for i in samples["id"])
    assert not set(samples["id"]) & set(samples["patientId"])
    train = samples[samples["split"] == "train"]
    # labels are not grouped: a shuffled split alternates classes far more than a sorted one would
    assert (train["label"].diff().abs() == 1).sum() > 1000


def test_deterministic_and_seed_dependent(real_patients, real_selection):
    again, _ = select(real_patients, SIZES, (3, 2), seed=0)
    pd.testing.assert_frame_equal(assign_ids(again, seed=0), real_selection[0])
    other, _ = select(real_patients, SIZES, (3, 2), seed=1)
    assert set(other["patientId"]) != set(real_selection[0]["patientId"])


def test_too_large_request(real_patients):
    message = ("not enough patients: train=20000, valid=2000, test=2000 at 3:2 needs 14400 Normal and 9600 "
               "Lung Opacity patients; the labels hold 8851 Normal and 6012 Lung Opacity")
    with pytest.raises(HygieiaError, match=re.escape(message)):
        select(real_patients, {"train": 20000, "valid": 2000, "test": 2000}, (3, 2), seed=0)
