"""The RSNA-format phantom: determinism, RSNA's file format, class and box statistics, markers."""

from __future__ import annotations

import argparse
import dataclasses
import re

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit

from hygieia.errors import HygieiaError
from hygieia.rsna import commands, phantom_stats
from hygieia.rsna.dicom import read_dicom
from hygieia.rsna.markers import draw_marker, marker_size, place_marker
from hygieia.rsna.phantom import (CLASS_INFO_CSV, CLASSES, IMAGES_DIR, LABELS_CSV, MARKERS_CSV, NOT_NORMAL,
                                  OPACITY, class_counts, generate_phantom, render_patient, sample_patients)
from tests.conftest import shared_path

N = 16
STRENGTH = 0.8


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return generate_phantom(tmp_path_factory.mktemp("plain"), N, seed=3, progress=False)


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    return generate_phantom(tmp_path_factory.mktemp("marked"), N, seed=3, confounder="marker",
                            strength=STRENGTH, progress=False)


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_same_seed_same_bytes_whatever_the_worker_count(plain, tmp_path):
    again = generate_phantom(tmp_path / "again", N, seed=3, progress=False, workers=2)
    assert _files(again) == _files(plain)
    other = generate_phantom(tmp_path / "other", 4, seed=4, progress=False)
    assert not set(_files(other)) & {k for k in _files(plain) if k.endswith(".dcm")}


def test_layout_and_csv_format(plain):
    labels_text = (plain / LABELS_CSV).read_text()
    assert labels_text.startswith("patientId,x,y,width,height,Target\n")
    assert (plain / CLASS_INFO_CSV).read_text().startswith("patientId,class\n")
    assert not (plain / MARKERS_CSV).exists()
    for line in labels_text.splitlines()[1:]:  # "id,,,,,0" or "id,264.0,152.0,213.0,379.0,1" as RSNA's
        assert re.fullmatch(r"[0-9a-f-]{36},(,,,,0|\d+\.0,\d+\.0,\d+\.0,\d+\.0,1)", line), line
    labels = pd.read_csv(plain / LABELS_CSV)
    classes = pd.read_csv(plain / CLASS_INFO_CSV)
    assert len(labels) == len(classes) and (labels.patientId == classes.patientId).all()
    assert set(classes["class"]) <= set(CLASSES)
    assert ((classes["class"] == OPACITY) == (labels.Target == 1)).all()
    ids = labels.patientId.drop_duplicates()
    assert ids.is_monotonic_increasing and len(ids) == N
    assert sorted(p.stem for p in (plain / IMAGES_DIR).glob("*.dcm")) == sorted(ids)


def test_csv_headers_and_class_names_match_the_real_files(plain):
    real = shared_path("data", "rsna")
    for name in (LABELS_CSV, CLASS_INFO_CSV):
        real_header = (real / name).open().readline()
        assert (plain / name).open().readline() == real_header
    real_classes = set(pd.read_csv(real / CLASS_INFO_CSV)["class"])
    assert real_classes == set(CLASSES)


def test_dicom_files_read_back_with_their_headers(plain):
    labels = pd.read_csv(plain / LABELS_CSV).drop_duplicates("patientId")
    for patient_id in labels.patientId[:4]:
        path = plain / IMAGES_DIR / f"{patient_id}.dcm"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        pixels, header = read_dicom(path)
        assert pixels.shape == (1024, 1024) and pixels.dtype == np.uint8 and pixels.std() > 20
        assert header["patient_id"] == patient_id
        assert header["sex"] in ("M", "F") and header["view_position"] in ("AP", "PA")
        assert 0 < header["age"] < 100 and 0.1 < header["pixel_spacing"][0] < 0.2


def test_dicom_elements_match_a_real_rsna_file(plain):
    real = next(iter(sorted(shared_path("data", "rsna_real_mini", IMAGES_DIR).glob("*.dcm"))))
    ours = next(iter(sorted((plain / IMAGES_DIR).glob("*.dcm"))))
    real_keys = {e.keyword for e in pydicom.dcmread(real)}
    assert real_keys <= {e.keyword for e in pydicom.dcmread(ours)}


@pytest.mark.parametrize("patients", [1, 7, 16, 30, 260, 25300])
def test_class_counts_are_exact_roundings(patients):
    counts = class_counts(patients)
    assert sum(counts.values()) == patients
    for label in (OPACITY, "Normal"):
        assert counts[label] == round(patients * phantom_stats.CLASS_PROPORTIONS[label])


def test_phantom_class_counts(plain):
    classes = pd.read_csv(plain / CLASS_INFO_CSV).drop_duplicates("patientId")
    assert classes["class"].value_counts().to_dict() == {k: v for k, v in class_counts(N).items() if v}


def test_patient_table_follows_rsna_statistics():
    table = sample_patients(2000, seed=1)
    assert len({p.patient_id for p in table}) == 2000
    positives = [p for p in table if p.label == OPACITY]
    normals = [p for p in table if p.label == "Normal"]
    ap_share = np.mean([p.view_position == "AP" for p in positives])
    assert abs(ap_share - phantom_stats.VIEW_GIVEN_CLASS[OPACITY]["AP"]) < 0.05
    assert np.mean([p.view_position == "AP" for p in normals]) < 0.3
    assert abs(np.mean([p.sex == "M" for p in table]) - 0.57) < 0.04
    assert 40 < np.mean([p.age for p in table]) < 52
    counts = np.bincount([len(p.boxes) for p in positives], minlength=5)
    assert counts[0] == 0 and counts[1:].sum() == len(positives) and len(counts) == 5
    assert counts[2] > counts[1] > counts[3]  # RSNA: two boxes most often, then one
    assert all(not p.boxes for p in table if p.label != OPACITY)
    for x, y, w, h in (box for p in positives for box in p.boxes):
        assert 0 <= x and 0 <= y and x + w <= 1024 and y + h <= 1024 and w >= 40 and h >= 40
    centres = np.array([x + w / 2 for p in positives for x, _, w, _ in p.boxes])
    assert 0.35 < np.mean(centres < 512) < 0.7  # both lungs


def test_opacity_is_a_brighter_textured_patch_only_inside_the_boxes():
    positives = [p for p in sample_patients(N, seed=3) if p.label == OPACITY]
    means = []
    for patient in positives:
        with_boxes = render_patient(patient, seed=3).astype(int)
        without = render_patient(dataclasses.replace(patient, boxes=()), seed=3).astype(int)
        changed = np.zeros((1024, 1024), bool)
        for x, y, w, h in patient.boxes:
            difference = with_boxes[y:y + h, x:x + w] - without[y:y + h, x:x + w]
            means.append(difference.mean())
            assert difference.mean() > 2 and difference.std() > 2  # brighter, and not a flat blob
            pad = int(0.25 * max(w, h)) + 16
            changed[max(y - pad, 0):y + h + pad, max(x - pad, 0):x + w + pad] = True
        assert np.array_equal(with_boxes[~changed], without[~changed])
    assert len(means) >= 3 and np.mean(means) > 8


def test_not_normal_patients_carry_other_findings():
    table = sample_patients(60, seed=5)
    patient = next(p for p in table if p.label == NOT_NORMAL)
    findings = render_patient(patient, seed=5).astype(int)
    as_normal = render_patient(dataclasses.replace(patient, label="Normal"), seed=5).astype(int)
    assert np.abs(findings - as_normal).max() > 30


def test_markers_on_the_expected_share(marked):
    markers = pd.read_csv(marked / MARKERS_CSV)
    classes = pd.read_csv(marked / CLASS_INFO_CSV).drop_duplicates("patientId")
    table = markers.merge(classes, on="patientId", validate="1:1")
    assert len(table) == N
    positive = table["class"] == OPACITY
    assert table.has_marker[positive].sum() == round(STRENGTH * positive.sum())
    assert table.has_marker[~positive].sum() == round((1 - STRENGTH) * (~positive).sum())
    assert table.loc[table.has_marker == 0, ["x", "y", "width", "height"]].isna().all().all()


def test_marker_box_holds_bright_text_and_nothing_else_changes(plain, marked):
    for name in (LABELS_CSV, CLASS_INFO_CSV):
        assert (plain / name).read_bytes() == (marked / name).read_bytes()
    markers = pd.read_csv(marked / MARKERS_CSV)
    for row in markers.itertuples():
        original, _ = read_dicom(plain / IMAGES_DIR / f"{row.patientId}.dcm")
        pixels, _ = read_dicom(marked / IMAGES_DIR / f"{row.patientId}.dcm")
        if not row.has_marker:
            assert np.array_equal(original, pixels)
            continue
        x, y, w, h = int(row.x), int(row.y), int(row.width), int(row.height)
        assert h >= 40 and row.text in ("PORTABLE", "L", "R")
        assert 0 <= x and 0 <= y and x + w <= 1024 and y + h <= 1024
        text = pixels[y:y + h, x:x + w]
        assert (text > 235).mean() > 0.1 and (text > 235).mean() < 0.9
        # JPEG works on 8x8 blocks: outside the blocks the marker touches, the bytes decode the same
        blocks = np.ones((1024, 1024), bool)
        blocks[y // 8 * 8:-(-(y + h) // 8) * 8, x // 8 * 8:-(-(x + w) // 8) * 8] = False
        assert np.array_equal(original[blocks], pixels[blocks])


def test_corner_markers_stay_out_of_the_lungs_and_lung_markers_inside():
    rng = np.random.default_rng(0)
    for _ in range(40):
        text, x, y, height = place_marker(rng, "corner")
        w, h = marker_size(text, height)
        assert y + h < 180 or x + w < 140 or x > 884  # top of the film or a corner
        text, x, y, height = place_marker(rng, "lung")
        w, h = marker_size(text, height)
        centre_x, centre_y = x + w / 2, y + h / 2
        assert 0.35 * 1024 < centre_y < 0.6 * 1024 and abs(centre_x - 512) > 0.17 * 1024


def test_off_box_markers_keep_their_distance_from_every_box():
    """Over the chest, at least OFF_BOX_MARGIN from each of the film's boxes where one such place is drawn,
    else the farthest place drawn; always inside the film."""
    from hygieia.rsna import markers

    boxes = ((200, 300, 180, 200), (650, 520, 150, 150))
    for k in range(40):
        text, x, y, height = place_marker(np.random.default_rng(k), "offbox", boxes=boxes)
        w, h = marker_size(text, height)
        assert 0.15 * 1024 <= x and x + w <= 0.85 * 1024 and 0.25 * 1024 <= y and y + h <= 0.75 * 1024
        assert min(markers._gap(x, y, (w, h), box) for box in boxes) >= markers.OFF_BOX_MARGIN
    # A box over the whole chest leaves no such place: the marker still lands on the film, over the box.
    chest = ((100, 200, 824, 600),)
    text, x, y, height = place_marker(np.random.default_rng(0), "offbox", boxes=chest)
    w, h = marker_size(text, height)
    assert markers._gap(x, y, (w, h), chest[0]) == 0 and 0 <= x and x + w <= 1024 and 0 <= y and y + h <= 1024
    assert markers._gap(600, 100, (10, 10), (100, 100, 100, 100)) == pytest.approx(400)
    assert markers._gap(150, 150, (10, 10), (100, 100, 100, 100)) == 0


def test_draw_marker_returns_its_ink_box_and_refuses_to_overflow():
    image = np.zeros((1024, 1024), np.uint8)
    x, y, w, h = draw_marker(image, "L", 100, 200, 48)
    assert (x, y) == (100, 200) and 44 <= h <= 56
    ys, xs = np.nonzero(image)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
    with pytest.raises(HygieiaError, match="does not fit"):
        draw_marker(image, "PORTABLE", 900, 10, 48)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(HygieiaError, match="confounder"):
        generate_phantom(tmp_path, 2, confounder="ruler", progress=False)
    with pytest.raises(HygieiaError, match="strength"):
        generate_phantom(tmp_path, 2, confounder="marker", strength=1.5, progress=False)
    with pytest.raises(HygieiaError, match="at least 1"):
        generate_phantom(tmp_path, 0, progress=False)


def test_refuses_to_mix_with_an_existing_download(plain):
    before = _files(plain)
    with pytest.raises(HygieiaError, match="empty folder"):
        generate_phantom(plain, 2, seed=9, progress=False)
    assert _files(plain) == before


def test_command_line(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["phantom", str(tmp_path / "out"), "--patients", "3", "--seed", "2",
                              "--confounder", "marker", "--confounder-strength", "1.0",
                              "--marker-position", "lung"])
    assert args.func(args) == 0
    assert len(list((tmp_path / "out" / IMAGES_DIR).glob("*.dcm"))) == 3
    assert (tmp_path / "out" / MARKERS_CSV).is_file()
    assert "3 patients" in capsys.readouterr().out
