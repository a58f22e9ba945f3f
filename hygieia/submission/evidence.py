"""Evidence measured through the model: how much of its own ``predict_proba`` a model loses when one cell of an
image is taken away (occlusion, Zeiler & Fergus 2014).

Ingestion, the trusted parent, builds the altered copies and reads back the probabilities; the participant's
process only answers ``predict_proba`` on them, as on any other images. For each scored split it takes a
fixed-size sample of its images (the first ``SAMPLE_PER_SPLIT`` of them in the order of a hash of their id),
cuts each image into a ``GRID`` x
``GRID`` grid of cells, and makes one copy per cell with that cell filled in by linear interpolation from the
pixels around it: a Coons patch of the cell's border, the class-neutral imputation that ROAD (Rong et al., ICML
2022) recommends over a constant or a blur, which keep or add information of their own. The drop of a cell is
the image's probability minus the copy's. No box is needed: scoring combines the drops with the hidden boxes.
The sample does not depend on the predictions: every submission is measured on the same images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from hygieia import dataset as ds
from hygieia.files import write_csv, write_npy

GRID = 4                 # cells per side: 25 x 25 pixels on the competition's 100 x 100 crops
SAMPLE_PER_SPLIT = 200   # images measured per split (about 80 opacity images at 3:2)
ANSWERS = "evidence.csv"  # what the submission's process answers: id, proba of every altered copy
RANDOMISATION = "randomisation.json"  # its randomisation check of Grad-CAM (``gradcam.randomisation_check``)


def grid_cells(shape: tuple[int, int], grid: int = GRID) -> np.ndarray:
    """The cells of a ``grid`` x ``grid`` partition of an image of ``shape``: (grid², 4) int rectangles
    (top, left, bottom, right), bottom and right exclusive, row by row."""
    height, width = shape
    rows = np.round(np.linspace(0, height, grid + 1)).astype(int)
    cols = np.round(np.linspace(0, width, grid + 1)).astype(int)
    return np.array([(rows[i], cols[j], rows[i + 1], cols[j + 1]) for i in range(grid) for j in range(grid)])


def fill_linear(image: np.ndarray, rectangle) -> np.ndarray:
    """``image`` (H, W) with ``rectangle`` replaced by the Coons patch (bilinearly blended linear interpolation)
    of the pixel rows and columns just outside it; at the image's edge the rectangle's own border is used."""
    height, width = image.shape
    top, left, bottom, right = (int(v) for v in rectangle)
    out = image.astype(np.float64)
    above, below = max(top - 1, 0), min(bottom, height - 1)
    before, after = max(left - 1, 0), min(right, width - 1)
    v = ((np.arange(top, bottom) - above) / max(below - above, 1))[:, None]
    u = ((np.arange(left, right) - before) / max(after - before, 1))[None, :]
    north, south = out[above, left:right][None, :], out[below, left:right][None, :]
    west, east = out[top:bottom, before][:, None], out[top:bottom, after][:, None]
    corners = ((1 - u) * (1 - v) * out[above, before] + u * (1 - v) * out[above, after]
               + (1 - u) * v * out[below, before] + u * v * out[below, after])
    patch = (1 - v) * north + v * south + (1 - u) * west + u * east - corners
    filled = out.copy()
    filled[top:bottom, left:right] = patch
    return filled


def occluded_copies(images: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(K * M, H, W) uint8: for each image, one copy per cell with that cell filled in (image-major)."""
    copies = np.empty((len(images) * len(cells), *images.shape[1:]), dtype=np.uint8)
    for k, image in enumerate(images):
        for m, cell in enumerate(cells):
            copies[k * len(cells) + m] = np.clip(np.rint(fill_linear(image, cell)), 0, 255)
    return copies


def sample_positions(ids: list[str], limit: int = SAMPLE_PER_SPLIT) -> np.ndarray:
    """Positions of at most ``limit`` of the split's images, in the order of the SHA-256 of their id: the
    same images for every submission (paired comparisons), and unrelated to the split's order."""
    order = sorted(range(len(ids)), key=lambda k: hashlib.sha256(ids[k].encode()).digest())
    return np.array(order[:limit], dtype=np.int64)


def drops(base: np.ndarray, altered: np.ndarray, cells: int) -> np.ndarray:
    """(K, M) float32: each image's probability minus that of each of its M altered copies."""
    base = np.asarray(base, dtype=np.float64)
    return (base[:, None] - np.asarray(altered, dtype=np.float64).reshape(len(base), cells)).astype(np.float32)


def copy_id(image_id: str, cell: int) -> str:
    """The id of an altered copy: the image's id and the cell filled in."""
    return f"{image_id}~{cell}"


def write_input(input_dir: str | Path, out_dir: str | Path) -> dict[str, list[str]]:
    """The altered copies of each scored split's sampled images, laid out as input splits of ``out_dir``
    (images.npy, features.npy and meta.csv, as ``hygieia.dataset.load_input_split`` reads them: a copy keeps
    its image's features and metadata); returns {split: the sampled ids, in order}."""
    sampled = {}
    for split in ds.SCORED_SPLITS:
        X = ds.load_input_split(input_dir, split)
        positions = sample_positions(X["ids"])
        cells = grid_cells(X["images"].shape[1:])
        sampled[split] = [X["ids"][k] for k in positions]
        rows = np.repeat(positions, len(cells))
        folder = Path(out_dir) / split
        write_npy(folder / ds.IMAGES, occluded_copies(X["images"][positions], cells))
        write_npy(folder / ds.FEATURES, X["features"][rows])
        meta = X["meta"].iloc[rows].reset_index(drop=True)
        meta.insert(0, "id", [copy_id(i, m) for i in sampled[split] for m in range(len(cells))])
        write_csv(folder / ds.META, meta[ds.INPUT_META_COLUMNS])
    return sampled


def expected_copies(sampled: dict[str, list[str]], cells: int) -> list[str]:
    """Every altered copy's id, valid's then test's, as the submission's process answers them."""
    return [copy_id(i, m) for split in ds.SCORED_SPLITS for i in sampled[split] for m in range(cells)]


def measured(sampled: dict[str, list[str]], shape: tuple[int, int], answers: pd.DataFrame,
             predictions: pd.DataFrame) -> dict:
    """evidence.npz's arrays from the checked answers (id, proba of every copy, in ``expected_copies``'
    order) and the checked predictions (id, proba...)."""
    cells = grid_cells(shape)
    ids = [i for split in ds.SCORED_SPLITS for i in sampled[split]]
    base = predictions.set_index("id").loc[ids, "proba"].to_numpy(np.float64)
    return {"ids": np.array(ids, dtype=str), "cells": cells.astype(np.int64), "base": base.astype(np.float32),
            "drops": drops(base, answers["proba"].to_numpy(np.float64), len(cells))}
