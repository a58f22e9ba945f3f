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

import numpy as np

GRID = 4                 # cells per side: 25 x 25 pixels on the competition's 100 x 100 crops
SAMPLE_PER_SPLIT = 200   # images measured per split (about 80 opacity images at 3:2)


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
