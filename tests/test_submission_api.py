"""The Model API's output checks and opening/zipping submissions (no model is trained here)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from hygieia.submission.api import (SubmissionError, check_heatmaps, check_labels, check_probabilities,
                                    explanation_method)
from hygieia.submission.loading import (describe_error, find_model_file, import_model_class,
                                        open_submission, zip_submission)

IDS = [f"v{i}" for i in range(5)]
GOOD_MODEL = ("class Model:\n    def fit(self, X, y):\n        pass\n\n"
              "    def predict_proba(self, X):\n        return [0.5] * len(X['ids'])\n")


def test_probabilities_accept_lists_tensors_and_arrays():
    torch = pytest.importorskip("torch")
    expected = np.array([0, 0.25, 0.5, 0.75, 1])
    for values in (expected.tolist(), expected.astype(np.float32), torch.tensor(expected, requires_grad=True)):
        result = check_probabilities(values, IDS, "valid")
        assert result.dtype == np.float64 and np.allclose(result, expected)


@pytest.mark.parametrize("values, message", [
    (np.full(4, 0.5), "Model.predict_proba returned 4 values for 5 valid images"),
    (np.full((5, 2), 0.5), "shape (5, 2); expected (5,) (for scikit-learn's predict_proba, return [:, 1])"),
    (np.array([0.1, np.nan, 0.2, 0.3, np.nan]), "NaN or infinite values for 2 valid images (first ids: v1, v4)"),
    (np.array([0.1, 1.5, 0.2, -0.1, 0.3]), "values outside [0, 1] for 2 valid images (min -0.1, max 1.5"),
    (np.array(["a"] * 5), "not numbers"),
    (None, "not numbers"),
])
def test_bad_probabilities_are_named(values, message):
    with pytest.raises(SubmissionError) as err:
        check_probabilities(values, IDS, "valid")
    assert message in str(err.value)


def test_labels_must_be_zero_or_one():
    assert check_labels([True, False, True, True, False], IDS, "test").tolist() == [1, 0, 1, 1, 0]
    with pytest.raises(SubmissionError, match=r"labels other than 0 and 1 for 1 test images \(e.g. 2; first ids: v3\)"):
        check_labels([0, 1, 1, 2, 0], IDS, "test")


def test_heatmaps_are_checked_and_converted_to_float16():
    maps = np.random.default_rng(0).uniform(0, 3, (5, 8, 6))
    result = check_heatmaps(maps, IDS, (8, 6), "valid", "Model.explain")
    assert result.dtype == np.float16 and np.allclose(result, maps / maps.max(axis=(1, 2), keepdims=True), rtol=1e-3)
    with pytest.raises(SubmissionError, match=r"shape \(5, 6, 8\) for 5 valid images; expected \(5, 8, 6\)"):
        check_heatmaps(maps.transpose(0, 2, 1), IDS, (8, 6), "valid", "Model.explain")
    negative = maps.copy()
    negative[2, 0, 0] = -0.5
    with pytest.raises(SubmissionError, match="negative heatmap values for 1 valid images .* first ids: v2"):
        check_heatmaps(negative, IDS, (8, 6), "valid", "Model.explain")
    nan = maps.copy()
    nan[4, 3, 3] = np.nan
    with pytest.raises(SubmissionError, match="NaN or infinite heatmaps for 1 valid images"):
        check_heatmaps(nan, IDS, (8, 6), "valid", "Model.explain")


def test_tiny_huge_and_zero_heatmaps_are_kept_whole():
    """float16 holds 6e-8 to 65504: each map is divided by its own maximum first, zero stays zero."""
    maps = np.random.default_rng(1).uniform(0, 1, (5, 8, 6))
    maps[0] *= 1e-9
    maps[1] *= 1e9
    maps[2] = 0
    maps[3] *= 1e-30
    result = check_heatmaps(maps, IDS, (8, 6), "valid", "Model.explain")
    assert result.dtype == np.float16 and np.isfinite(result).all()
    assert (result[2] == 0).all()
    for i in (0, 1, 3, 4):
        assert result[i].max() == 1 and np.allclose(result[i], maps[i] / maps[i].max(), atol=1e-3)


def test_explanation_method_prefers_explain():
    class Both:
        def explain(self, X): ...
        def gradcam_target(self): ...

    class CamOnly:
        def gradcam_target(self): ...

    assert explanation_method(Both()) == "explain"
    assert explanation_method(CamOnly()) == "gradcam"
    assert explanation_method(object()) is None


def write(folder, files: dict):
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def make_zip(path, files: dict):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def test_model_file_at_root_or_in_one_wrapper_folder(tmp_path):
    root = write(tmp_path / "root", {"model.py": GOOD_MODEL, "helper/data.txt": "x"})
    assert find_model_file(root) == root / "model.py"
    wrapped = write(tmp_path / "wrapped", {"mine/model.py": GOOD_MODEL, "__MACOSX/mine/._model.py": "",
                                           ".DS_Store": ""})
    assert find_model_file(wrapped) == wrapped / "mine" / "model.py"


def test_missing_or_ambiguous_model_file_is_a_clear_error(tmp_path):
    two = write(tmp_path / "two", {"a/model.py": GOOD_MODEL, "b/model.py": GOOD_MODEL})
    with pytest.raises(SubmissionError, match=r"no model.py .* holds a, b\); found a/model.py, b/model.py"):
        find_model_file(two)
    none = write(tmp_path / "none", {"main.py": GOOD_MODEL})
    with pytest.raises(SubmissionError, match=r"no model.py at the submission's root .*holds main.py\)$"):
        find_model_file(none)


def test_zip_is_unpacked_and_unsafe_entries_refused(tmp_path):
    archive = make_zip(tmp_path / "s.zip", {"wrap/model.py": GOOD_MODEL, "wrap/notes.md": "hi"})
    folder = open_submission(archive, tmp_path / "work")
    assert folder == tmp_path / "work" / "wrap" and (folder / "notes.md").read_text() == "hi"
    evil = make_zip(tmp_path / "evil.zip", {"../escape.py": "x", "model.py": GOOD_MODEL})
    with pytest.raises(SubmissionError, match="points outside the zip"):
        open_submission(evil, tmp_path / "work2")
    assert not (tmp_path / "escape.py").exists()
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(SubmissionError, match="not a readable zip file"):
        open_submission(tmp_path / "broken.zip", tmp_path / "work3")


def test_import_names_the_line_of_a_syntax_error(tmp_path):
    folder = write(tmp_path / "s", {"model.py": "import numpy\n\nclass Model:\n    def fit(self X, y):\n"
                                                "        pass\n"})
    with pytest.raises(SubmissionError, match=r"importing model.py failed: model.py line 4: SyntaxError: "):
        import_model_class(folder)


def test_import_names_errors_in_helper_modules_and_missing_methods(tmp_path):
    folder = write(tmp_path / "s", {"model.py": "from helpers import scale\nclass Model:\n    pass\n",
                                    "helpers.py": "x = 1\nscale = 1 / 0\n"})
    with pytest.raises(SubmissionError, match="helpers.py line 2: ZeroDivisionError: division by zero"):
        import_model_class(folder)
    write(folder, {"helpers.py": "scale = 2\n"})
    with pytest.raises(SubmissionError, match="class Model in model.py has no method fit, predict_proba"):
        import_model_class(folder)
    write(folder, {"model.py": "Model = 3\n"})
    with pytest.raises(SubmissionError, match="model.py defines no class named Model"):
        import_model_class(folder)


def test_describe_error_without_submission_frame(tmp_path):
    assert describe_error(ValueError("bad"), tmp_path) == "ValueError: bad"


def test_zip_submission_is_deterministic_with_model_at_root(tmp_path):
    folder = write(tmp_path / "s", {"model.py": GOOD_MODEL, "lib/util.py": "A = 1\n", ".hidden": "x",
                                    "__pycache__/model.cpython-311.pyc": "x"})
    first = zip_submission(folder, tmp_path / "a.zip").read_bytes()
    (folder / "model.py").touch()  # a newer timestamp must not change the bytes
    second = zip_submission(folder, tmp_path / "b.zip").read_bytes()
    assert first == second
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert archive.namelist() == ["lib/util.py", "model.py"]
    assert import_model_class(open_submission(tmp_path / "a.zip", tmp_path / "work")).__name__ == "Model"


def test_zip_limits_are_checked_before_extracting(tmp_path, monkeypatch):
    """A 2 MB zip that unpacks to 200 MB, and a zip of many tiny entries, are refused before a byte is written."""
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.py", GOOD_MODEL)
        archive.writestr("weights.bin", bytes(200_000_000))
    assert bomb.stat().st_size < 1_000_000
    monkeypatch.setenv("HYGIEIA_MAX_SUBMISSION_MB", "100")
    with pytest.raises(SubmissionError, match=r"bomb.zip: 200.0 MB uncompressed, more than the limit of 100.0 MB "
                                              r"\(set by \$HYGIEIA_MAX_SUBMISSION_MB"):
        open_submission(bomb, tmp_path / "work")
    assert not (tmp_path / "work").exists()
    many = make_zip(tmp_path / "many.zip", {"model.py": GOOD_MODEL, **{f"f/{i}.txt": "" for i in range(50)}})
    with pytest.raises(SubmissionError, match="many.zip: 51 entries, more than the limit of 20"):
        open_submission(many, tmp_path / "work2", limits=(10**9, 20))
    assert not (tmp_path / "work2").exists()


def test_a_zip_that_lies_about_its_sizes_is_stopped_while_extracting(tmp_path):
    """The directory says 10 bytes; the data inflates to 50 MB: the count while writing stops it."""
    honest = tmp_path / "honest.zip"
    with zipfile.ZipFile(honest, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.py", GOOD_MODEL)
        archive.writestr("blob.bin", bytes(50_000_000))
    data = bytearray(honest.read_bytes())
    with zipfile.ZipFile(honest) as archive:
        info = archive.getinfo("blob.bin")
    central = data.rindex(b"PK\x01\x02")  # blob.bin's central directory entry is the last one
    assert data[central + 46:central + 46 + len("blob.bin")] == b"blob.bin"
    data[central + 24:central + 28] = (10).to_bytes(4, "little")  # uncompressed size
    data[info.header_offset + 22:info.header_offset + 26] = (10).to_bytes(4, "little")
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(data))
    with pytest.raises(SubmissionError) as err:
        open_submission(liar, tmp_path / "work", limits=(1_000_000, 100))
    assert "liar.zip" in str(err.value)
    written = sum(p.stat().st_size for p in (tmp_path / "work").rglob("*") if p.is_file())
    assert written <= 1_000_000


def test_archive_clutter_is_not_extracted(tmp_path):
    archive = make_zip(tmp_path / "mac.zip", {"mine/model.py": GOOD_MODEL, "__MACOSX/mine/._model.py": "x",
                                               "mine/._notes": "x", "mine/.DS_Store": "x", "mine/notes.md": "hi"})
    folder = open_submission(archive, tmp_path / "work")
    assert sorted(p.name for p in (tmp_path / "work").rglob("*")) == ["mine", "model.py", "notes.md"]
    assert folder == tmp_path / "work" / "mine"
