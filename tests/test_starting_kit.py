"""The starting kit's notebook: generated from tools/make_starting_kit.py, committed without outputs,
and run headless, as a participant runs it, in the starting kit of a real bundle."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from hygieia import dataset as ds
from hygieia.scoring.keys import SCORE_KEYS
from fakes import fake_split, write_fake_dataset
from leaks import find_leaks

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "starting_kit"
NOTEBOOK = KIT / "README.ipynb"
ORGANIZER_ONLY = {"pydicom"}  # reading RSNA's DICOM files is the organizers' business


def load_generator():
    spec = importlib.util.spec_from_file_location("make_starting_kit", ROOT / "tools" / "make_starting_kit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def requirement_lines(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_committed_notebook_is_the_generated_one_without_outputs():
    text = NOTEBOOK.read_text(encoding="utf-8")
    assert text == load_generator().notebook_text(), "run `python tools/make_starting_kit.py`"
    notebook = nbformat.reads(text, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_kit_requirements_hold_every_runtime_requirement_participants_need():
    kit = requirement_lines(KIT / "requirements.txt")
    needed = [line for line in requirement_lines(ROOT / "requirements.txt")
              if not any(line.startswith(name) for name in ORGANIZER_ONLY)]
    assert [line for line in needed if line not in kit] == []
    for tool in ("notebook", "nbconvert", "ipykernel"):  # the README's commands: Jupyter, and nbconvert headless
        assert any(line.startswith(tool) for line in kit), tool


def load_local_eval():
    spec = importlib.util.spec_from_file_location("local_eval", KIT / "local_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_dataset_holds_out_part_of_train_with_its_labels_and_boxes_on_the_reference_side(tmp_path):
    local_eval = load_local_eval()
    write_fake_dataset(tmp_path / "data", sizes=(60, 20, 20))
    train = ds.load_input_split(tmp_path / "data" / ds.INPUT_DIR, "train")
    rows = local_eval.split_rows(train["labels"], holdout=0.3)
    local = local_eval.write_local_dataset(train, rows, tmp_path / "local")

    ids = {split: ds.load_input_split(local / ds.INPUT_DIR, split)["ids"] for split in ds.SPLITS}
    assert sorted(sum(ids.values(), [])) == sorted(train["ids"])
    assert (len(ids["train"]), len(ids["valid"]), len(ids["test"])) == (42, 9, 9)
    labels = pd.Series(train["labels"], index=train["ids"])
    for split in ds.SCORED_SPLITS:
        public = local / ds.INPUT_DIR / split
        assert not (public / ds.LABELS).exists() and not (public / ds.BOXES).exists()
        reference = ds.load_reference_split(local / ds.REFERENCE_DIR / split)
        assert reference["ids"] == ids[split]
        assert np.array_equal(reference["labels"], labels.loc[ids[split]].to_numpy())
        assert 0 < reference["labels"].sum() < len(reference["ids"])  # stratified: both classes
        expected = train["boxes"][train["boxes"]["id"].isin(ids[split])].reset_index(drop=True)
        pd.testing.assert_frame_equal(reference["boxes"], expected)
        index = [train["ids"].index(i) for i in ids[split]]
        assert np.array_equal(reference["images"], train["images"][index])

    quick = local_eval.split_rows(train["labels"], holdout=0.3, limit=30)
    assert sum(len(part) for part in quick.values()) == 30


def write_model(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(body)
    return folder


CONSTANT_MODEL = """
import json
from pathlib import Path

import numpy as np

LOG = Path(__file__).with_name("calls.jsonl")


def log(entry):
    with LOG.open("a") as handle:
        handle.write(json.dumps(entry) + "\\n")


class Model:
    def fit(self, X, y):
        log({"call": "fit", "keys": sorted(X), "n": len(y),
             "boxes_of_fitted_ids": set(X["boxes"]["id"]) <= set(X["ids"])})

    def predict_proba(self, X):
        log({"call": "predict_proba", "keys": sorted(X), "n": len(X["ids"])})
        return np.full(len(X["ids"]), 0.3)   # ignores the pixels
"""


ALL_POSITIVE_MODEL = """
import numpy as np


class Model:
    def fit(self, X, y):
        pass

    def predict_proba(self, X):
        return np.full(len(X["ids"]), 0.9)

    def explain(self, X):
        return X["images"].astype(np.float32) / 255 + 0.01   # non-zero maps: each image itself
"""


def test_cross_validation_fits_on_the_other_folds_and_predicts_each_image_once_without_its_labels(tmp_path):
    import json

    local_eval = load_local_eval()
    write_fake_dataset(tmp_path / "data", sizes=(60, 20, 20))
    train = ds.load_input_split(tmp_path / "data" / ds.INPUT_DIR, "train")
    model = write_model(tmp_path / "constant", CONSTANT_MODEL)
    results = local_eval.cross_validate(model, train, folds=5)
    assert "model" not in sys.modules  # the submission's modules are forgotten afterwards

    calls = [json.loads(line) for line in (model / "calls.jsonl").read_text().splitlines()]
    assert [c["call"] for c in calls] == ["fit", "predict_proba"] * 5
    assert all(c["keys"] == ["boxes", "features", "ids", "images", "meta"] and c["boxes_of_fitted_ids"]
               for c in calls[::2])
    assert all(c["keys"] == ["features", "ids", "images", "meta"] for c in calls[1::2])  # no labels, no boxes

    assert list(results.index) == [0, 1, 2, 3, 4]
    assert results["n_held"].sum() == 60 and (results["n_fit"] + results["n_held"] == 60).all()
    folds = local_eval.fold_rows(train["labels"], 5)
    assert sorted(np.concatenate([held for _, held in folds])) == list(range(60))  # each image held out once
    for fit, held in folds:
        assert not set(fit) & set(held)
        assert train["labels"][held].mean() == pytest.approx(train["labels"].mean(), abs=0.1)  # stratified
    # a constant 0.3 predicts "normal" everywhere: accuracy = the fold's normal share, AUROC at chance
    assert results["accuracy"].tolist() == pytest.approx([1 - train["labels"][held].mean() for _, held in folds])
    assert (results["auroc"] == 0.5).all() and (results["recall"] == 0).all()
    assert (results["balanced_accuracy"] == 0.5).all()

    assert sum(len(held) for _, held in local_eval.fold_rows(train["labels"], 5, limit=30)) == 30
    with pytest.raises(Exception, match="needs at least 5 images of each class"):
        local_eval.fold_rows(train["labels"], 5, limit=6)


def load_kit_module(name: str):
    spec = importlib.util.spec_from_file_location(name, KIT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_box_supervised_heatmap_beats_the_box_prior_where_the_pixels_show_the_box():
    box_heatmap = load_kit_module("box_heatmap")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, size=(60, 100, 100)).astype(np.uint8)
    masks = np.zeros(images.shape, bool)
    for image, mask in zip(images, masks):  # a bright opacity-like patch inside each box
        x, y = rng.integers(5, 55, size=2)
        mask[y:y + 35, x:x + 35] = True
        image[mask] += 120
    model = box_heatmap.BoxHeatmap(epochs=40).fit(images[:45], masks[:45])
    maps = model.heatmaps(images[45:])
    assert maps.shape == (15, 100, 100) and (maps >= 0).all()
    learnt = box_heatmap.mean_activation_in_box(maps, masks[45:])
    prior = box_heatmap.mean_activation_in_box([box_heatmap.box_prior(masks[:45])] * 15, masks[45:])
    uniform = box_heatmap.mean_activation_in_box([np.ones((100, 100))] * 15, masks[45:])
    assert uniform < prior < 0.4  # the prior knows where boxes lie on average, not in this crop
    assert learnt > prior + 0.2, (learnt, prior)


def load_figures():
    import matplotlib

    matplotlib.use("Agg")
    spec = importlib.util.spec_from_file_location("figures", KIT / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rectangles(ax, color: str) -> list[tuple[float, float, float, float]]:
    from matplotlib.colors import to_rgba

    return [(*patch.get_xy(), patch.get_width(), patch.get_height()) for patch in ax.patches
            if patch.get_edgecolor() == to_rgba(color)]


def test_figures_draw_the_boxes_and_the_95_rectangle_where_the_metrics_put_them():
    from hygieia.boxes import box_mask
    from hygieia.scoring.metrics import explain_image

    figures = load_figures()
    X = fake_split(10, np.random.default_rng(1), "x")
    X["boxes"] = pd.concat([X["boxes"], X["boxes"].iloc[:1]])  # a crop with two boxes
    boxes = ds.boxes_by_id(X["boxes"])

    crops = figures.show_crops(X, per_class=4)  # all 4 opacity crops, 4 of the 6 normal ones
    shown = {ax.get_title().split("\n")[1]: len(rectangles(ax, figures.BOX_COLOR)) for ax in crops.axes[:4]}
    assert shown == {key: len(value) for key, value in boxes.items()}
    assert all(rectangles(ax, figures.BOX_COLOR) == [] for ax in crops.axes[4:])

    ids = [X["ids"][i] for i in np.flatnonzero(X["labels"] == 1)]
    images = X["images"][np.flatnonzero(X["labels"] == 1)]
    heatmaps = [box_mask(boxes[key], (100, 100)).astype(float) for key in ids]  # a perfect explanation
    results = [explain_image(heatmap, boxes[key]) for heatmap, key in zip(heatmaps, ids)]
    figure = figures.show_explanations(images, heatmaps, [boxes[key] for key in ids], results, ids)
    ax = figure.axes[0]
    x, y, width, height = boxes[ids[0]][0]
    assert rectangles(ax, figures.BOX_COLOR)[0] == pytest.approx((x - 0.5, y - 0.5, width, height))
    top, left, bottom, right = results[0]["rectangle_95"]
    assert rectangles(ax, figures.RECTANGLE_COLOR) == [(left - 0.5, top - 0.5, right - left, bottom - top)]
    assert "in box 1.00" in ax.get_title()

    table = pd.DataFrame(results)
    histograms = figures.show_metric_histograms(table, ["activation_in_box", "iou_95"])
    assert [sum(p.get_height() for p in ax.patches) for ax in histograms.axes] == [len(ids), len(ids)]


def unpack_starting_kit(bundle: Path, dest: Path) -> Path:
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(dest, [name for name in archive.namelist() if name.startswith("starting_kit/")])
    return dest / "starting_kit"


def execute(notebook_path: Path, kit: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    notebook = nbformat.read(notebook_path, as_version=4)
    client = NotebookClient(notebook, timeout=400, kernel_name="python3",
                            resources={"metadata": {"path": str(kit)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    return notebook


def outputs(notebook, output_type: str | None = None, mime: str | None = None) -> list:
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output_type and output.output_type == output_type:
                found.append(output.text)
            if mime and mime in output.get("data", {}):
                found.append(output["data"][mime])
    return found


@pytest.mark.slow
def test_notebook_runs_in_the_bundles_starting_kit_and_its_zip_is_accepted(
        tmp_path, phantom_prepared, weights_path, monkeypatch):
    from hygieia.bundle.build import build_bundle
    from hygieia.bundle.worker import run_submission

    bundle = build_bundle(phantom_prepared, tmp_path / "bundle.zip").path
    kit = unpack_starting_kit(bundle, tmp_path)
    # The kernel spec runs `python`: make it this interpreter, as a participant's active environment.
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("HYGIEIA_FAST", "1")
    monkeypatch.setenv("HYGIEIA_MOBILENET_WEIGHTS", str(weights_path))
    monkeypatch.delenv("HYGIEIA_DATA", raising=False)

    notebook = execute(kit / "README.ipynb", kit)

    printed = "".join(outputs(notebook, output_type="stream"))
    assert f"({sys.executable})" in printed, "the kernel did not run this environment's python"
    # crops, metadata, two confusion matrices (+ heatmaps and histograms when the quick baseline finds
    # a true positive, which it may not on so few images: the explanation figures are tested below)
    assert len(outputs(notebook, mime="image/png")) >= 4
    assert "status: Finished" in printed

    submission = kit / "local_run" / "submission.zip"
    with zipfile.ZipFile(submission) as archive:
        assert "model.py" in archive.namelist()
    result = run_submission(submission, bundle, phase="development", out_dir=tmp_path / "run", echo=False)
    assert result.status == "Finished", result.report()
    assert sorted(result.scores) == sorted(SCORE_KEYS)  # the phantom's hidden splits hold probes


def kit_environment(**extra: str) -> dict[str, str]:
    """The caller's environment without PYTHONPATH (nothing of this repository importable) and
    without HYGIEIA_* settings, plus ``extra``."""
    env = {key: value for key, value in os.environ.items()
           if key != "PYTHONPATH" and not key.startswith("HYGIEIA_")}
    return {**env, "MPLBACKEND": "Agg", **extra}


@pytest.mark.slow
def test_score_locally_runs_a_zip_through_both_programs_from_the_kit_alone(tmp_path):
    import subprocess

    from bundle_helpers import build_fake_bundle

    kit = unpack_starting_kit(build_fake_bundle(tmp_path / "build"), tmp_path)
    broken = write_model(tmp_path / "broken", "class Model:\n    def fit(self, X, y)\n")
    from hygieia.submission.loading import zip_submission
    zip_submission(broken, tmp_path / "broken.zip")
    env = kit_environment()

    def score_locally(submission: Path, *options: str):
        return subprocess.run([sys.executable, "score_locally.py", str(submission), *options], cwd=kit, env=env,
                              capture_output=True, text=True, timeout=600)

    good = score_locally(kit / "sample_submission_tabular.zip")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "status: Finished" in good.stdout and "leaderboard row:" in good.stdout
    assert "Accuracy" in good.stdout and (kit / "local_run" / "score_locally" / "scoring" / "output" /
                                          "detailed_results.html").is_file()
    # the hold-out's labels are the participant's own: its page shows the galleries, on the hold-out's images
    zip_submission(write_model(tmp_path / "all_positive", ALL_POSITIVE_MODEL), tmp_path / "all_positive.zip")
    shown = score_locally(tmp_path / "all_positive.zip", "--out", str(tmp_path / "own_run"))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "with per-image results" in shown.stdout
    page = (tmp_path / "own_run" / "scoring" / "output" / "detailed_results.html").read_text()
    for text in ("Per-image results included", "ROC curve", "Most confident false positives", "Best explanations",
                 "Worst explanations", "Every true positive"):
        assert text in page, text
    holdout = ds.load_reference_split(tmp_path / "own_run_data" / ds.REFERENCE_DIR / "valid")
    leaks = find_leaks({"page": page.encode()}, holdout["ids"], holdout["images"])["page"]
    positives, negatives = int(holdout["labels"].sum()), int((1 - holdout["labels"]).sum())
    assert leaks["n_ids"] == positives + min(4, negatives)  # the per-image table (every positive), the captions
    assert leaks["n_images"] == min(4, negatives) + min(positives, 8)  # false positives; best and worst maps
    bad = score_locally(tmp_path / "broken.zip", "--out", str(tmp_path / "bad_run"))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "status: Failed" in bad.stdout and "SyntaxError" in bad.stdout
    wrong = score_locally(kit / "sample_submission_tabular.zip", "--holdout", "1.5")
    assert wrong.returncode == 2 and "hold-out must be a fraction" in wrong.stderr


def readme_commands(readme: Path) -> list[str]:
    """The shell commands of the README's first bash block, comments and blank lines left out."""
    block = readme.read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [command for command in commands if command and not command.startswith("#")]


OWN_PACKAGING = ("pip", "setuptools", "_distutils_hack", "distutils-precedence", "pkg_resources", "__pycache__")


def link_packages(source: Path, target: Path) -> None:
    """Hard-link the packages of the site-packages folder ``source`` into ``target`` (a venv's)."""
    if not source.is_dir():
        return
    for entry in sorted(source.iterdir()):
        if entry.name.startswith(OWN_PACKAGING) or (target / entry.name).exists():
            continue  # the venv's own pip and setuptools
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target / entry.name, copy_function=os.link, symlinks=True)
        else:
            os.link(entry, target / entry.name, follow_symlinks=False)


@pytest.mark.slow
def test_readme_commands_run_the_notebook_and_score_its_zip_in_a_fresh_venv(tmp_path, phantom_prepared, weights_path):
    """Issue 13's "done when": from the unzipped bundle, `pip install -r starting_kit/requirements.txt`
    in a fresh virtual environment, then the kit README's commands, run as written.

    Torch and torchvision cannot be downloaded in the test (about 1 GB), so the fresh venv starts
    with this interpreter's packages hard-linked into its own site-packages (as if installed there:
    the local worker runs each program with ``python -S``, which ignores .pth files; hard links keep
    pip from touching the original files) and pip installs only what they lack from the package
    index: Jupyter's notebook, nbconvert and their dependencies, which the test environment does not
    hold. That proves that the requirements bring `jupyter nbconvert` and the notebook's kernel; that
    they also list every library the programs import is
    test_kit_requirements_hold_every_runtime_requirement_participants_need's job. Skips when the
    package index cannot be reached or the packages cannot be hard-linked (another file system)."""
    import site
    import subprocess

    from hygieia.bundle.build import build_bundle

    bundle = build_bundle(phantom_prepared, tmp_path / "bundle.zip").path
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(tmp_path / "bundle")
    kit = tmp_path / "bundle" / "starting_kit"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        for source in site.getsitepackages():
            link_packages(Path(source), Path(venv_site))
    except OSError as err:
        pytest.skip(f"cannot hard-link this interpreter's packages into {venv_site}: {err}")
    env = kit_environment(PATH=os.pathsep.join([str(venv / "bin"), os.environ["PATH"]]), VIRTUAL_ENV=str(venv),
                          HYGIEIA_FAST="1", HYGIEIA_MOBILENET_WEIGHTS=str(weights_path))

    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd=kit,
                               env=env, capture_output=True, text=True, timeout=900)
    if installed.returncode != 0:
        offline = ("NewConnectionError", "Temporary failure in name resolution", "No matching distribution")
        if any(sign in installed.stdout + installed.stderr for sign in offline):
            pytest.skip(f"the package index cannot be reached: {installed.stderr.strip()[-300:]}")
        raise AssertionError(installed.stdout + installed.stderr)
    assert (venv / "bin" / "jupyter-nbconvert").is_file()  # in the fresh venv, from the requirements

    commands = [c for c in readme_commands(kit / "README.md")
                if not c.startswith(("pip install", "jupyter notebook"))]  # done above / interactive
    assert any("nbconvert" in c for c in commands) and any("score_locally.py" in c for c in commands)
    for command in commands:
        ran = subprocess.run(["bash", "-c", command], cwd=kit, env=env, capture_output=True, text=True, timeout=1800)
        assert ran.returncode == 0, f"{command}\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
        if "score_locally.py" in command:
            assert "status: Finished" in ran.stdout and "leaderboard row:" in ran.stdout
            print(ran.stdout)

    executed = nbformat.read(kit / "README.run.ipynb", as_version=4)
    printed = "".join(outputs(executed, output_type="stream"))
    assert str(python) in printed or str(venv) in printed, "the kernel did not run the fresh venv's python"
    assert "status: Finished" in printed
