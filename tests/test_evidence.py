"""Evidence measured through the model: the altered copies, the drops ingestion stores, and box reliance and
faithfulness computed from them; a map from elsewhere does not change the headline column."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from fakes import write_fake_dataset, write_fake_ingestion_output
from hygieia import dataset as ds
from hygieia.scoring import evidence as scored
from hygieia.scoring.score import compute_results, load_inputs
from hygieia.submission import evidence
from hygieia.submission.ingestion import run_ingestion

SHAPE = (100, 100)


def test_the_grid_partitions_the_image_and_the_fill_is_linear_inside_its_cell_only():
    cells = evidence.grid_cells(SHAPE)
    cover = np.zeros(SHAPE, int)
    for top, left, bottom, right in cells:
        cover[top:bottom, left:right] += 1
    assert len(cells) == 16 and (cover == 1).all()
    yy, xx = np.mgrid[0:100, 0:100]
    plane = 40 + 1.5 * xx + 0.5 * yy              # a linear image is filled in exactly
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, SHAPE).astype(np.float64)
    for cell in cells:
        assert np.allclose(evidence.fill_linear(plane, cell), plane)
        filled = evidence.fill_linear(noisy, cell)
        top, left, bottom, right = cell
        outside = np.ones(SHAPE, bool)
        outside[top:bottom, left:right] = False
        assert (filled[outside] == noisy[outside]).all() and not (filled[~outside] == noisy[~outside]).all()


def test_the_sample_depends_on_the_ids_only():
    ids = [f"h{k:08x}" for k in range(500)]
    chosen = {ids[k] for k in evidence.sample_positions(ids, 200)}
    shuffled = list(np.random.default_rng(1).permutation(ids))
    assert len(chosen) == 200 and chosen == {shuffled[k] for k in evidence.sample_positions(shuffled, 200)}
    assert len(evidence.sample_positions(ids[:30], 200)) == 30


def shares_of(boxes):
    return np.stack([scored.cell_shares(evidence.grid_cells(SHAPE), b, SHAPE) for b in boxes])


BOXES = [np.array([[5.0, 5.0, 40.0, 30.0]]), np.array([[50.0, 20.0, 45.0, 60.0]]),
         np.array([[30.0, 60.0, 30.0, 30.0]]), np.array([[10.0, 50.0, 25.0, 40.0], [60.0, 0.0, 30.0, 30.0]])]


def test_box_reliance_follows_the_box_and_is_zero_for_what_ignores_it():
    shares = shares_of(BOXES)
    following = 0.2 * shares                        # each image loses where its own box is
    assert (scored.box_reliance(following, shares, shares) > 0.02).all()
    fixed = np.tile(np.linspace(0.3, 0, 16), (4, 1))   # the same drops wherever the box is: a location habit
    assert abs(scored.box_reliance(fixed, shares, shares).mean()) < 1e-12
    assert (scored.box_reliance(np.zeros((4, 16)), shares, shares) == 0).all()     # a model that loses nothing
    elsewhere = 0.2 * (1 - shares)                  # what is lost lies outside the box: below 0
    assert (scored.box_reliance(elsewhere, shares, shares) < 0).all()


def test_faithfulness_is_the_rank_agreement_of_map_and_drops():
    cells = evidence.grid_cells(SHAPE)
    drops = np.linspace(0, 0.3, 16)
    agreeing = np.zeros(SHAPE)
    for k, (top, left, bottom, right) in enumerate(cells):
        agreeing[top:bottom, left:right] = drops[k] + 0.01
    assert scored.faithfulness(agreeing, drops, cells) == pytest.approx(1.0)
    assert scored.faithfulness(agreeing.max() - agreeing, drops, cells) == pytest.approx(-1.0)
    assert scored.faithfulness(np.ones(SHAPE), drops, cells) == 0.0
    assert scored.faithfulness(agreeing, np.zeros(16), cells) == 0.0


# Calls every image positive, more so the brighter its top-left cell: filling that cell in is the only thing
# that moves it.
CORNER = """\
import numpy as np


class Model:
    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        return 0.5 + X["images"][:, :25, :25].mean(axis=(1, 2)) / 510
"""
BOX_FINDER = """
    def explain(self, X):
        maps = np.zeros(X["images"].shape)
        maps[:, 40:80, 40:80] = 1.0     # a map from elsewhere: always the same square
        return maps
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_dataset(tmp_path_factory.mktemp("evidence"), sizes=(40, 30, 20))


def ingest(dataset, tmp_path, code):
    folder = tmp_path / "submission"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(textwrap.dedent(code))
    report = run_ingestion(dataset / ds.INPUT_DIR, tmp_path / "output", folder, time_budget_s=300)
    assert report["status"] == "ok", report["error"]
    return tmp_path / "output", report


def test_ingestion_stores_what_the_models_own_predict_proba_loses_per_cell(dataset, tmp_path):
    output, report = ingest(dataset, tmp_path, CORNER)
    assert report["evidence"]["images"] == {"valid": 30, "test": 20} and report["evidence"]["copies"] == 800
    found = ds.read_evidence(output / ds.EVIDENCE, SHAPE, ds.read_table(output / ds.PREDICTIONS, ["id"])["id"])
    valid = ds.load_input_split(dataset / ds.INPUT_DIR, "valid")
    position = {i: k for k, i in enumerate(valid["ids"])}
    for image_id, base, drops in zip(found["ids"][:30], found["base"], found["drops"]):
        image = valid["images"][position[image_id]]
        assert base == pytest.approx(0.5 + image[:25, :25].mean() / 510, abs=1e-6)
        filled = np.clip(np.rint(evidence.fill_linear(image, found["cells"][0])), 0, 255)
        assert drops[0] == pytest.approx(base - 0.5 - filled[:25, :25].mean() / 510, abs=1e-6)
        assert (drops[1:] == 0).all()


def test_a_map_from_elsewhere_leaves_box_reliance_as_it_was(dataset, tmp_path):
    plain, _ = ingest(dataset, tmp_path / "plain", CORNER)
    mapped, _ = ingest(dataset, tmp_path / "mapped", CORNER + BOX_FINDER)
    ref_dir = dataset / ds.REFERENCE_DIR / "valid"
    results = [compute_results(*load_inputs(ref_dir, output), progress=False) for output in (plain, mapped)]
    assert results[0]["scores"]["box_reliance"] == results[1]["scores"]["box_reliance"]
    assert results[0]["scores"]["activation_in_box"] != results[1]["scores"]["activation_in_box"]
    assert results[1]["evidence"]["faithfulness"]["n_images"] > 0


@pytest.mark.parametrize("reliance, above", [(0.3, True), (0.0, False)])
def test_box_reliance_is_above_chance_only_for_drops_that_follow_the_box(tmp_path, reliance, above):
    root = write_fake_dataset(tmp_path / "data", sizes=(60, 200, 60))
    output = write_fake_ingestion_output(tmp_path / "res", root, reliance=reliance)
    results = compute_results(*load_inputs(root / ds.REFERENCE_DIR / "valid", output), progress=False)
    low, high = results["ci"]["box_reliance"]
    assert results["chance"]["box_reliance"] == 0.0 and results["evidence"]["n_opacity_sampled"] > 40
    assert (low > 0) if above else (low <= 0 <= high)
    assert "ids" not in results["evidence"]["box_reliance"]     # aggregates only where anyone can see them
