"""Scoring's reading of ingestion's output: bounded before loading, whatever the files claim."""

from __future__ import annotations

import numpy as np
import pytest

from fakes import write_fake_dataset, write_fake_ingestion_output
from hygieia import dataset as ds
from hygieia.errors import DataError
from hygieia.files import write_npz
from hygieia.scoring.ingestion_output import read_ingestion_output


@pytest.fixture
def run(tmp_path):
    dataset = write_fake_dataset(tmp_path / "data", sizes=(10, 20, 20))
    res = write_fake_ingestion_output(tmp_path / "res", dataset, seed=1)
    ref = ds.load_reference_split(dataset / ds.REFERENCE_DIR / "valid")
    return res, ref


def test_a_heatmap_file_with_more_maps_than_positives_is_refused_before_loading(run, monkeypatch):
    """100,000 all-zero maps compress to a few MB and would take 2 GB loaded: refused from the header."""
    res, ref = run
    n_positive = int(np.load(res / "heatmaps.npz")["ids"].size)
    write_npz(res / "heatmaps.npz", ids=np.array([f"x{i}" for i in range(100_000)]),
              maps=np.zeros((100_000, 100, 100), np.float16))
    assert (res / "heatmaps.npz").stat().st_size < 5_000_000

    def no_loading(*args, **kwargs):
        raise AssertionError("np.load called on a refused file")

    monkeypatch.setattr(np, "load", no_loading)
    with pytest.raises(DataError, match=rf"heatmaps.npz: 100000 heatmaps for {n_positive} predicted positive\(s\) "
                                        r"in predictions.csv; refused before loading them"):
        read_ingestion_output(res, ref["ids"], (100, 100))


def test_heatmaps_within_the_limit_are_read(run):
    res, ref = run
    result = read_ingestion_output(res, ref["ids"], (100, 100))
    positives = result["predictions"].index[result["predictions"]["label"] == 1]
    assert sorted(result["heatmaps"]) == sorted(positives) and len(positives) > 0
