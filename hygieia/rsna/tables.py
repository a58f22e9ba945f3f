"""RSNA's two label tables, read and checked: ``stage_2_train_labels.csv`` and
``stage_2_detailed_class_info.csv``.

The labels table has one row per box (one row with empty box fields for a patient without
opacity). The class table is row-aligned with it, so it repeats a patient's class once per box
row: that repetition is expected; more class rows for a patient than label rows is a duplicate.
Errors name the file and the line (line 1 is the header).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hygieia.errors import DataError

LABELS_FILE = "stage_2_train_labels.csv"
CLASS_FILE = "stage_2_detailed_class_info.csv"
IMAGES_DIR = "stage_2_train_images"
LABELS_COLUMNS = ["patientId", "x", "y", "width", "height", "Target"]
CLASS_COLUMNS = ["patientId", "class"]
BOX_FIELDS = ["x", "y", "width", "height"]
NORMAL = "Normal"
OPACITY = "Lung Opacity"
NOT_NORMAL = "No Lung Opacity / Not Normal"
CLASSES = (NORMAL, OPACITY, NOT_NORMAL)
IMAGE_SIZE = 1024  # RSNA's radiographs are all 1024x1024


@dataclass
class RsnaTables:
    """``patients``: patientId, class, Target (one row per patient, in file order);
    ``boxes``: patientId, x, y, width, height (floats, original pixels)."""
    patients: pd.DataFrame
    boxes: pd.DataFrame


def _line(index) -> int:
    return int(index) + 2


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    table = table[columns].apply(lambda column: column.str.strip())
    empty_id = table["patientId"] == ""
    if empty_id.any():
        raise DataError(f"{path}: line {_line(table.index[empty_id][0])}: empty patientId")
    return table


def _first(mask: pd.Series) -> int:
    return _line(mask.index[mask.to_numpy()][0])


def read_labels(path: str | Path) -> pd.DataFrame:
    """``stage_2_train_labels.csv`` checked: numeric boxes inside 1024x1024 for Target 1, empty for
    Target 0, one Target per patient, no duplicate rows. Boxes are floats (NaN for Target 0)."""
    path = Path(path)
    table = _read_csv(path, LABELS_COLUMNS)
    if not table["Target"].isin(["0", "1"]).all():
        bad = ~table["Target"].isin(["0", "1"])
        raise DataError(f"{path}: line {_first(bad)}: Target must be 0 or 1, "
                        f"got {table['Target'][bad].iloc[0]!r}")
    target = table["Target"].astype(np.int64)
    raw = table[BOX_FIELDS]
    numbers = raw.apply(pd.to_numeric, errors="coerce")
    positive = target == 1
    non_numeric = positive & numbers.isna().any(axis=1)
    if non_numeric.any():
        row = non_numeric.index[non_numeric.to_numpy()][0]
        raise DataError(f"{path}: line {_line(row)}: Target 1 needs numeric x, y, width, height; "
                        f"got {raw.loc[row].tolist()}")
    stray = ~positive & (raw != "").any(axis=1)
    if stray.any():
        raise DataError(f"{path}: line {_first(stray)}: Target 0 row has box fields (they must be empty)")
    x, y, w, h = (numbers[c] for c in BOX_FIELDS)
    outside = positive & ((x < 0) | (y < 0) | (w <= 0) | (h <= 0)
                          | (x + w > IMAGE_SIZE) | (y + h > IMAGE_SIZE))
    if outside.any():
        row = outside.index[outside.to_numpy()][0]
        raise DataError(f"{path}: line {_line(row)}: box {numbers.loc[row].tolist()} is not inside the "
                        f"{IMAGE_SIZE}x{IMAGE_SIZE} image")
    duplicate = table.duplicated(keep="first")
    if duplicate.any():
        row = duplicate.index[duplicate.to_numpy()][0]
        raise DataError(f"{path}: line {_line(row)}: duplicate row (patient {table['patientId'][row]})")
    mixed = target.groupby(table["patientId"]).transform("nunique") > 1
    if mixed.any():
        raise DataError(f"{path}: line {_first(mixed)}: patient {table['patientId'][mixed].iloc[0]} has "
                        "both Target 0 and Target 1 rows")
    repeated_negative = ~positive & table["patientId"].duplicated()
    if repeated_negative.any():
        raise DataError(f"{path}: line {_first(repeated_negative)}: duplicate Target 0 row for patient "
                        f"{table['patientId'][repeated_negative].iloc[0]}")
    return pd.concat([table[["patientId"]], numbers.astype(np.float64), target.rename("Target")], axis=1)


def read_class_info(path: str | Path, label_rows: pd.Series) -> pd.DataFrame:
    """``stage_2_detailed_class_info.csv`` checked, one row per patient (patientId, class).

    ``label_rows`` counts each patient's rows in the labels table: a patient may repeat its class
    up to that many times (RSNA's file is row-aligned with the labels); a further row is a duplicate.
    """
    path = Path(path)
    table = _read_csv(path, CLASS_COLUMNS)
    unknown = ~table["class"].isin(CLASSES)
    if unknown.any():
        raise DataError(f"{path}: line {_first(unknown)}: unknown class {table['class'][unknown].iloc[0]!r}; "
                        f"expected one of {list(CLASSES)}")
    conflicting = table.groupby("patientId")["class"].transform("nunique") > 1
    if conflicting.any():
        raise DataError(f"{path}: line {_first(conflicting)}: patient {table['patientId'][conflicting].iloc[0]} "
                        "has more than one class")
    occurrence = table.groupby("patientId").cumcount() + 1
    allowed = table["patientId"].map(label_rows).fillna(1)
    excess = occurrence > allowed
    if excess.any():
        raise DataError(f"{path}: line {_first(excess)}: duplicate row for patient "
                        f"{table['patientId'][excess].iloc[0]} (more rows than in {LABELS_FILE})")
    return table.drop_duplicates("patientId")  # index kept: line numbers for later messages


def read_tables(rsna_dir: str | Path) -> RsnaTables:
    """Both tables of an RSNA download (or the phantom), checked against each other."""
    rsna_dir = Path(rsna_dir)
    labels_path, class_path = rsna_dir / LABELS_FILE, rsna_dir / CLASS_FILE
    labels = read_labels(labels_path)
    classes = read_class_info(class_path, labels["patientId"].value_counts())
    targets = labels.drop_duplicates("patientId")[["patientId", "Target"]]
    _check_same_patients(labels_path, targets["patientId"], class_path, classes["patientId"])
    patients = targets.merge(classes, on="patientId", how="left", validate="one_to_one")
    inconsistent = (patients["Target"] == 1) != (patients["class"] == OPACITY)
    if inconsistent.any():
        row = patients[inconsistent].iloc[0]
        line = _line(labels.index[labels["patientId"] == row["patientId"]][0])
        raise DataError(f"{labels_path}: line {line}: patient {row['patientId']} has Target {row['Target']} "
                        f"but class {row['class']!r} in {class_path.name} (Target 1 means {OPACITY!r})")
    boxes = labels[labels["Target"] == 1][["patientId", *BOX_FIELDS]].reset_index(drop=True)
    return RsnaTables(patients=patients[["patientId", "class", "Target"]], boxes=boxes)


def _check_same_patients(path_a: Path, ids_a: pd.Series, path_b: Path, ids_b: pd.Series) -> None:
    for path, ids, other_path, other in ((path_a, ids_a, path_b, ids_b), (path_b, ids_b, path_a, ids_a)):
        missing = ~ids.isin(set(other))
        if missing.any():
            raise DataError(f"{other_path}: patient {ids[missing].iloc[0]} (line {_first(missing)} of "
                            f"{path.name}) is missing; {int(missing.sum())} patient(s) missing in all")
