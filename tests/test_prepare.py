"""``prepare`` end to end on real RSNA radiographs (rsna_real_mini), bad input, reruns, the phantom."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shared_path
from hygieia import dataset as ds
from hygieia.errors import DataError, HygieiaError
from hygieia.prepare.commands import main as prepare_main
from hygieia.boxes import boxes_in_window, scale_boxes
from hygieia.prepare.crops import crop_image, resize_image, window_side
from hygieia.prepare.pipeline import MANIFEST, PRIVATE_DIR, SECRET_FILE, prepare
from hygieia.prepare.prior import box_prior
from hygieia.prepare.select import draw_key, select
from hygieia.prepare.views import patient_views
from hygieia.rsna.dicom import read_dicom
from hygieia.rsna.tables import CLASS_FILE, IMAGES_DIR, LABELS_FILE, read_tables

SMALL = dict(train=10, valid=5, test=5)
SECRET = "small-test-secret-" + "5" * 40


def _mini_copy(root: Path, normals: int, opacities: int) -> Path:
    """A small RSNA folder: the first patients of each class of rsna_real_mini, files and rows copied."""
    source = shared_path("data", "rsna_real_mini")
    labels = pd.read_csv(source / LABELS_FILE)
    classes = pd.read_csv(source / CLASS_FILE)
    first = classes.drop_duplicates("patientId")
    keep = pd.concat([first[first["class"] == "Normal"].head(normals),
                      first[first["class"] == "Lung Opacity"].head(opacities)])["patientId"]
    (root / IMAGES_DIR).mkdir(parents=True)
    for pid in keep:
        shutil.copy(source / IMAGES_DIR / f"{pid}.dcm", root / IMAGES_DIR / f"{pid}.dcm")
    labels[labels["patientId"].isin(keep)].to_csv(root / LABELS_FILE, index=False)
    classes[classes["patientId"].isin(keep)].to_csv(root / CLASS_FILE, index=False)
    return root


@pytest.fixture(scope="module")
def mini_rsna(tmp_path_factory):
    return _mini_copy(tmp_path_factory.mktemp("mini_rsna"), normals=16, opacities=16)


@pytest.fixture(scope="module")
def small_prepared(tmp_path_factory, mini_rsna, weights_path):
    out = tmp_path_factory.mktemp("small_prepared") / "out"
    summary = prepare(mini_rsna, out, **SMALL, full_size=64, probe_share=0.5, id_secret=SECRET,
                      weights=weights_path, progress=False)
    return out, summary


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_prepared(out: Path, rsna_dir: Path, sizes: dict, crop: int = 100, full_size: int | None = None,
                   check_pixels: int = 3) -> None:
    """The layout, the contracts of docs/architecture.md and agreement with the source radiographs."""
    private = pd.read_csv(out / "private" / "samples.csv", dtype={"id": str})
    assert private["id"].is_unique and private["patientId"].is_unique  # a probe's film is served once
    by_id = private.set_index("id")
    for split, n in sizes.items():
        X = ds.load_input_split(out / ds.INPUT_DIR, split)
        probe = np.zeros(len(X["ids"]), bool)
        if split == "train":
            labels, boxes = X["labels"], X["boxes"]
        else:
            ref = ds.load_reference_split(out / ds.REFERENCE_DIR / split)
            assert ref["ids"] == X["ids"] and (ref["images"] == X["images"]).all()
            assert not (out / ds.INPUT_DIR / split / ds.LABELS).exists()
            labels, boxes = ref["labels"], ref["boxes"]
            table = ds.read_table(out / ds.REFERENCE_DIR / split / ds.LABELS, ds.REFERENCE_LABEL_COLUMNS)
            probe = table["probe"].to_numpy() == 1
            assert labels[probe].all()  # probes are label 1, with no box (below)
            assert json.loads((out / ds.REFERENCE_DIR / split / ds.SPLIT_INFO).read_text()) == {
                "split": split, "final": split == "test"}
            prior = np.load(out / ds.REFERENCE_DIR / split / ds.BOX_PRIOR)
            train = ds.load_input_split(out / ds.INPUT_DIR, "train", features=False)
            train_boxes = [train["boxes"].loc[train["boxes"]["id"] == i, ["x", "y", "width", "height"]].to_numpy()
                           for i, y in zip(train["ids"], train["labels"]) if y == 1]
            assert prior.dtype == np.float32 and prior.shape == (crop, crop)
            # boxes.csv keeps 6 significant digits: a box edge on a pixel centre may move that pixel of one mask
            recomputed = box_prior(train_boxes, (crop, crop))
            np.testing.assert_allclose(prior, recomputed, atol=1 / len(train_boxes) + 1e-6)
            assert (np.abs(prior - recomputed) > 1e-6).mean() < 0.05
            assert list(ref["meta"].columns) == ["age", "sex", "view_position"]
        assert list(X["meta"].columns) == ds.INPUT_META_COLUMNS[1:] and "view_position" not in X["meta"]
        assert (by_id.loc[X["ids"], "probe"].to_numpy() == probe).all()
        assert X["images"].shape == (n + probe.sum(), crop, crop)
        assert X["features"].shape == (n + probe.sum(), ds.N_FEATURES)
        assert int(labels[~probe].sum()) == round(n * 2 / 5)
        assert list(by_id.loc[X["ids"], "split"]) == [split] * len(X["ids"])
        assert (by_id.loc[X["ids"], "label"].to_numpy() == labels).all()
        boxed = set(boxes["id"])
        for i, label, is_probe in zip(X["ids"], labels, probe):
            assert (i in boxed) == bool(label and not is_probe)  # opacity crops hold a box; others none
        assert (boxes[["x", "y"]] >= 0).all().all()
        assert ((boxes["x"] + boxes["width"]) <= crop + 1e-3).all()  # CSV keeps 6 significant digits
        assert ((boxes["y"] + boxes["height"]) <= crop + 1e-3).all()  # CSV keeps 6 significant digits
        if full_size:  # the whole films, without the probes
            full = ds.load_input_split(out / f"full_{full_size}" / ds.INPUT_DIR, split)
            kept = [i for i, is_probe in zip(X["ids"], probe) if not is_probe]
            assert full["images"].shape == (n, full_size, full_size) and full["ids"] == kept
            assert np.array_equal(full["features"], X["features"][~probe])
            if split != "train":
                assert np.load(out / f"full_{full_size}" / ds.REFERENCE_DIR / split / ds.BOX_PRIOR).shape == (
                    full_size, full_size)
        shown = [i for i, is_probe in zip(X["ids"], probe) if is_probe][:1] + X["ids"][:check_pixels]
        for i in dict.fromkeys(shown):  # crops, whole images, boxes and meta re-derived from the DICOM
            row = by_id.loc[i]
            pixels, header = read_dicom(rsna_dir / IMAGES_DIR / f"{row['patientId']}.dcm")
            window = (row["window_x"], row["window_y"], row["window_side"])
            k = X["ids"].index(i)
            assert np.array_equal(X["images"][k], crop_image(pixels, window, crop))
            assert X["meta"].loc[i, "sex"] == header["sex"] and X["meta"].loc[i, "age"] == header["age"]
            assert row["view"] == header["view_position"]
            if split != "train":
                assert ref["meta"].loc[i, "view_position"] == header["view_position"]
            original = _original_boxes(rsna_dir, row["patientId"])
            np.testing.assert_allclose(boxes[boxes["id"] == i][["x", "y", "width", "height"]].to_numpy(),
                                       boxes_in_window(original, window, crop), rtol=1e-5, atol=1e-3)
            if row["probe"]:
                assert len(original) and not len(boxes_in_window(original, window, crop))
                continue
            if full_size:
                assert np.array_equal(full["images"][full["ids"].index(i)], resize_image(pixels, full_size))
                full_boxes = full["boxes"] if split == "train" else ds.load_reference_split(
                    out / f"full_{full_size}" / ds.REFERENCE_DIR / split)["boxes"]
                np.testing.assert_allclose(full_boxes[full_boxes["id"] == i][["x", "y", "width", "height"]],
                                           scale_boxes(original, (1024, 1024), full_size), rtol=1e-5, atol=1e-3)
    features = np.concatenate([np.load(out / ds.INPUT_DIR / s / ds.FEATURES) for s in sizes])
    assert len(np.unique(features, axis=0)) == len(features)  # no film served twice, probes included
    manifest = json.loads((out / MANIFEST).read_text())
    secret_file = f"{PRIVATE_DIR}/{SECRET_FILE}"
    assert set(manifest["files"]) == set(_files(out)) - {MANIFEST, secret_file}
    text = "".join((out / ds.INPUT_DIR / s / ds.META).read_text() for s in sizes)
    assert not any(pid in text for pid in private["patientId"])  # no RSNA patient id leaks to participants
    secret = (out / secret_file).read_text().strip()
    assert len(secret) >= 32
    for name, data in _files(out).items():  # the id secret appears nowhere but in its own file
        assert name == secret_file or secret.encode() not in data, name
    assert (out / "card" / "dataset_card.md").is_file() and (out / "card" / "box_sizes.png").is_file()


def _original_boxes(rsna_dir: Path, patient_id: str) -> np.ndarray:
    labels = pd.read_csv(rsna_dir / LABELS_FILE)
    rows = labels[(labels["patientId"] == patient_id) & (labels["Target"] == 1)]
    return rows[["x", "y", "width", "height"]].to_numpy(np.float64)


@pytest.mark.slow
def test_small_prepare_end_to_end(small_prepared, mini_rsna):
    out, summary = small_prepared
    assert summary["counts"] == {"train": {"normal": 6, "opacity": 4, "probes": 0},
                                 "valid": {"normal": 3, "opacity": 2, "probes": 1},
                                 "test": {"normal": 3, "opacity": 2, "probes": 1}}
    check_prepared(out, mini_rsna, SMALL, full_size=64, check_pixels=5)
    assert (out / PRIVATE_DIR / SECRET_FILE).read_text().strip() == SECRET
    assert_card_states_no_class_statistic_of_a_hidden_split(out)


def assert_card_states_no_class_statistic_of_a_hidden_split(out: Path) -> None:
    """Of valid and test the public card gives what anyone computes from their public meta.csv, and the
    counts of the design; per class, only the training split."""
    card = (out / "card" / "dataset_card.md").read_text()
    for split in ("valid", "test"):
        rows = [line for line in card.splitlines() if line.startswith(f"| {split} |")]
        assert not any(name in line for line in rows for name in ("Normal", "Lung Opacity"))
        meta = ds.read_table(out / ds.INPUT_DIR / split / ds.META, ds.INPUT_META_COLUMNS)
        age = meta["age"].astype(float)
        assert (f"| {split} | all served | {len(meta)} | {age.mean():.1f} | {age.median():.0f} | {age.min():.0f} | "
                f"{age.max():.0f} | 0 |") in rows
        assert len(rows) == 3  # samples (design counts), age and sex of all served items
    assert "| train | Normal |" in card and "| train | Lung Opacity |" in card


@pytest.mark.slow
def test_rerun_gives_identical_bytes(small_prepared, mini_rsna, weights_path, tmp_path):
    out, _ = small_prepared
    before = _files(out)
    again = tmp_path / "again"
    prepare(mini_rsna, again, **SMALL, full_size=64, probe_share=0.5, id_secret=SECRET,
            weights=weights_path, workers=1, progress=False)
    assert _files(again) == before  # PNGs, CSVs, arrays and the manifest, byte for byte
    prepare(mini_rsna, out, **SMALL, full_size=64, probe_share=0.5, weights=weights_path, progress=False)
    assert _files(out) == before  # rerun in place keeps its secret and gives the same bytes


@pytest.mark.slow
def test_another_secret_draws_other_films_windows_probes_and_ids(small_prepared, mini_rsna, weights_path, tmp_path):
    """Nothing public replays a prepared dataset: without the secret, prepare run again on RSNA's files
    gives other films in other places, other windows and other ids."""
    out, _ = small_prepared
    other = tmp_path / "other"
    prepare(mini_rsna, other, **SMALL, full_size=64, probe_share=0.5, weights=weights_path,
            progress=False)  # a new random secret
    secret = (other / PRIVATE_DIR / SECRET_FILE).read_text().strip()
    assert len(secret) == 64 and secret != SECRET and int(secret, 16) >= 0
    first, second = (pd.read_csv(o / PRIVATE_DIR / "samples.csv").set_index("patientId") for o in (out, other))
    assert not set(first["id"]) & set(second["id"])
    assert (first["split"] != second["split"].reindex(first.index)).any()  # films served elsewhere
    both = first.index.intersection(second.index)
    windows = ["window_x", "window_y", "window_side"]
    assert (first.loc[both, windows] != second.loc[both, windows]).any(axis=1).mean() > 0.5
    for name in ("valid", "test"):  # the hidden crops themselves differ
        assert not np.array_equal(np.load(out / ds.INPUT_DIR / name / ds.IMAGES),
                                  np.load(other / ds.INPUT_DIR / name / ds.IMAGES))
    with pytest.raises(HygieiaError, match="at least 32 characters"):
        prepare(mini_rsna, tmp_path / "weak", **SMALL, id_secret="1234", weights=weights_path, progress=False)


@pytest.mark.slow
def test_negative_windows_follow_positive_boxes(small_prepared, mini_rsna):
    out, _ = small_prepared
    private = pd.read_csv(out / "private" / "samples.csv")
    labels = pd.read_csv(mini_rsna / LABELS_FILE)
    train_positive = private[(private["split"] == "train") & (private["label"] == 1)]["patientId"]
    boxes = labels[labels["patientId"].isin(train_positive)]
    sides = {window_side(box) for box in boxes[["x", "y", "width", "height"]].to_numpy()}
    negatives = private[private["label"] == 0]
    assert set(negatives["window_side"]) <= sides  # drawn from the training positives' boxes
    assert negatives["window_side"].nunique() > 1


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3000])


@pytest.mark.slow
def test_corrupt_dicom_names_the_file_and_skip_bad_replaces_it(tmp_path, weights_path):
    rsna = _mini_copy(tmp_path / "rsna", normals=12, opacities=8)
    sizes = dict(train=5, valid=5, test=5)
    patients = read_tables(rsna).patients  # the films the secret selects: one is corrupted, one is deleted
    views, _ = patient_views(rsna, patients["patientId"])
    chosen, _ = select(patients.assign(view=patients["patientId"].map(views)), sizes, (3, 2), draw_key(SECRET), None)
    names = [rsna / IMAGES_DIR / f"{pid}.dcm" for pid in sorted(chosen["patientId"])[:2]]
    _corrupt(names[0])
    names[1].unlink()
    with pytest.raises(DataError, match=r"\.dcm: (truncated|not a readable|cannot decode|file not found)"):
        prepare(rsna, tmp_path / "out", **sizes, hidden_ap_share=None, id_secret=SECRET, weights=weights_path,
                progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nothing half-written

    summary = prepare(rsna, tmp_path / "out", **sizes, hidden_ap_share=None, id_secret=SECRET, weights=weights_path,
                      skip_bad=True, progress=False)
    skipped = {item["patientId"] for item in summary["skipped"]}
    assert skipped == {names[0].stem, names[1].stem}
    private = pd.read_csv(tmp_path / "out" / "private" / "samples.csv")
    assert not skipped & set(private["patientId"]) and len(private) == 15
    card = (tmp_path / "out" / "card" / "dataset_card.md").read_text()
    assert "DICOM files): 2\n" in card and all(pid in card for pid in skipped)
    check_prepared(tmp_path / "out", rsna, sizes, check_pixels=1)


def test_missing_column_and_bad_out_dir(tmp_path, weights_path):
    rsna = _mini_copy(tmp_path / "rsna", normals=2, opacities=2)
    table = pd.read_csv(rsna / CLASS_FILE).rename(columns={"class": "klass"})
    table.to_csv(rsna / CLASS_FILE, index=False)
    with pytest.raises(DataError, match=rf"{CLASS_FILE}: missing column\(s\) \['class'\]"):
        prepare(rsna, tmp_path / "out", train=2, valid=1, test=1, weights=weights_path, progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(HygieiaError, match="is not empty and is not a prepared dataset"):
        prepare(rsna, busy, train=2, valid=1, test=1, weights=weights_path, progress=False)
    assert (busy / "notes.txt").read_text() == "mine"


def test_cli_reports_errors(tmp_path, capsys):
    rsna = shared_path("data", "rsna_real_mini")
    assert prepare_main([str(rsna), str(tmp_path / "out"), "--train", "5000"]) == 2
    err = capsys.readouterr().err
    assert "not enough patients" in err and "618 Normal and 522 Lung Opacity" in err
    with pytest.raises(SystemExit) as exit_info:   # checked while parsing: one line, exit 2
        prepare_main([str(rsna), str(tmp_path / "out"), "--weights", str(tmp_path / "none.pth"),
                      "--train", "5", "--valid", "2", "--test", "2"])
    assert exit_info.value.code == 2
    assert "weights file" in (err := capsys.readouterr().err) and "none.pth: not found" in err


@pytest.mark.slow
def test_real_mini_630_200_200(tmp_path, weights_path):
    rsna = shared_path("data", "rsna_real_mini")
    sizes = dict(train=630, valid=200, test=200)
    # AP/PA = 103/515 Normal, 387/135 Lung Opacity: 40 % AP is near the most these hidden splits allow
    summary = prepare(rsna, tmp_path / "out", **sizes, hidden_ap_share=0.4, weights=weights_path, workers=1,
                      id_secret=SECRET, progress=False)
    assert summary["skipped"] == [] and summary["hidden_ap_share_used"] == 0.4
    assert summary["counts"]["valid"] == summary["counts"]["test"] == {"normal": 120, "opacity": 80, "probes": 8}
    assert summary["best_fixed_map"]["ratio"] <= 1.2
    check_prepared(tmp_path / "out", rsna, sizes, check_pixels=2)
    private = pd.read_csv(tmp_path / "out" / PRIVATE_DIR / "samples.csv")
    hidden = private[(private["split"] != "train") & (private["probe"] == 0)]
    for split in ("valid", "test"):
        assert hidden[hidden["split"] == split].groupby(["label", "view"]).size().to_dict() == {
            (0, "AP"): 48, (0, "PA"): 72, (1, "AP"): 32, (1, "PA"): 48}


@pytest.mark.slow
def test_phantom_prepared(request):
    pytest.importorskip("hygieia.rsna.phantom")
    out = request.getfixturevalue("phantom_prepared")
    check_prepared(out, request.getfixturevalue("phantom_rsna"), dict(train=70, valid=20, test=20),
                   full_size=128, check_pixels=2)
    summary = json.loads((out / MANIFEST).read_text())["summary"]
    assert summary["best_fixed_map"]["ratio"] <= 1.2


def test_bad_design_options_are_refused_before_the_work(tmp_path, weights_path, capsys):
    rsna = _mini_copy(tmp_path / "rsna", normals=6, opacities=2)
    with pytest.raises(HygieiaError, match="training split holds no Lung Opacity patient"):
        prepare(rsna, tmp_path / "out", train=2, valid=1, test=1, ratio=(1, 0), weights=weights_path,
                progress=False)
    with pytest.raises(HygieiaError, match="not enough unused Lung Opacity films for the off-box probes"):
        prepare(rsna, tmp_path / "out", train=2, valid=2, test=1, ratio=(1, 1), probe_share=1.0,
                hidden_ap_share=None, weights=weights_path, progress=False)
    for option, value, message in (("--seed", "7", "--seed is gone: a public seed let anyone replay"),
                                   ("--hidden-ap-share", "1.5", "--hidden-ap-share must lie in [0, 1]"),
                                   ("--probe-share", "-0.1", "--probe-share must lie in [0, 1]"),
                                   ("--id-secret-file", str(tmp_path / "none.txt"),
                                    "none.txt (from --id-secret-file)")):
        assert prepare_main([str(rsna), str(tmp_path / "out"), option, value, "--weights", str(weights_path)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
