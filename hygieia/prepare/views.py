"""Each patient's view position (AP or PA), needed before selection to balance the hidden splits:
from a DICOM header table when RSNA_DIR has one, else from the DICOM files' headers (pixels unread)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

from hygieia.dataset import read_table
from hygieia.errors import DataError
from hygieia.rsna.tables import IMAGES_DIR

HEADERS_FILE = "stage_2_train_dicom_headers.csv.gz"  # optional: one row per patient (PatientID, ViewPosition)
VIEWS = ("AP", "PA")


def patient_views(rsna_dir: str | Path, patient_ids, skip_bad: bool = False) -> tuple[pd.Series, list[dict]]:
    """(view by patientId, skipped {patientId, error}). A missing or unreadable view is a DataError
    naming the file; with ``skip_bad`` that patient is left out and listed instead."""
    rsna_dir = Path(rsna_dir)
    if (rsna_dir / HEADERS_FILE).is_file():
        return _views_from_table(rsna_dir / HEADERS_FILE, patient_ids, skip_bad)
    views, skipped = {}, []
    for pid in patient_ids:
        try:
            views[pid] = _view_from_dicom(rsna_dir / IMAGES_DIR / f"{pid}.dcm")
        except DataError as err:
            if not skip_bad:
                raise
            skipped.append({"patientId": pid, "error": str(err)})
    return pd.Series(views, dtype=object), skipped


def _view_from_dicom(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ViewPosition"])
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable DICOM file ({err})") from err
    view = str(header.get("ViewPosition", "")).strip().upper()
    if view not in VIEWS:
        raise DataError(f"{path}: ViewPosition must be AP or PA, got {view!r}")
    return view


def _views_from_table(path: Path, patient_ids, skip_bad: bool) -> tuple[pd.Series, list[dict]]:
    table = read_table(path, ["PatientID", "ViewPosition"], dtype=str, keep_default_na=False)
    views = table.drop_duplicates("PatientID").set_index("PatientID")["ViewPosition"].str.strip().str.upper()
    views = views.reindex(list(patient_ids))
    bad = views[~views.isin(VIEWS)]
    skipped = [{"patientId": pid, "error": f"{path}: ViewPosition of patient {pid} must be AP or PA, "
                                           f"got {'nothing' if pd.isna(view) else repr(view)}"}
               for pid, view in bad.items()]
    if skipped and not skip_bad:
        raise DataError(skipped[0]["error"])
    return views[views.isin(VIEWS)], skipped
