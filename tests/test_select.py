"""Selection and splits on the real RSNA label and header tables."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from conftest import shared_path
from hygieia.errors import HygieiaError
from hygieia.prepare.select import assign_ids, class_counts, draw_key, fitting_ap_share, select
from hygieia.prepare.views import patient_views
from hygieia.rsna.tables import NORMAL, NOT_NORMAL, OPACITY, read_tables

SIZES = {"train": 10000, "valid": 2000, "test": 2000}
SECRET = "a" * 64
KEY = draw_key(SECRET)


@pytest.fixture(scope="module")
def real_patients():
    rsna = shared_path("data", "rsna")
    patients = read_tables(rsna).patients
    patients = patients[patients["class"] != NOT_NORMAL]
    views, skipped = patient_views(rsna, patients["patientId"])
    assert skipped == [] and len(views) == len(patients)
    return patients.assign(view=patients["patientId"].map(views))


@pytest.fixture(scope="module")
def real_selection(real_patients):
    samples, pools = select(real_patients, SIZES, (3, 2), KEY)
    return assign_ids(samples, SECRET), pools


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
    unused = set().union(*pools.values())
    assert not unused & set(samples["patientId"])
    assert sum(len(pools[(0, v)]) for v in ("AP", "PA")) == 8851 - 8400
    assert sum(len(pools[(1, v)]) for v in ("AP", "PA")) == 6012 - 5600


def test_real_view_counts(real_patients):
    counts = real_patients.groupby(["class", "view"]).size().to_dict()
    assert counts == {(NORMAL, "AP"): 1637, (NORMAL, "PA"): 7214, (OPACITY, "AP"): 4664, (OPACITY, "PA"): 1348}


def test_hidden_splits_balanced_on_view_train_as_it_comes(real_selection, real_patients):
    samples, pools = real_selection
    for split in ("valid", "test"):
        rows = samples[samples["split"] == split]
        assert rows.groupby(["label", "view"]).size().to_dict() == {
            (0, "AP"): 600, (0, "PA"): 600, (1, "AP"): 400, (1, "PA"): 400}
    train = samples[samples["split"] == "train"]
    # train takes the patients left: 1637 - 1200 AP normals were left, 349 of them drawn
    ap = train.groupby("label")["view"].apply(lambda v: (v == "AP").mean())
    assert 0.04 < ap[0] < 0.08 and 0.85 < ap[1] < 0.92
    views = real_patients.set_index("patientId")["view"]
    for (label, view), pool in pools.items():  # unused patients, by label and view
        assert not set(pool) & set(samples["patientId"]) and set(views[pool]) == {view}


def test_view_share_is_an_option_and_none_keeps_the_mix(real_patients):
    samples, _ = select(real_patients, SIZES, (3, 2), KEY, ap_share=0.3)
    valid = samples[samples["split"] == "valid"]
    assert valid.groupby(["label", "view"]).size().to_dict() == {
        (0, "AP"): 360, (0, "PA"): 840, (1, "AP"): 240, (1, "PA"): 560}
    natural, _ = select(real_patients, SIZES, (3, 2), KEY, ap_share=None)
    test = natural[natural["split"] == "test"]
    ap = test.groupby("label")["view"].apply(lambda v: (v == "AP").mean())
    assert 0.14 < ap[0] < 0.23 and 0.72 < ap[1] < 0.83  # RSNA's 18.5 % and 77.6 %


def test_view_request_the_data_cannot_meet(real_patients):
    message = ("not enough patients: train=10000, valid=2000, test=2000 at 3:2 with hidden splits at AP share "
               "0.8 in each class needs 1920 AP Normal (the labels hold 1637); ask for a smaller --valid/--test "
               "or another --hidden-ap-share")
    with pytest.raises(HygieiaError, match=re.escape(message)):
        select(real_patients, SIZES, (3, 2), KEY, ap_share=0.8)
    with pytest.raises(HygieiaError, match=re.escape("needs 1440 PA Lung Opacity (the labels hold 1348)")):
        select(real_patients, SIZES, (3, 2), KEY, ap_share=0.1)
    assert fitting_ap_share(real_patients, SIZES) == 0.5
    assert fitting_ap_share(real_patients, {"train": 8000, "valid": 3000, "test": 3000}) == 0.45


def test_ids_opaque_unique_and_shuffled(real_selection):
    samples, _ = real_selection
    assert samples["id"].is_unique
    assert not samples["id"].eq(assign_ids(samples.drop(columns="id"), "b" * 64)["id"]).any()
    assert all(re.fullmatch(r"h[0-9a-f]{8}", i) for i in samples["id"])
    assert not set(samples["id"]) & set(samples["patientId"])
    train = samples[samples["split"] == "train"]
    # labels are not grouped: a shuffled split alternates classes far more than a sorted one would
    assert (train["label"].diff().abs() == 1).sum() > 1000


def test_deterministic_for_the_secret_and_drawn_from_it(real_patients, real_selection):
    again, _ = select(real_patients, SIZES, (3, 2), KEY)
    pd.testing.assert_frame_equal(assign_ids(again, SECRET), real_selection[0])
    other, _ = select(real_patients, SIZES, (3, 2), draw_key("b" * 64))
    mine = real_selection[0].set_index("patientId")["split"]
    theirs = other.set_index("patientId")["split"]
    hidden = mine[mine != "train"].index
    # another secret serves other films: two independent draws share about 42 % of the hidden films (most AP
    # normals and PA opacities are hidden whatever the secret, few of the others)
    shared = len(hidden.intersection(theirs[theirs != "train"].index))
    assert shared < 0.6 * len(hidden), shared


def test_too_large_request(real_patients):
    message = ("not enough patients: train=20000, valid=2000, test=2000 at 3:2 needs 14400 Normal and 9600 "
               "Lung Opacity patients; the labels hold 8851 Normal and 6012 Lung Opacity")
    with pytest.raises(HygieiaError, match=re.escape(message)):
        select(real_patients, {"train": 20000, "valid": 2000, "test": 2000}, (3, 2), KEY)
