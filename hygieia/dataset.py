"""The competition's data formats: one place that defines, writes and reads them.

A prepared dataset (``hygieia prepare`` output) is laid out as::

    input_data/{train,valid,test}/images.npy     (N, H, W) uint8   crops, 100x100 by default
    input_data/{train,valid,test}/features.npy   (N, 1280) float32 MobileNetV2 features
    input_data/{valid,test}/meta.csv             id + INPUT_META_COLUMNS (no label-predicting field)
    input_data/train/meta.csv                    TRAIN_META_COLUMNS: also view_position (group labels for
                                                 training, withheld at test time as in WILDS)
    input_data/train/labels.csv                  id, label          (public)
    input_data/train/boxes.csv                   id, x, y, width, height (public, crop pixels)
    reference_data/{valid,test}/labels.csv       id, label, probe   hidden from participants
    reference_data/{valid,test}/boxes.csv        hidden from participants
    reference_data/{valid,test}/meta.csv         id, age, sex, view_position: for the bias report and groups
    reference_data/{valid,test}/images.npy       copies, for the scoring program's gallery
    reference_data/{valid,test}/box_prior.npy    (H, W) float32: mean box mask of the training boxes,
                                                 the best box-blind fixed map (prior-relative scores)
    reference_data/{valid,test}/split.json       {"split": "valid"|"test", "final": bool}: Final-phase
                                                 runs show aggregates only (no id, no per-image row)

Ingestion's output folder (``ingestion → scoring``) holds ``predictions.csv`` (PREDICTION_COLUMNS, every
valid and test id), ``heatmaps.npz`` (``ids`` and ``maps`` (K, H, W) float16 in [0, 1], each map
divided by its own maximum, for the predicted positives of valid and test) and ``ingestion.json``
(status, stage, error, explanation method, counts ...) and ``evidence.npz``: what ingestion measured
through the model (``ids`` (K,) of the sampled images, ``cells`` (M, 4) int64 grid cells as top, left,
bottom, right, ``base`` (K,) float32 their probability, ``drops`` (K, M) float32 the probability each
loses when one cell is filled in: ``hygieia.submission.evidence``); on Codabench the worker adds
``metadata``.
A failed run is ``IngestionFailed``, whichever side finds it.

``probe`` is 1 for an off-box probe (a window cut from a Lung Opacity film away from every box; its
``label`` is 1, it has no box) and 0 otherwise. Probes are ordinary items on the input side; scoring
leaves them out of the classification metrics and uses them for the shortcut gap.

Rows of ``images.npy``, ``features.npy`` and ``meta.csv`` are in the same order; ``labels.csv``
follows that order too. Boxes are in pixel coordinates of the split's images (x to the right,
y down, origin at the top-left corner of the top-left pixel), as floats.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from hygieia.errors import DataError, HygieiaError
from hygieia.files import npz_headers

SPLITS = ("train", "valid", "test")
SCORED_SPLITS = ("valid", "test")
INPUT_DIR = "input_data"
REFERENCE_DIR = "reference_data"

IMAGES = "images.npy"
FEATURES = "features.npy"
META = "meta.csv"
LABELS = "labels.csv"
BOXES = "boxes.csv"

BOX_PRIOR = "box_prior.npy"
SPLIT_INFO = "split.json"

META_COLUMNS = ["id", "age", "sex", "view_position"]    # reference side (and RSNA headers)
# What models see of valid and test: only fields whose best one-field rule does no better than the
# majority class on real RSNA headers (hygieia.prepare.meta_check); view_position predicts the label there
# and stays hidden. Training also gets the view: the groups (class x view) for group reweighting or
# GroupDRO; on the view-balanced hidden splits a rule on the view is worthless.
INPUT_META_COLUMNS = ["id", "age", "sex"]
TRAIN_META_COLUMNS = [*INPUT_META_COLUMNS, "view_position"]


def input_meta_columns(split: str) -> list[str]:
    """The columns of ``input_data/<split>/meta.csv``."""
    return TRAIN_META_COLUMNS if split == "train" else INPUT_META_COLUMNS
LABEL_COLUMNS = ["id", "label"]
REFERENCE_LABEL_COLUMNS = ["id", "label", "probe"]
BOX_COLUMNS = ["id", "x", "y", "width", "height"]
N_FEATURES = 1280

PREDICTIONS = "predictions.csv"
HEATMAPS = "heatmaps.npz"
INGESTION_REPORT = "ingestion.json"
EVIDENCE = "evidence.npz"
WORKER_METADATA = "metadata"  # Codabench's worker writes it after ingestion; a submission must not
PREDICTION_COLUMNS = ["id", "proba", "label"]
EXPLANATION_METHODS = ("explain", "gradcam")


class IngestionFailed(HygieiaError):
    """An ingestion run that failed: raised by ingestion, and by scoring when ingestion reported it.
    ``traceback`` holds the failing process's own traceback when there is one."""

    def __init__(self, message: str, traceback: str | None = None):
        super().__init__(message)
        self.traceback = traceback


def read_table(path: str | Path, columns: list[str], **read_options) -> pd.DataFrame:
    """Read a CSV that must hold ``columns``; name the file and the missing columns otherwise.

    ``read_options`` go to ``pandas.read_csv`` (default: ids read as strings).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        table = pd.read_csv(path, **(read_options or {"dtype": {"id": str}}))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    return table[columns]


def read_array(path: str | Path, dtype, ndim: int) -> np.ndarray:
    """Load a .npy file of the given dtype and number of dimensions, without pickles."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err})") from err
    if array.dtype != np.dtype(dtype) or array.ndim != ndim:
        raise DataError(f"{path}: expected a {ndim}-d {np.dtype(dtype)} array, got {array.ndim}-d {array.dtype}")
    return array


def _check_rows(folder: Path, ids: pd.Series, **arrays: np.ndarray) -> None:
    if ids.duplicated().any():
        raise DataError(f"{folder / META}: duplicate id(s) {ids[ids.duplicated()].tolist()[:5]}")
    for name, array in arrays.items():
        if len(array) != len(ids):
            raise DataError(f"{folder / name}: {len(array)} rows but {META} has {len(ids)}")


def _check_labels(path: Path, labels: pd.DataFrame, ids: pd.Series) -> pd.Series:
    if list(labels["id"]) != list(ids):
        raise DataError(f"{path}: ids do not match {META} row for row")
    values = pd.to_numeric(labels["label"], errors="coerce")
    if values.isna().any() or not values.isin([0, 1]).all():
        raise DataError(f"{path}: labels must be 0 or 1")
    return values.astype(np.int64).reset_index(drop=True)


def _check_boxes(path: Path, boxes: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    numbers = boxes[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce")
    if numbers.isna().any().any():
        raise DataError(f"{path}: non-numeric or missing box coordinates")
    if (numbers[["width", "height"]] <= 0).any().any():
        raise DataError(f"{path}: box width and height must be positive")
    unknown = ~boxes["id"].isin(set(ids))
    if unknown.any():
        raise DataError(f"{path}: box ids not in {META}: {boxes['id'][unknown].tolist()[:5]}")
    return pd.concat([boxes[["id"]], numbers.astype(np.float64)], axis=1).reset_index(drop=True)


def load_input_split(input_dir: str | Path, split: str, *, features: bool = True) -> dict:
    """Read one split of ``input_data`` as the mapping ``X`` that participants' models receive.

    Keys: ``ids`` (list of str), ``images`` (N,H,W) uint8, ``features`` (N,1280) float32,
    ``meta`` (DataFrame indexed by id: age, sex; for train also view_position); for train also
    ``boxes`` (DataFrame id,x,y,width,height) and ``labels`` ((N,) int64 array).
    """
    folder = Path(input_dir) / split
    meta = read_table(folder / META, input_meta_columns(split))
    ids = meta["id"].reset_index(drop=True)
    images = read_array(folder / IMAGES, np.uint8, 3)
    X = {"ids": ids.tolist(), "images": images, "meta": meta.set_index("id")}
    arrays = {IMAGES: images}
    if features:
        X["features"] = read_array(folder / FEATURES, np.float32, 2)
        arrays[FEATURES] = X["features"]
        if X["features"].shape[1] != N_FEATURES or not np.isfinite(X["features"]).all():
            raise DataError(f"{folder / FEATURES}: expected finite (N, {N_FEATURES}) features")
    _check_rows(folder, ids, **arrays)
    if (folder / LABELS).exists():
        X["labels"] = _check_labels(folder / LABELS, read_table(folder / LABELS, LABEL_COLUMNS), ids).to_numpy()
    if (folder / BOXES).exists():
        X["boxes"] = _check_boxes(folder / BOXES, read_table(folder / BOXES, BOX_COLUMNS), ids)
    return X


def _check_probes(path: Path, labels: pd.DataFrame) -> np.ndarray:
    values = pd.to_numeric(labels["probe"], errors="coerce")
    if values.isna().any() or not values.isin([0, 1]).all():
        raise DataError(f"{path}: probe must be 0 or 1")
    probes = values.to_numpy(np.int64)
    if (labels["label"].to_numpy(np.int64)[probes == 1] != 1).any():
        raise DataError(f"{path}: a probe is cut from a Lung Opacity film, so its label must be 1")
    return probes


def read_json(path: str | Path, missing: str = "") -> object:
    """A JSON file's value; DataError naming the file when it is absent (``missing`` says why it
    should be there) or not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found{f' ({missing})' if missing else ''}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err


def read_split_info(path: str | Path) -> dict:
    """``split.json``: {"split": "valid"|"test", "final": bool}."""
    info = read_json(path, "prepare writes it; it says which phase this split scores")
    if not isinstance(info, dict) or info.get("split") not in SCORED_SPLITS \
            or not isinstance(info.get("final"), bool):
        raise DataError(f"{path}: expected {{\"split\": \"valid\"|\"test\", \"final\": true|false}}, got {info!r}")
    return info


def load_reference_split(ref_dir: str | Path) -> dict:
    """Read a ``reference_data/<split>`` folder.

    Keys: ``ids``, ``labels`` (N,) int64, ``probes`` (N,) int64 (1 = off-box probe), ``boxes``,
    ``meta`` (indexed by id), ``images``, ``box_prior`` (H, W) float32 in [0, 1], ``split_info``.
    """
    folder = Path(ref_dir)
    meta = read_table(folder / META, META_COLUMNS)
    ids = meta["id"].reset_index(drop=True)
    images = read_array(folder / IMAGES, np.uint8, 3)
    _check_rows(folder, ids, **{IMAGES: images})
    label_table = read_table(folder / LABELS, REFERENCE_LABEL_COLUMNS)
    labels = _check_labels(folder / LABELS, label_table, ids)
    probes = _check_probes(folder / LABELS, label_table)
    boxes = _check_boxes(folder / BOXES, read_table(folder / BOXES, BOX_COLUMNS), ids)
    probe_ids = set(ids[probes == 1])
    if boxes["id"].isin(probe_ids).any():
        raise DataError(f"{folder / BOXES}: a probe has a box (probes are cut away from every box)")
    prior = read_array(folder / BOX_PRIOR, np.float32, 2)
    if prior.shape != images.shape[1:] or not np.isfinite(prior).all() or prior.min() < 0 or prior.max() > 1:
        raise DataError(f"{folder / BOX_PRIOR}: expected an {images.shape[1:]} map of values in [0, 1], "
                        f"got shape {prior.shape}")
    return {"ids": ids.tolist(), "labels": labels.to_numpy(), "probes": probes, "boxes": boxes,
            "meta": meta.set_index("id"), "images": images, "box_prior": prior,
            "split_info": read_split_info(folder / SPLIT_INFO)}


def boxes_by_id(boxes: pd.DataFrame) -> dict[str, np.ndarray]:
    """Group a boxes table into {id: (K, 4) array of x, y, width, height}."""
    codes, ids = pd.factorize(boxes["id"])  # ids in order of first appearance
    order = np.argsort(codes, kind="stable")
    coords = boxes[["x", "y", "width", "height"]].to_numpy(np.float64)[order]
    return dict(zip(ids, np.split(coords, np.flatnonzero(np.diff(codes[order])) + 1)))


def first_ids(ids, bad: np.ndarray, limit: int = 3) -> str:
    """The first ``limit`` ids where ``bad`` is true, for a message."""
    return ", ".join(str(ids[i]) for i in np.flatnonzero(bad)[:limit])


def check_heatmaps(maps: np.ndarray, ids, shape: tuple[int, int], what: str, images: str = "images") -> None:
    """The rules every heatmap meets, wherever it comes from: one (H, W) map per id, finite and
    non-negative. DataError otherwise, beginning with ``what`` (e.g. "Model.explain returned") and
    naming the first ids at fault among the ``images`` (e.g. "valid images")."""
    expected = (len(ids), *shape)
    if maps.shape != expected:
        raise DataError(f"{what} heatmaps of shape {maps.shape} for {len(ids)} {images}; expected {expected}")
    bad = ~np.isfinite(maps).all(axis=(1, 2))
    if bad.any():
        raise DataError(f"{what} NaN or infinite heatmaps for {bad.sum()} {images} (first ids: {first_ids(ids, bad)})")
    negative = (maps < 0).any(axis=(1, 2))
    if negative.any():
        raise DataError(f"{what} negative heatmap values for {negative.sum()} {images} (min {maps.min():.4g}; "
                        f"first ids: {first_ids(ids, negative)})")


def _npz_headers(path: Path, name: str, absent: str) -> dict:
    """The .npy headers of an ingestion .npz (nothing loaded); DataError naming ``name`` otherwise."""
    if not path.is_file():
        raise DataError(f"{name}: {absent}")
    try:
        return npz_headers(path)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{name}: not a readable .npz archive ({err})") from err


def _npz_arrays(path: Path, name: str, keys) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an .npz whose headers were checked, without pickles."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in keys}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{name}: not a readable .npz archive ({err})") from err


def read_heatmaps(path: str | Path, shape: tuple[int, int], limit: int | None = None,
                  name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``heatmaps.npz`` as ingestion stores it: (ids (K,) str, maps (K, H, W) float16 in [0, 1]), each
    id once; DataError naming the file (``name``, default its path) otherwise. A file whose headers hold
    more than ``limit`` maps (the predicted positives) is refused before any map is loaded."""
    path = Path(path)
    name = name or str(path)
    headers = _npz_headers(path, name, "file not found")
    if "ids" not in headers or "maps" not in headers:
        raise DataError(f"{name}: expected arrays 'ids' and 'maps', found {sorted(headers)}")
    (ids_shape, _), (maps_shape, maps_dtype) = headers["ids"], headers["maps"]
    count = max(ids_shape[:1] + maps_shape[:1], default=0)
    if limit is not None and count > limit:
        raise DataError(f"{name}: {count} heatmaps for {limit} predicted positive(s) in {PREDICTIONS}; "
                        f"refused before loading them")
    if len(maps_shape) != 3 or maps_shape[1:] != tuple(shape):
        raise DataError(f"{name}: maps must have shape (K, {shape[0]}, {shape[1]}) like the images; got {maps_shape}")
    if maps_dtype != np.float16:
        raise DataError(f"{name}: maps must be float16 (each map divided by its maximum), got dtype {maps_dtype}")
    ids, maps = _npz_arrays(path, name, ("ids", "maps")).values()
    if ids.ndim != 1 or len(ids) != len(maps):
        raise DataError(f"{name}: {ids.size} ids for {len(maps)} maps")
    ids = ids.astype(str)
    duplicated = pd.Index(ids).duplicated()
    if duplicated.any():
        raise DataError(f"{name}: duplicate id(s) {first_ids(ids, duplicated)}")
    check_heatmaps(maps, ids, tuple(shape), f"{name}:")
    above = (maps > 1).any(axis=(1, 2))
    if above.any():
        raise DataError(f"{name}: heatmap values above 1 for {above.sum()} images (each map is divided by its "
                        f"maximum; first ids: {first_ids(ids, above)})")
    return ids, maps


def read_evidence(path: str | Path, shape: tuple[int, int], known_ids, name: str | None = None) -> dict:
    """``evidence.npz`` as ingestion stores it: {"ids" (K,) str, "cells" (M, 4) int64, "base" (K,) float32,
    "drops" (K, M) float32}, each id once and one of ``known_ids`` (the predicted ids), every cell inside an
    image of ``shape``, probabilities in [0, 1] and drops in [-1, 1]; DataError naming the file otherwise.
    A file whose headers hold more images than ``known_ids`` is refused before it is loaded."""
    path = Path(path)
    name = name or str(path)
    headers = _npz_headers(path, name, "file not found (ingestion measures the evidence of every run)")
    expected = ("base", "cells", "drops", "ids")
    if sorted(headers) != list(expected):
        raise DataError(f"{name}: expected arrays {list(expected)}, found {sorted(headers)}")
    shapes = {key: shape for key, (shape, _dtype) in headers.items()}
    known = set(known_ids)
    k = shapes["ids"][0] if len(shapes["ids"]) == 1 else -1
    m = shapes["cells"][0] if len(shapes["cells"]) == 2 and shapes["cells"][1] == 4 else -1
    if k < 0 or m < 1 or shapes["base"] != (k,) or shapes["drops"] != (k, m) or k > len(known):
        raise DataError(f"{name}: arrays {shapes}; expected ids (K,), base (K,), cells (M, 4) and drops (K, M), "
                        f"K at most the {len(known)} predicted ids")
    found = _npz_arrays(path, name, expected)
    ids = found["ids"].astype(str)
    if pd.Index(ids).duplicated().any() or not set(ids) <= known:
        raise DataError(f"{name}: ids must be distinct predicted ids")
    cells = found["cells"]
    if not np.issubdtype(cells.dtype, np.integer) or (cells[:, :2] < 0).any() or (cells[:, 2] > shape[0]).any() \
            or (cells[:, 3] > shape[1]).any() or (cells[:, 2:] <= cells[:, :2]).any():
        raise DataError(f"{name}: cells must be integer (top, left, bottom, right) rectangles inside {shape}")
    base, drops = found["base"].astype(np.float64), found["drops"].astype(np.float64)
    if not (np.isfinite(base).all() and np.isfinite(drops).all()) or (base < 0).any() or (base > 1).any() \
            or (np.abs(drops) > 1).any():
        raise DataError(f"{name}: probabilities must lie in [0, 1] and drops in [-1, 1]")
    return {"ids": ids, "cells": cells.astype(np.int64), "base": base, "drops": drops}

