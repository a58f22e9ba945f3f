"""Where the phantom's burnt-in marker lands in a prepared sample, and how much heatmap mass it takes.

The phantom records each marker in ``phantom_markers.csv`` (patientId, has_marker, text, x, y, width,
height in pixels of the 1024-pixel radiograph). ``prepare`` records each sample's crop window in
``private/samples.csv`` (id, patientId, split, label, window_x, window_y, window_side). A crop is the
window resized to its image size; a whole image is the radiograph resized. The counterfactual test
set is the phantom at confounder strength 0: the marker on every negative and on no positive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hygieia.boxes import box_mask, boxes_in_window, mass_share, scale_boxes
from hygieia.dataset import read_table
from hygieia.errors import DataError

MARKERS_FILE = "phantom_markers.csv"
MARKER_COLUMNS = ["patientId", "has_marker", "text", "x", "y", "width", "height"]
SAMPLES_FILE = Path("private") / "samples.csv"
SAMPLE_COLUMNS = ["id", "patientId", "split", "label", "window_x", "window_y", "window_side"]
RADIOGRAPH_SIZE = 1024
EMPTY_BOXES = np.zeros((0, 4), np.float64)


def read_markers(phantom_dir: str | Path) -> pd.DataFrame:
    """The phantom's marker table, indexed by patientId; coordinates of patients without a marker are NaN."""
    path = Path(phantom_dir) / MARKERS_FILE
    table = read_table(path, MARKER_COLUMNS)
    if table["patientId"].duplicated().any():
        raise DataError(f"{path}: duplicate patientId {table['patientId'][table['patientId'].duplicated()].iloc[0]}")
    has = pd.to_numeric(table["has_marker"], errors="coerce")
    if not has.isin([0, 1]).all():
        raise DataError(f"{path}: has_marker must be 0 or 1")
    coords = table[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce")
    bad = (has == 1) & (coords.isna().any(axis=1) | (coords[["width", "height"]] <= 0).any(axis=1))
    if bad.any():
        raise DataError(f"{path}: line {int(np.flatnonzero(bad)[0]) + 2}: a marker needs numeric x, y and a "
                        f"positive width and height")
    return pd.concat([table[["patientId"]], has.astype(int).rename("has_marker"), table["text"], coords],
                     axis=1).set_index("patientId")


def read_samples(prepared_dir: str | Path) -> pd.DataFrame:
    """``private/samples.csv`` of a prepared dataset, indexed by id."""
    path = Path(prepared_dir) / SAMPLES_FILE
    table = read_table(path, SAMPLE_COLUMNS)
    windows = table[["window_x", "window_y", "window_side"]].apply(pd.to_numeric, errors="coerce")
    if windows.isna().any().any() or (windows["window_side"] <= 0).any():
        raise DataError(f"{path}: window_x, window_y and window_side must be numbers, the side positive")
    return pd.concat([table[["id", "patientId", "split", "label"]], windows.astype(int)], axis=1).set_index("id")


def marker_in_crop(marker_box, window: tuple[int, int, int], size: int) -> np.ndarray:
    """The marker box (x, y, width, height in radiograph pixels) in the pixels of the window's
    ``size``×``size`` crop, clipped to the window: (1, 4), or (0, 4) when it lies outside."""
    return boxes_in_window(np.asarray(marker_box, np.float64), window, size)


def marker_in_whole(marker_box, size: int, radiograph_size: int = RADIOGRAPH_SIZE) -> np.ndarray:
    """The marker box in the pixels of the radiograph resized to ``size``×``size``: (1, 4)."""
    return scale_boxes(marker_box, (radiograph_size, radiograph_size), size)


def marker_boxes(markers: pd.DataFrame, samples: pd.DataFrame, ids, size: int, whole: bool) -> dict[str, np.ndarray]:
    """{id: (M, 4) marker boxes in that sample's image} for ``ids``: crops (``whole`` False) or whole
    images, ``size`` pixels square. M is 0 where the image shows no marker."""
    out = {}
    for sample_id in ids:
        if sample_id not in samples.index:
            raise DataError(f"{SAMPLES_FILE}: no row for sample id {sample_id}")
        sample = samples.loc[sample_id]
        if sample["patientId"] not in markers.index:
            raise DataError(f"{MARKERS_FILE}: no row for patient {sample['patientId']} (sample {sample_id})")
        marker = markers.loc[sample["patientId"]]
        if not marker["has_marker"]:
            out[sample_id] = EMPTY_BOXES
            continue
        box = marker[["x", "y", "width", "height"]].to_numpy(np.float64)
        window = (int(sample["window_x"]), int(sample["window_y"]), int(sample["window_side"]))
        out[sample_id] = marker_in_whole(box, size) if whole else marker_in_crop(box, window, size)
    return out


def marker_mass(heatmaps: dict[str, np.ndarray], boxes: dict[str, np.ndarray]) -> np.ndarray:
    """Share of each heatmap's mass on its marker, for the heatmaps whose image shows a marker."""
    shares = [mass_share(heatmaps[i], box_mask(boxes[i], heatmaps[i].shape))
              for i in heatmaps if len(boxes.get(i, EMPTY_BOXES))]
    return np.asarray(shares, np.float64)


def flip_rate(before: pd.Series, after: pd.Series) -> float:
    """Share of ids whose predicted label differs between two prediction series (indexed alike)."""
    if len(before) == 0:
        return float("nan")
    return float((before.to_numpy() != after.loc[before.index].to_numpy()).mean())
