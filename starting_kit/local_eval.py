"""Local evaluation for the starting kit: stratified k-fold cross-validation of a submission on the
public train split, and a submission zip scored by the local Codabench worker against a small
bundle made of the kit's programs and a labelled hold-out of train (``score_locally.py``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, fbeta_score, precision_score,
                             recall_score, roc_auc_score)
from sklearn.model_selection import StratifiedKFold, train_test_split

from hygieia import dataset as ds
from hygieia.bundle.archive import folder_entries, write_zip
from hygieia.bundle.build import DEFAULT_TIME_LIMIT, INPUT_ZIP, PROGRAMS, leaderboard_columns
from hygieia.bundle.worker import run_submission
from hygieia.errors import HygieiaError
from hygieia.files import write_csv, write_json, write_npy, write_text
from hygieia.prepare.prior import box_prior
from hygieia.submission.child import subset
from hygieia.submission.loading import forget_modules, import_model_class

SEED = 0
PHASE = "Development"
HOLDOUT = 0.3
FAST_IMAGES = 300  # HYGIEIA_FAST=1: at most this many training images, as the sample submissions


def split_rows(labels: np.ndarray, holdout: float, limit: int | None = None) -> dict[str, np.ndarray]:
    """Row indices of train for local train / valid / test: the hold-out (stratified) is halved into
    valid and test. ``limit`` keeps at most that many rows in all (a quick run)."""
    if not 0 < holdout < 1:
        raise HygieiaError(f"the hold-out must be a fraction between 0 and 1, got {holdout}")
    rows = limited_rows(labels, limit)
    train, held = train_test_split(rows, test_size=holdout, stratify=labels[rows], random_state=SEED)
    valid, test = train_test_split(held, test_size=0.5, stratify=labels[held], random_state=SEED)
    return {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}


def limited_rows(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """All row indices, or a stratified ``limit`` of them (a quick run)."""
    rows = np.arange(len(labels))
    if limit is not None and limit < len(rows):
        rows, _ = train_test_split(rows, train_size=limit, stratify=labels, random_state=SEED)
    return np.sort(rows)


def fold_metrics(y: np.ndarray, proba: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """The leaderboard's classification columns (and balanced accuracy) for one held-out fold."""
    return {"accuracy": accuracy_score(y, label), "balanced_accuracy": balanced_accuracy_score(y, label),
            "fbeta2": fbeta_score(y, label, beta=2, zero_division=0),
            "recall": recall_score(y, label, zero_division=0),
            "precision": precision_score(y, label, zero_division=0),
            "auroc": roc_auc_score(y, proba) if len(set(y)) == 2 else float("nan")}


def fold_rows(labels: np.ndarray, folds: int, limit: int | None = None):
    """(fitted rows, held-out rows) of each fold of a stratified ``folds``-fold split of ``labels``'
    rows (or of a stratified ``limit`` of them), as row indices of the split."""
    rows = limited_rows(labels, limit)
    if np.bincount(labels[rows], minlength=2).min() < folds:
        raise HygieiaError(f"{folds}-fold cross-validation needs at least {folds} images of each class; "
                           f"the rows used hold {np.bincount(labels[rows], minlength=2).tolist()}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=SEED)
    return [(rows[fit], rows[held]) for fit, held in splitter.split(rows, labels[rows])]


def cross_validate(submission: str | Path, X: dict, folds: int = 5, limit: int | None = None) -> pd.DataFrame:
    """Stratified ``folds``-fold cross-validation of the submission folder's ``Model`` on the labelled
    split ``X``: each fold is fitted on the others, as ingestion fits on train (with their boxes),
    and predicts its own images without their labels and boxes. One row of metrics per fold."""
    Model = import_model_class(submission)
    everything = np.arange(len(X["ids"]))
    results = []
    try:
        for fold, (fit_rows, held_rows) in enumerate(fold_rows(X["labels"], folds, limit)):
            fit_mask, held_mask = np.isin(everything, fit_rows), np.isin(everything, held_rows)
            fit_X, held_X = subset(X, fit_mask), subset(X, held_mask)
            fit_X["boxes"] = X["boxes"][X["boxes"]["id"].isin(set(fit_X["ids"]))].reset_index(drop=True)
            model = Model()
            model.fit(fit_X, X["labels"][fit_mask])
            proba = np.asarray(model.predict_proba(held_X), dtype=float)
            label = np.asarray(model.predict(held_X) if hasattr(model, "predict") else proba >= 0.5).astype(int)
            results.append({"fold": fold, "n_fit": int(fit_mask.sum()), "n_held": int(held_mask.sum()),
                            **fold_metrics(X["labels"][held_mask], proba, label)})
    finally:
        forget_modules(submission)
    return pd.DataFrame(results).set_index("fold")


def write_local_dataset(X: dict, rows: dict[str, np.ndarray], root: str | Path) -> Path:
    """``root/input_data`` and ``root/reference_data`` in the competition's layout, from the rows of
    the public train split ``X``: labels and boxes of valid and test go to the reference side only."""
    root = Path(root)
    for split, index in rows.items():
        ids = [X["ids"][i] for i in index]
        labels = pd.DataFrame({"id": ids, "label": X["labels"][index]})
        boxes = X["boxes"][X["boxes"]["id"].isin(set(ids))]
        meta = X["meta"].loc[ids].reset_index()
        public = root / ds.INPUT_DIR / split
        write_npy(public / ds.IMAGES, X["images"][index])
        write_npy(public / ds.FEATURES, X["features"][index])
        write_csv(public / ds.META, meta)
        hidden = public if split == "train" else root / ds.REFERENCE_DIR / split
        write_csv(hidden / ds.LABELS, labels if split == "train" else labels.assign(probe=0))
        write_csv(hidden / ds.BOXES, boxes)
        if split != "train":  # the reference side's layout; the view position is not public
            write_csv(hidden / ds.META, meta.reindex(columns=ds.META_COLUMNS))
            write_npy(hidden / ds.IMAGES, X["images"][index])
            train = rows["train"]
            train_boxes = [X["boxes"].loc[X["boxes"]["id"] == X["ids"][i], ["x", "y", "width", "height"]].to_numpy()
                           for i in train if X["labels"][i] == 1]
            write_npy(hidden / ds.BOX_PRIOR, box_prior(train_boxes, X["images"].shape[1:]))
            write_json(hidden / ds.SPLIT_INFO, {"split": split, "final": False})
    return root


def run_program(*command, tail: int = 25) -> None:
    """Run ``python command...``; print the last lines of its output; raise if it fails."""
    result = subprocess.run([sys.executable, *map(str, command)], capture_output=True, text=True)
    # tqdm redraws its bar with carriage returns: keep each line's last state
    lines = [line.split("\r")[-1] for line in (result.stdout + result.stderr).split("\n")]
    print("\n".join([line for line in lines if line.strip()][-tail:]))
    if result.returncode != 0:
        raise RuntimeError(f"{Path(str(command[0])).name} exited with status {result.returncode}; "
                           "its output is above")


def write_local_bundle(kit: Path, local: Path, folder: Path) -> Path:
    """A bundle folder as the local worker reads it: the kit's two programs, ``local``'s input data,
    and one development phase scored on ``local``'s valid reference."""
    if folder.exists():
        shutil.rmtree(folder)
    for program in PROGRAMS:
        shutil.copytree(kit / program, folder / program, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(local / ds.REFERENCE_DIR / "valid", folder / ds.REFERENCE_DIR / "valid")
    write_zip(folder / INPUT_ZIP, folder_entries(local / ds.INPUT_DIR))   # train/ valid/ test/ at its root
    competition = {
        "version": 2,
        "title": "Hygieia, local check",
        "tasks": [{"index": 0, "name": "Local task", "input_data": INPUT_ZIP,
                   "reference_data": f"{ds.REFERENCE_DIR}/valid",
                   "ingestion_program": PROGRAMS[0], "scoring_program": PROGRAMS[1]}],
        "phases": [{"index": 0, "name": PHASE, "tasks": [0], "execution_time_limit": DEFAULT_TIME_LIMIT}],
        "leaderboards": [{"index": 0, "title": "Results", "key": "main", "columns": leaderboard_columns()}],
    }
    write_text(folder / "competition.yaml", yaml.safe_dump(competition, sort_keys=False))
    return folder


def score_submission(kit: Path, submission: Path, data: Path, output: Path, *, holdout: float = HOLDOUT,
                     fast: bool = False):
    """Run the submission zip through the local Codabench worker, on a stratified hold-out of the
    public train split in ``data``, with the per-image results (galleries of the most confident
    errors and of the best and worst maps against the boxes, the per-image table) that the platform
    never shows; print the worker's report. Returns the worker's result (status, scores, leaderboard
    row, logs)."""
    submission, data, output = Path(submission), Path(data), Path(output)
    if (data / ds.INPUT_DIR).is_dir():
        data = data / ds.INPUT_DIR
    train = ds.load_input_split(data, "train")
    rows = split_rows(train["labels"], holdout, FAST_IMAGES if fast else None)
    local = write_local_dataset(train, rows, output.parent / f"{output.name}_data")
    bundle = write_local_bundle(kit, local, output.parent / f"{output.name}_bundle")
    # The worker passes none of this shell's HYGIEIA_* settings to the programs, as Codabench.
    env = {"HYGIEIA_FAST": "1"} if fast else None
    # The hold-out's labels are the participant's own: per-image results (galleries, per-image table),
    # which the platform never shows.
    result = run_submission(submission, bundle, phase=PHASE, out_dir=output, echo=False, env=env, per_image=True)
    print(result.report())
    return result
