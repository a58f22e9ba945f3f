"""Each radiograph decoded once, in parallel: the crop, the whole-image version and the network's
224×224 input all come from the same pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hygieia.boxes import boxes_in_window, scale_boxes
from hygieia.errors import DataError
from hygieia.prepare.crops import crop_image, resize_image
from hygieia.prepare.features import feature_input
from hygieia.rsna.dicom import read_dicom
from hygieia.rsna.tables import IMAGE_SIZE


@dataclass
class Job:
    """One radiograph to decode: its file, its window (x0, y0, side) and its boxes (K, 4), original pixels."""
    patient_id: str
    path: Path
    window: tuple[int, int, int]
    boxes: np.ndarray


@dataclass
class Decoded:
    """What a radiograph gives: crop, optional whole image, network input, boxes in crop / whole-image
    pixels, header fields (``features`` are filled in by the caller). ``error`` is set instead when the
    file is bad."""
    patient_id: str
    window: tuple[int, int, int] | None = None
    crop: np.ndarray | None = None
    full: np.ndarray | None = None
    net_input: np.ndarray | None = None
    crop_boxes: np.ndarray | None = None
    full_boxes: np.ndarray | None = None
    header: dict | None = None
    features: np.ndarray | None = None
    error: str | None = None


class DecodeJobs:
    """A map-style dataset (for ``torch.utils.data.DataLoader``) decoding ``jobs``; a bad file
    becomes a ``Decoded`` with ``error`` so that the caller decides whether to stop or skip."""

    def __init__(self, jobs: list[Job], crop: int, full_size: int | None):
        self.jobs, self.crop, self.full_size = jobs, crop, full_size

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> Decoded:
        job = self.jobs[index]
        try:
            return decode_job(job, self.crop, self.full_size)
        except DataError as err:
            return Decoded(job.patient_id, error=str(err))


def decode_job(job: Job, crop: int, full_size: int | None) -> Decoded:
    pixels, header = read_dicom(job.path)
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{job.path}: expected a {IMAGE_SIZE}x{IMAGE_SIZE} radiograph, got {pixels.shape}")
    if header["patient_id"] is not None and header["patient_id"] != job.patient_id:
        raise DataError(f"{job.path}: PatientID {header['patient_id']!r} does not match the file name")
    decoded = Decoded(job.patient_id, window=job.window, crop=crop_image(pixels, job.window, crop),
                      net_input=feature_input(pixels),
                      crop_boxes=boxes_in_window(job.boxes, job.window, crop),
                      header={key: header[key] for key in ("age", "sex", "view_position")})
    if full_size:
        decoded.full = resize_image(pixels, full_size)
        decoded.full_boxes = scale_boxes(job.boxes, pixels.shape, full_size)
    return decoded


def collate(items: list[Decoded]) -> list[Decoded]:
    """Keep a batch as a list: the network inputs are stacked by the caller."""
    return items
