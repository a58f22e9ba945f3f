"""Which header fields models may see: a one-field rule must do no better than the majority class on the
real RSNA headers (all patients, and the real radiographs' own DICOM headers); INPUT_META_COLUMNS agrees."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import shared_path
from hygieia import dataset as ds
from hygieia.prepare.meta_check import FIELDS, check_field, fit_rule, header_table


def test_fit_rule_finds_a_threshold_and_categories():
    ages = pd.Series([20, 25, 30, 35, 60, 65, 70, 75, np.nan])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0])
    rule = fit_rule(ages, labels, numeric=True)
    assert rule(pd.Series([10, 50, 80, np.nan])).tolist() == [0, 1, 1, 0]  # cut at 47.5; missing → majority
    views = pd.Series(["AP", "AP", "PA", "PA", "AP"])
    rule = fit_rule(views, np.array([1, 1, 0, 0, 1]), numeric=False)
    assert rule(pd.Series(["PA", "AP", "LL"])).tolist() == [0, 1, 1]  # unknown category → majority (1)


def test_a_label_copy_predicts_and_noise_does_not():
    rng = np.random.default_rng(0)
    labels = (rng.random(3000) < 0.4).astype(int)
    table = pd.DataFrame({"label": labels, "view_position": np.where(labels == 1, "AP", "PA"),
                          "age": rng.integers(1, 90, 3000), "sex": rng.choice(["M", "F"], 3000)})
    assert check_field(table, "view_position")["predicts_label"]
    assert not check_field(table, "age")["predicts_label"] and not check_field(table, "sex")["predicts_label"]


@pytest.mark.parametrize("folder", ["rsna", "rsna_real_mini"])
def test_input_meta_columns_hold_only_fields_that_do_not_predict_the_label(folder):
    table = header_table(shared_path("data", folder))
    assert table["label"].mean() == pytest.approx(0.4, abs=0.001)  # the competition's 3:2
    results = {field: check_field(table, field) for field in FIELDS}
    assert results["view_position"]["gain"] > 0.15  # "positive if AP" beats the majority by far
    kept = [field for field, result in results.items() if not result["predicts_label"]]
    assert kept == ds.INPUT_META_COLUMNS[1:]
