"""RSNA label tables: the real files read cleanly; each kind of damage gives an error naming file and line."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from conftest import shared_path
from hygieia.errors import DataError
from hygieia.rsna.tables import CLASS_FILE, LABELS_FILE, NOT_NORMAL, OPACITY, read_tables


def test_real_tables_counts():
    tables = read_tables(shared_path("data", "rsna"))
    classes = tables.patients["class"].value_counts()
    assert len(tables.patients) == 26684
    assert classes["Normal"] == 8851 and classes[OPACITY] == 6012 and classes[NOT_NORMAL] == 11821
    assert len(tables.boxes) == 9555
    assert tables.patients["patientId"].is_unique
    positives = set(tables.patients.loc[tables.patients["Target"] == 1, "patientId"])
    assert set(tables.boxes["patientId"]) == positives


@pytest.fixture
def rsna_copy(tmp_path):
    """The real mini tables copied to tmp, as raw text lines to damage."""
    source = shared_path("data", "rsna_real_mini")
    for name in (LABELS_FILE, CLASS_FILE):
        shutil.copy(source / name, tmp_path / name)
    return tmp_path


def _lines(path):
    return path.read_text().splitlines()


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")


def _first_positive_line(lines):
    return next(i for i, line in enumerate(lines) if line.endswith(",1") and i > 0)


def test_mini_copy_reads(rsna_copy):
    tables = read_tables(rsna_copy)
    assert tables.patients["class"].value_counts().to_dict() == {"Normal": 618, OPACITY: 522}


def test_missing_column(rsna_copy):
    table = pd.read_csv(rsna_copy / LABELS_FILE).drop(columns="height")
    table.to_csv(rsna_copy / LABELS_FILE, index=False)
    with pytest.raises(DataError, match=rf"{LABELS_FILE}: missing column\(s\) \['height'\]"):
        read_tables(rsna_copy)


@pytest.mark.parametrize("damage, message", [
    (lambda f: f[:3] + ["abc", f[4]], "line {line}: Target 1 needs numeric"),
    (lambda f: ["900", f[1], "200", f[3], f[4]], r"line {line}: box .* is not inside the 1024x1024"),
    (lambda f: ["-1", *f[1:]], r"line {line}: box .* is not inside"),
    (lambda f: f[:4] + ["2"], "line {line}: Target must be 0 or 1"),
    (lambda f: f[:4] + ["0"], "line {line}: Target 0 row has box fields"),
])
def test_bad_label_rows(rsna_copy, damage, message):
    """Each damaged field of one box row (x, y, width, height, Target) is named with its line."""
    lines = _lines(rsna_copy / LABELS_FILE)
    index = _first_positive_line(lines)
    patient, *fields = lines[index].split(",")
    lines[index] = ",".join([patient, *damage(fields)])
    _write(rsna_copy / LABELS_FILE, lines)
    with pytest.raises(DataError, match=f"{LABELS_FILE}: " + message.format(line=index + 1)):
        read_tables(rsna_copy)


def test_duplicate_label_row(rsna_copy):
    lines = _lines(rsna_copy / LABELS_FILE)
    _write(rsna_copy / LABELS_FILE, lines + [lines[5]])
    with pytest.raises(DataError, match=f"{LABELS_FILE}: line {len(lines) + 1}: duplicate row"):
        read_tables(rsna_copy)


def test_class_repeats_per_box_are_fine_but_extra_repeat_is_duplicate(rsna_copy):
    labels = pd.read_csv(rsna_copy / LABELS_FILE)
    multi = labels["patientId"].value_counts()
    assert multi.max() > 1  # the real class table repeats these patients once per box row
    lines = _lines(rsna_copy / CLASS_FILE)
    patient = multi.index[0]
    extra = next(line for line in lines if line.startswith(patient))
    _write(rsna_copy / CLASS_FILE, lines + [extra])
    with pytest.raises(DataError, match=f"{CLASS_FILE}: line {len(lines) + 1}: duplicate row for patient {patient}"):
        read_tables(rsna_copy)


def test_inconsistent_class(rsna_copy):
    lines = _lines(rsna_copy / CLASS_FILE)
    index = next(i for i, line in enumerate(lines) if line.endswith(",Normal"))
    patient = lines[index].split(",")[0]
    lines[index] = f"{patient},{OPACITY}"
    _write(rsna_copy / CLASS_FILE, lines)
    with pytest.raises(DataError, match=f"patient {patient} has Target 0 but class 'Lung Opacity'"):
        read_tables(rsna_copy)


def test_patient_missing_from_class_table(rsna_copy):
    lines = _lines(rsna_copy / CLASS_FILE)
    index = next(i for i, line in enumerate(lines) if line.endswith(",Normal"))
    patient = lines.pop(index).split(",")[0]
    _write(rsna_copy / CLASS_FILE, lines)
    with pytest.raises(DataError, match=f"{CLASS_FILE}: patient {patient} .* is missing"):
        read_tables(rsna_copy)


def test_unknown_class(rsna_copy):
    lines = _lines(rsna_copy / CLASS_FILE)
    lines[3] = lines[3].split(",")[0] + ",Pneumonia"
    _write(rsna_copy / CLASS_FILE, lines)
    with pytest.raises(DataError, match=f"{CLASS_FILE}: line 4: unknown class 'Pneumonia'"):
        read_tables(rsna_copy)


def test_skip_bad_leaves_out_the_bad_patients_and_names_their_lines(rsna_copy):
    labels, classes = _lines(rsna_copy / LABELS_FILE), _lines(rsna_copy / CLASS_FILE)
    index = _first_positive_line(labels)
    outside, *fields = labels[index].split(",")
    labels[index] = ",".join([outside, "900", fields[1], "200", *fields[3:]])
    normals = [i for i, line in enumerate(classes) if line.endswith(",Normal")]
    unknown, missing, duplicated = (classes[i].split(",")[0] for i in normals[:3])
    classes[normals[0]] = f"{unknown},Pneumonia"
    del classes[normals[1]]
    labels.append(next(line for line in labels if line.startswith(duplicated)))
    _write(rsna_copy / LABELS_FILE, labels)
    _write(rsna_copy / CLASS_FILE, classes)
    with pytest.raises(DataError):
        read_tables(rsna_copy)

    tables = read_tables(rsna_copy, skip_bad=True)
    errors = {item["patientId"]: item["error"] for item in tables.skipped}
    assert set(errors) == {outside, duplicated, unknown, missing}
    assert f"{LABELS_FILE}: line {index + 1}: box" in errors[outside]
    assert f"{LABELS_FILE}: line {len(labels)}: duplicate row" in errors[duplicated]
    assert f"{CLASS_FILE}: line {normals[0] + 1}: unknown class 'Pneumonia'" in errors[unknown]
    assert f"{CLASS_FILE}: patient {missing} (line" in errors[missing]
    assert not set(errors) & (set(tables.patients["patientId"]) | set(tables.boxes["patientId"]))
    assert len(tables.patients) == 1140 - 4 and tables.patients["patientId"].is_unique
