"""The RSNA-format phantom: synthetic chest radiographs laid out exactly as an RSNA download.

    OUT_DIR/stage_2_train_images/<patientId>.dcm     1024x1024 JPEG Baseline DICOM
    OUT_DIR/stage_2_train_labels.csv                 patientId,x,y,width,height,Target
    OUT_DIR/stage_2_detailed_class_info.csv          patientId,class
    OUT_DIR/phantom_markers.csv                      only with confounder="marker"
    OUT_DIR/hygieia_phantom.json                     the phantom's arguments: marks the folder synthetic

Patients (ids, classes, headers, boxes) come from one random stream of the seed; each image from
its own stream (seed, patient index), so images do not depend on the worker count. The optional
marker is drawn last, from a third, independent stream: for a seed, everything but the marker
pixels is identical whatever the confounder setting.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hygieia.errors import HygieiaError
from hygieia.files import write_json, write_text
from hygieia.rsna import phantom_anatomy as anatomy
from hygieia.rsna import phantom_stats as stats
from hygieia.rsna.dicom import write_jpeg_dicom
from hygieia.rsna.markers import MARKER_POSITIONS, draw_marker, place_marker
from hygieia.rsna.tables import PHANTOM_FILE

IMAGES_DIR = "stage_2_train_images"
LABELS_CSV = "stage_2_train_labels.csv"
CLASS_INFO_CSV = "stage_2_detailed_class_info.csv"
MARKERS_CSV = "phantom_markers.csv"
OPACITY, NORMAL, NOT_NORMAL = "Lung Opacity", "Normal", "No Lung Opacity / Not Normal"
CLASSES = (NORMAL, OPACITY, NOT_NORMAL)
CONFOUNDERS = ("none", "marker")
# Random streams: SeedSequence([seed, stream, ...]).
_TABLE, _IMAGE, _MARKER_CHOICE, _MARKER = 0, 1, 2, 3
_SIZE = anatomy.SIZE


@dataclass(frozen=True)
class Patient:
    index: int
    patient_id: str
    label: str                      # one of CLASSES
    age: int
    sex: str
    view_position: str
    pixel_spacing: float
    boxes: tuple[tuple[int, int, int, int], ...]  # (x, y, width, height) in 1024-pixel coordinates

    def header(self) -> dict:
        return {"patient_id": self.patient_id, "age": self.age, "sex": self.sex,
                "view_position": self.view_position, "pixel_spacing": (self.pixel_spacing,) * 2}


@dataclass(frozen=True)
class Marker:
    text: str
    x: int
    y: int
    height: int


def class_counts(patients: int) -> dict[str, int]:
    """round(N * p) patients per class, the largest class absorbing the rounding difference."""
    counts = {label: round(patients * stats.CLASS_PROPORTIONS[label]) for label in CLASSES}
    largest = max(CLASSES, key=lambda label: stats.CLASS_PROPORTIONS[label])
    counts[largest] += patients - sum(counts.values())
    return counts


def _choice(rng: np.random.Generator, table: dict):
    keys = list(table)
    probs = np.array([table[k] for k in keys], dtype=float)
    return keys[rng.choice(len(keys), p=probs / probs.sum())]


def _box_on_side(rng: np.random.Generator, side: str) -> tuple[int, int, int, int]:
    rows = np.array(stats.BOX_CLUSTERS[side])
    row = rows[rng.choice(len(rows), p=rows[:, 0] / rows[:, 0].sum())]
    cx, cy, w, h = row[1:5] + row[5:9] * rng.standard_normal(4)
    min_w, min_h, max_w, max_h = stats.BOX_SIZE_LIMITS
    w, h = np.clip(w, min_w, max_w) * _SIZE, np.clip(h, min_h, max_h) * _SIZE
    x = np.clip(cx * _SIZE - w / 2, 0, _SIZE - w)
    y = np.clip(cy * _SIZE - h / 2, 0, _SIZE - h)
    return int(round(x)), int(round(y)), int(round(w)), int(round(h))


def _overlap(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])


def sample_boxes(rng: np.random.Generator) -> tuple[tuple[int, int, int, int], ...]:
    """1-4 boxes: a side pattern ('LR', 'L', ...) and a shape per box, as in RSNA's positives."""
    boxes = []
    for side in _choice(rng, stats.BOX_SIDE_PATTERNS):
        for _ in range(20):  # boxes on the same side rarely overlap much in RSNA
            box = _box_on_side(rng, side)
            if all(_overlap(box, other) < 0.3 for other in boxes):
                break
        boxes.append(box)
    return tuple(boxes)


def sample_patients(patients: int, seed: int = 0) -> list[Patient]:
    """The phantom's patient table: exact class counts, RSNA-like headers and boxes."""
    if patients < 1:
        raise HygieiaError(f"the phantom needs at least 1 patient, got {patients}")
    rng = np.random.default_rng([seed, _TABLE])
    labels = [label for label, count in class_counts(patients).items() for _ in range(count)]
    labels = [labels[i] for i in rng.permutation(patients)]
    table = []
    for index, label in enumerate(labels):
        patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        view = _choice(rng, stats.VIEW_GIVEN_CLASS[label])
        table.append(Patient(
            index=index, patient_id=patient_id, label=label,
            age=int(stats.AGE_PERCENTILES_GIVEN_CLASS[label][rng.integers(100)]),
            sex=_choice(rng, stats.SEX_GIVEN_CLASS[label]), view_position=view,
            pixel_spacing=float(_choice(rng, stats.PIXEL_SPACING_GIVEN_VIEW[view])),
            boxes=sample_boxes(rng) if label == OPACITY else ()))
    return table


def render_patient(patient: Patient, seed: int = 0) -> np.ndarray:
    """The patient's radiograph without any marker: (1024, 1024) uint8.

    Anatomy, opacities, other findings and exposure use separate streams, so the same patient
    without its boxes differs only inside them."""
    streams = np.random.default_rng([seed, _IMAGE, patient.index]).spawn(4)
    anatomy_rng, opacity_rng, findings_rng, exposure_rng = streams
    attenuation, lung_air = anatomy.synthesize_attenuation(anatomy_rng, patient.view_position, patient.sex)
    for box in patient.boxes:
        anatomy.add_opacity(attenuation, lung_air, opacity_rng, box, opacity_rng.uniform(0.15, 0.45))
    add_findings(attenuation, lung_air, patient, findings_rng)
    return anatomy.to_pixels(attenuation, exposure_rng)


def add_findings(attenuation: np.ndarray, lung_air: np.ndarray, patient: Patient,
                 rng: np.random.Generator) -> None:
    """Nodules and devices on "Not Normal" films; lines on some portable films with opacities."""
    if patient.label == NOT_NORMAL:
        findings = rng.integers(1, 4)  # 1: nodules, 2: device, 3: both
        if findings & 1:
            for _ in range(rng.integers(1, 4)):
                anatomy.add_nodule(attenuation, rng, lung_air)
        if findings & 2:
            anatomy.add_device(attenuation, rng)
    elif patient.label == OPACITY and patient.view_position == "AP" and rng.random() < 0.3:
        anatomy.add_device(attenuation, rng)  # inpatients' portable films often show lines


def plan_markers(patients: list[Patient], seed: int, strength: float, position: str) -> list[Marker | None]:
    """Markers on round(strength * n) Lung Opacity patients and round((1 - strength) * n) others."""
    if not 0.0 <= strength <= 1.0:
        raise HygieiaError(f"confounder strength must be in [0, 1], got {strength}")
    if position not in MARKER_POSITIONS:
        raise HygieiaError(f"marker position must be one of {MARKER_POSITIONS}, got {position!r}")
    rng = np.random.default_rng([seed, _MARKER_CHOICE])
    chosen = set()
    for group, share in ((True, strength), (False, 1.0 - strength)):
        members = [p.index for p in patients if (p.label == OPACITY) == group]
        chosen.update(rng.permutation(members)[:round(share * len(members))].tolist())
    plan = []
    for patient in patients:
        marker = None
        if patient.index in chosen:
            marker = Marker(*place_marker(np.random.default_rng([seed, _MARKER, patient.index]), position,
                                          boxes=patient.boxes))
        plan.append(marker)
    return plan


def _make_image(task) -> tuple[int, int, int, int] | None:
    """Render, mark and write one patient's DICOM file; returns the marker's box."""
    patient, marker, seed, images_dir = task
    pixels = render_patient(patient, seed)
    box = draw_marker(pixels, marker.text, marker.x, marker.y, marker.height) if marker else None
    write_jpeg_dicom(Path(images_dir) / f"{patient.patient_id}.dcm", pixels, patient.header())
    return box


def _label_tables(patients: list[Patient]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for p in sorted(patients, key=lambda p: p.patient_id):
        for box in p.boxes or [(None,) * 4]:
            rows.append((p.patient_id, *box, int(p.label == OPACITY), p.label))
    table = pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target", "class"])
    table[["x", "y", "width", "height"]] = table[["x", "y", "width", "height"]].astype(float)
    return table.drop(columns="class"), table[["patientId", "class"]]


def _csv(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, lineterminator="\n")


def generate_phantom(out_dir: str | Path, patients: int, seed: int = 0, confounder: str = "none",
                     strength: float = 0.8, marker_position: str = "corner", progress: bool = True,
                     workers: int = 1) -> Path:
    """Write an RSNA-format phantom of ``patients`` patients to ``out_dir``; returns ``out_dir``.

    ``confounder="marker"`` burns a text marker into ``strength`` of the Lung Opacity images and
    ``1 - strength`` of the others (``marker_position`` "corner", "lung" or "offbox": over the lungs, away
    from every box) and writes phantom_markers.csv. The same seed gives the same bytes for any ``workers``."""
    if confounder not in CONFOUNDERS:
        raise HygieiaError(f"confounder must be one of {CONFOUNDERS}, got {confounder!r}")
    if workers < 1:
        raise HygieiaError(f"workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    table = sample_patients(patients, seed)
    plan = (plan_markers(table, seed, strength, marker_position) if confounder == "marker"
            else [None] * len(table))
    images_dir = out_dir / IMAGES_DIR
    if images_dir.is_dir() and any(images_dir.iterdir()):
        raise HygieiaError(f"{images_dir} already holds files; write the phantom to an empty folder")
    images_dir.mkdir(parents=True, exist_ok=True)
    tasks = [(p, m, seed, str(images_dir)) for p, m in zip(table, plan)]
    bar = dict(total=len(tasks), desc="phantom images", unit="img", disable=not progress)
    if workers == 1:
        boxes = [_make_image(task) for task in tqdm(tasks, **bar)]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            boxes = list(tqdm(pool.map(_make_image, tasks, chunksize=8), **bar))

    labels, classes = _label_tables(table)
    write_text(out_dir / LABELS_CSV, _csv(labels))
    write_text(out_dir / CLASS_INFO_CSV, _csv(classes))
    if confounder == "marker":
        write_text(out_dir / MARKERS_CSV, _csv(_marker_table(table, plan, boxes)))
    write_json(out_dir / PHANTOM_FILE, {"generator": "hygieia phantom", "patients": patients, "seed": seed,
                                        "confounder": confounder})
    return out_dir


def _marker_table(patients: list[Patient], plan: list[Marker | None], boxes) -> pd.DataFrame:
    rows = []
    for patient, marker, box in zip(patients, plan, boxes):
        rows.append((patient.patient_id, int(marker is not None), marker.text if marker else "",
                     *(box if box else (None,) * 4)))
    table = pd.DataFrame(rows, columns=["patientId", "has_marker", "text", "x", "y", "width", "height"])
    table[["x", "y", "width", "height"]] = table[["x", "y", "width", "height"]].astype("Int64")
    return table.sort_values("patientId", kind="stable")
