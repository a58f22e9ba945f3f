"""RSNA's DICOM files: 1024x1024 8-bit MONOCHROME2 radiographs, JPEG Baseline encapsulated.

``read_dicom`` decodes one file to pixels and the few header fields the competition uses;
``write_jpeg_dicom`` writes a file with the same elements as RSNA's (for the phantom).
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

from hygieia.errors import DataError
from hygieia.files import write_bytes

HEADER_KEYS = ("patient_id", "age", "sex", "view_position", "pixel_spacing")
IMAGE_SIZE = 1024
DEFAULT_QUALITY = 90
# RSNA stores PatientAge as a bare number ("51") where DICOM wants "051Y"; pydicom warns about it.
_AGE_WARNING = "Invalid value for VR AS"
# pydicom only warns when a file ends inside an element; a truncated radiograph is an error here.
_TRUNCATED_WARNING = "End of file reached"
# pydicom's pixel decoders report a corrupt or unsupported stream with any of these.
_DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, OSError, AttributeError, KeyError,
                  TypeError, EOFError, struct.error)


def read_dicom(path: str | Path) -> tuple[np.ndarray, dict]:
    """Pixels as an (H, W) uint8 array (MONOCHROME1 inverted) and the header fields of ``HEADER_KEYS``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_AGE_WARNING, category=UserWarning)
        warnings.filterwarnings("error", message=_TRUNCATED_WARNING, category=UserWarning)
        try:
            ds = pydicom.dcmread(path)
        except UserWarning as err:
            raise DataError(f"{path}: truncated DICOM file ({err})") from err
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error) as err:
            raise DataError(f"{path}: not a readable DICOM file ({err})") from err
        pixels = _pixels(path, ds)
        header = _header(path, ds)
    return pixels, header


def _pixels(path: Path, ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        raise DataError(f"{path}: the DICOM file holds no pixel data")
    bits = ds.get("BitsAllocated")
    if bits != 8:
        raise DataError(f"{path}: expected 8-bit pixels, found BitsAllocated={bits}")
    try:
        pixels = ds.pixel_array
    except _DECODE_ERRORS as err:
        raise DataError(f"{path}: cannot decode the pixel data "
                        f"(transfer syntax {ds.file_meta.get('TransferSyntaxUID', 'unknown')}): {err}") from err
    if pixels.ndim != 2:
        raise DataError(f"{path}: expected a 2-d grayscale image, got shape {pixels.shape}")
    if pixels.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 pixels, got {pixels.dtype}")
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = 255 - pixels
    return np.ascontiguousarray(pixels)


def _header(path: Path, ds: Dataset) -> dict:
    spacing = ds.get("PixelSpacing")
    try:
        pixel_spacing = tuple(float(v) for v in spacing) if spacing else None
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: unreadable PixelSpacing {spacing!r}") from err
    return {
        "patient_id": str(ds.get("PatientID", "")) or None,
        "age": parse_age(ds.get("PatientAge"), path),
        "sex": str(ds.get("PatientSex", "")) or None,
        "view_position": str(ds.get("ViewPosition", "")) or None,
        "pixel_spacing": pixel_spacing,
    }


def parse_age(value, source: str | Path = "PatientAge") -> int | None:
    """Years from a DICOM age: RSNA's "51", standard "051Y"; months/weeks/days count as 0 years."""
    if value is None or str(value).strip() == "":
        return None
    match = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD]?)\s*", str(value).upper())
    if not match:
        raise DataError(f"{source}: unreadable PatientAge {value!r}")
    number, unit = int(match.group(1)), match.group(2) or "Y"
    return number if unit == "Y" else 0


def encode_jpeg(pixels: np.ndarray, quality: int = DEFAULT_QUALITY) -> bytes:
    """Baseline JPEG bytes of an 8-bit grayscale image (deterministic)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def dicom_bytes(pixels: np.ndarray, header: dict, quality: int = DEFAULT_QUALITY) -> bytes:
    """The bytes of an RSNA-style JPEG Baseline DICOM file for ``pixels`` and ``header``."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"expected ({IMAGE_SIZE}, {IMAGE_SIZE}) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    patient_id = str(header["patient_id"])
    view = str(header["view_position"])
    uid = {part: generate_uid(entropy_srcs=[patient_id, part]) for part in ("sop", "study", "series")}

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid["sop"]
    meta.TransferSyntaxUID = JPEGBaseline8Bit

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid["sop"]
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {view}"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = str(header["sex"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_AGE_WARNING, category=UserWarning)
        ds.PatientAge = str(int(header["age"]))
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = uid["study"]
    ds.SeriesInstanceUID = uid["series"]
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [f"{float(v):.6g}" for v in header["pixel_spacing"]]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([encode_jpeg(pixels, quality)])
    ds["PixelData"].VR = "OB"

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_jpeg_dicom(path: str | Path, pixels: np.ndarray, header: dict, quality: int = DEFAULT_QUALITY) -> Path:
    """Write ``pixels`` (1024x1024 uint8) as an RSNA-style JPEG Baseline DICOM file, atomically.

    ``header`` holds patient_id, age, sex, view_position and pixel_spacing (row, column) in mm.
    The bytes depend only on the arguments (UIDs are derived from the patient id)."""
    return write_bytes(path, dicom_bytes(pixels, header, quality))
