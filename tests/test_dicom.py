"""RSNA DICOM reading and writing: real JPEG Baseline files, round trips, corrupt inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from hygieia.errors import DataError
from hygieia.rsna.dicom import HEADER_KEYS, parse_age, read_dicom, write_jpeg_dicom
from tests.conftest import shared_path

HEADER = {"patient_id": "0a1b2c3d-0000-4000-8000-000000000001", "age": 51, "sex": "F",
          "view_position": "AP", "pixel_spacing": (0.168, 0.168)}


def _image(seed: int = 0) -> np.ndarray:
    """A smooth 1024x1024 test image with some texture (JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:1024, 0:1024] / 1024.0
    smooth = 60 + 120 * np.sin(3 * x) * np.cos(2 * y) ** 2 + rng.normal(0, 3, (1024, 1024))
    return np.clip(smooth, 0, 255).astype(np.uint8)


def test_real_rsna_dicoms_decode():
    folder = shared_path("data", "rsna_real_mini", "stage_2_train_images")
    for path in sorted(folder.glob("*.dcm"))[:3]:
        pixels, header = read_dicom(path)
        assert pixels.shape == (1024, 1024) and pixels.dtype == np.uint8
        assert pixels.std() > 10  # a radiograph, not a blank frame
        assert header["patient_id"] == path.stem
        assert isinstance(header["age"], int) and 0 < header["age"] < 120
        assert header["sex"] in ("M", "F") and header["view_position"] in ("AP", "PA")
        assert len(header["pixel_spacing"]) == 2 and 0.1 < header["pixel_spacing"][0] < 0.2


def test_real_siim_dicom_decodes_without_age_warning():
    path = shared_path("data", "real_cxr", "siim_chest_jpeg_baseline.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels, header = read_dicom(path)
    assert pixels.shape == (1024, 1024) and pixels.dtype == np.uint8
    assert header == {"patient_id": "16d7f894-55d7-4d95-8957-d18987f0e981", "age": 62, "sex": "M",
                      "view_position": "PA", "pixel_spacing": (0.168, 0.168)}


def test_write_read_round_trip_and_deterministic_bytes(tmp_path):
    image = _image()
    first = write_jpeg_dicom(tmp_path / "a.dcm", image, HEADER)
    second = write_jpeg_dicom(tmp_path / "b.dcm", image, HEADER)
    assert first.read_bytes() == second.read_bytes()
    pixels, header = read_dicom(first)
    assert header == HEADER and set(header) == set(HEADER_KEYS)
    assert np.abs(pixels.astype(int) - image).mean() < 2.0
    ds = pydicom.dcmread(first)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel) == (1024, 1024, 8, 1)
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.Modality == "CR"
    assert ds.BodyPartExamined == "CHEST" and ds.ConversionType == "WSD"
    assert ds["PatientAge"].value == "51"  # stored as RSNA stores it


def test_written_header_has_the_real_files_elements(tmp_path):
    real = pydicom.dcmread(shared_path("data", "real_cxr", "siim_chest_jpeg_baseline.dcm"))
    ours = pydicom.dcmread(write_jpeg_dicom(tmp_path / "a.dcm", _image(), HEADER))
    assert {e.keyword for e in ours} == {e.keyword for e in real}
    assert {e.keyword for e in ours.file_meta} == {e.keyword for e in real.file_meta}


def test_monochrome1_is_inverted(tmp_path):
    image = _image()
    ds = pydicom.dcmread(write_jpeg_dicom(tmp_path / "a.dcm", image, HEADER))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    normal, _ = read_dicom(tmp_path / "a.dcm")
    inverted, _ = read_dicom(tmp_path / "m1.dcm")
    assert np.array_equal(inverted, 255 - normal)


@pytest.mark.parametrize("value, years", [("51", 51), ("051Y", 51), (" 7 ", 7), ("006M", 0), ("", None),
                                          (None, None)])
def test_parse_age(value, years):
    assert parse_age(value) == years


def test_parse_age_rejects_garbage():
    with pytest.raises(DataError, match="PatientAge"):
        parse_age("old")


def _corrupt(tmp_path, kind: str):
    good = write_jpeg_dicom(tmp_path / "good.dcm", _image(), HEADER)
    path = tmp_path / f"{kind}.dcm"
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("patientId,x,y\n")
    elif kind == "no_pixels":
        ds = pydicom.dcmread(good)
        del ds.PixelData
        ds.save_as(path)
    elif kind == "bad_jpeg":
        ds = pydicom.dcmread(good)
        stream = bytearray(ds.PixelData)
        stream[300:5000] = bytes(4700)
        ds.PixelData = bytes(stream)
        ds.save_as(path)
    elif kind == "sixteen_bit":
        ds = pydicom.dcmread(good)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelData = np.zeros((1024, 1024), np.uint16).tobytes()
        ds.save_as(path)
    return path


@pytest.mark.parametrize("kind, cause", [("truncated", "truncated"), ("text", "not a readable DICOM"),
                                         ("no_pixels", "no pixel data"), ("bad_jpeg", "cannot decode"),
                                         ("sixteen_bit", "8-bit")])
def test_corrupt_inputs_name_the_file_and_cause(tmp_path, kind, cause):
    path = _corrupt(tmp_path, kind)
    with pytest.raises(DataError, match=cause) as err:
        read_dicom(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as err:
        read_dicom(tmp_path / "absent.dcm")
    assert "absent.dcm" in str(err.value)


def test_write_rejects_wrong_shape(tmp_path):
    with pytest.raises(DataError, match="1024"):
        write_jpeg_dicom(tmp_path / "a.dcm", np.zeros((512, 512), np.uint8), HEADER)
