"""RSNA's two label tables, read and checked: ``stage_2_train_labels.csv`` and
``stage_2_detailed_class_info.csv``.

The labels table has one row per box (one row with empty box fields for a patient without
opacity). The class table is row-aligned with it, so it repeats a patient's class once per box
row: that repetition is expected; more class rows for a patient than label rows is a duplicate.
Errors name the file and the line (line 1 is the header).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hygieia.dataset import read_table
from hygieia.errors import DataError

LABELS_FILE = "stage_2_train_labels.csv"
CLASS_FILE = "stage_2_detailed_class_info.csv"
IMAGES_DIR = "stage_2_train_images"
PHANTOM_FILE = "hygieia_phantom.json"  # written by the phantom only: marks its downloads as synthetic
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
    ``boxes``: patientId, x, y, width, height (floats, original pixels);
    ``skipped``: {patientId, error} of the patients left out for bad rows (``skip_bad`` only);
    ``phantom``: the folder is Hygieia's synthetic phantom, not RSNA's download."""
    patients: pd.DataFrame
    boxes: pd.DataFrame
    skipped: list[dict] = field(default_factory=list)
    phantom: bool = False


def _line(index) -> int:
    return int(index) + 2


class Rejects:
    """Bad rows. Without ``skip`` the first one is an error naming the file and line; with it, every
    bad row's patient is recorded (first reason kept) and left out of both tables."""

    def __init__(self, skip: bool = False):
        self.skip = skip
        self.reasons: dict[str, str] = {}

    def check(self, path: Path, table: pd.DataFrame, mask: pd.Series, describe) -> None:
        """Reject the rows of ``table`` where ``mask`` holds; ``describe(row)`` says what is wrong."""
        rows = mask.index[mask.to_numpy()]
        if len(rows) and not self.skip:
            raise DataError(f"{path}: line {_line(rows[0])}: {describe(rows[0])}")
        for row in rows:
            self.add(table.at[row, "patientId"], f"{path}: line {_line(row)}: {describe(row)}")

    def add(self, patient_id: str, error: str) -> None:
        self.reasons.setdefault(patient_id, error)

    def drop(self, table: pd.DataFrame) -> pd.DataFrame:
        """``table`` without the rejected patients' rows (index kept: line numbers)."""
        return table[~table["patientId"].isin(list(self.reasons))]

    def skipped(self) -> list[dict]:
        return [{"patientId": pid, "error": error} for pid, error in self.reasons.items()]


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    table = read_table(path, columns, dtype=str, keep_default_na=False)
    table = table.apply(lambda column: column.str.strip())
    empty_id = table["patientId"] == ""
    if empty_id.any():
        raise DataError(f"{path}: line {_line(table.index[empty_id][0])}: empty patientId")
    return table


def _first(mask: pd.Series) -> int:
    return _line(mask.index[mask.to_numpy()][0])


def read_labels(path: str | Path, rejects: Rejects | None = None) -> pd.DataFrame:
    """``stage_2_train_labels.csv`` checked: numeric boxes inside 1024x1024 for Target 1, empty for
    Target 0, one Target per patient, no duplicate rows. Boxes are floats (NaN for Target 0).
    Bad rows go to ``rejects`` (default: the first one raises DataError)."""
    path, rejects = Path(path), rejects or Rejects()
    table = _read_csv(path, LABELS_COLUMNS)
    rejects.check(path, table, ~table["Target"].isin(["0", "1"]),
                  lambda row: f"Target must be 0 or 1, got {table.at[row, 'Target']!r}")
    table = rejects.drop(table)
    target = table["Target"].astype(np.int64)
    raw = table[BOX_FIELDS]
    numbers = raw.apply(pd.to_numeric, errors="coerce")
    positive = target == 1
    rejects.check(path, table, positive & numbers.isna().any(axis=1),
                  lambda row: f"Target 1 needs numeric x, y, width, height; got {raw.loc[row].tolist()}")
    rejects.check(path, table, ~positive & (raw != "").any(axis=1),
                  lambda row: "Target 0 row has box fields (they must be empty)")
    x, y, w, h = (numbers[c] for c in BOX_FIELDS)
    outside = positive & ((x < 0) | (y < 0) | (w <= 0) | (h <= 0)
                          | (x + w > IMAGE_SIZE) | (y + h > IMAGE_SIZE))
    rejects.check(path, table, outside, lambda row: f"box {numbers.loc[row].tolist()} is not inside the "
                                                    f"{IMAGE_SIZE}x{IMAGE_SIZE} image")
    rejects.check(path, table, table.duplicated(keep="first"),
                  lambda row: f"duplicate row (patient {table.at[row, 'patientId']})")
    rejects.check(path, table, target.groupby(table["patientId"]).transform("nunique") > 1,
                  lambda row: f"patient {table.at[row, 'patientId']} has both Target 0 and Target 1 rows")
    rejects.check(path, table, ~positive & table["patientId"].duplicated(),
                  lambda row: f"duplicate Target 0 row for patient {table.at[row, 'patientId']}")
    return rejects.drop(pd.concat([table[["patientId"]], numbers.astype(np.float64), target.rename("Target")],
                                  axis=1))


def read_class_info(path: str | Path, label_rows: pd.Series, rejects: Rejects | None = None) -> pd.DataFrame:
    """``stage_2_detailed_class_info.csv`` checked, one row per patient (patientId, class).

    ``label_rows`` counts each patient's rows in the labels table: a patient may repeat its class
    up to that many times (RSNA's file is row-aligned with the labels); a further row is a duplicate.
    Bad rows go to ``rejects`` (default: the first one raises DataError).
    """
    path, rejects = Path(path), rejects or Rejects()
    table = _read_csv(path, CLASS_COLUMNS)
    rejects.check(path, table, ~table["class"].isin(CLASSES),
                  lambda row: f"unknown class {table.at[row, 'class']!r}; expected one of {list(CLASSES)}")
    rejects.check(path, table, table.groupby("patientId")["class"].transform("nunique") > 1,
                  lambda row: f"patient {table.at[row, 'patientId']} has more than one class")
    occurrence = table.groupby("patientId").cumcount() + 1
    allowed = table["patientId"].map(label_rows).fillna(1)
    rejects.check(path, table, occurrence > allowed,
                  lambda row: f"duplicate row for patient {table.at[row, 'patientId']} "
                              f"(more rows than in {LABELS_FILE})")
    return rejects.drop(table).drop_duplicates("patientId")  # index kept: line numbers for later messages


def read_tables(rsna_dir: str | Path, skip_bad: bool = False) -> RsnaTables:
    """Both tables of an RSNA download (or the phantom), checked against each other. A bad row is a
    DataError naming file and line; with ``skip_bad`` its patient is left out and listed in ``skipped``."""
    rsna_dir, rejects = Path(rsna_dir), Rejects(skip_bad)
    labels_path, class_path = rsna_dir / LABELS_FILE, rsna_dir / CLASS_FILE
    labels = read_labels(labels_path, rejects)
    classes = read_class_info(class_path, labels["patientId"].value_counts(), rejects)
    labels = rejects.drop(labels)
    targets = labels.drop_duplicates("patientId")[["patientId", "Target"]]
    _check_same_patients(labels_path, targets["patientId"], class_path, classes["patientId"], rejects)
    targets, classes = rejects.drop(targets), rejects.drop(classes)
    patients = targets.merge(classes, on="patientId", how="left", validate="one_to_one")
    inconsistent = (patients["Target"] == 1) != (patients["class"] == OPACITY)
    for _, row in patients[inconsistent].iterrows():
        line = _line(labels.index[labels["patientId"] == row["patientId"]][0])
        error = (f"{labels_path}: line {line}: patient {row['patientId']} has Target {row['Target']} "
                 f"but class {row['class']!r} in {class_path.name} (Target 1 means {OPACITY!r})")
        if not skip_bad:
            raise DataError(error)
        rejects.add(row["patientId"], error)
    patients, labels = rejects.drop(patients), rejects.drop(labels)
    boxes = labels[labels["Target"] == 1][["patientId", *BOX_FIELDS]].reset_index(drop=True)
    return RsnaTables(patients=patients[["patientId", "class", "Target"]].reset_index(drop=True), boxes=boxes,
                      skipped=rejects.skipped(), phantom=(rsna_dir / PHANTOM_FILE).is_file())


def _check_same_patients(path_a: Path, ids_a: pd.Series, path_b: Path, ids_b: pd.Series, rejects: Rejects) -> None:
    for path, ids, other_path, other in ((path_a, ids_a, path_b, ids_b), (path_b, ids_b, path_a, ids_a)):
        missing = ~ids.isin(set(other))
        if missing.any() and not rejects.skip:
            raise DataError(f"{other_path}: patient {ids[missing].iloc[0]} (line {_first(missing)} of "
                            f"{path.name}) is missing; {int(missing.sum())} patient(s) missing in all")
        for row in missing.index[missing.to_numpy()]:
            rejects.add(ids[row], f"{other_path}: patient {ids[row]} (line {_line(row)} of {path.name}) is missing")
