"""Local evaluation for the starting kit: a labelled hold-out carved from the public train split,
the competition's own ingestion and scoring programs run on it, and a submission zip checked by
the local Codabench worker against a small bundle made of the kit's programs and that hold-out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.model_selection import train_test_split

from hygieia import dataset as ds
from hygieia.bundle.archive import folder_entries, write_zip
from hygieia.bundle.build import INPUT_ZIP, PROGRAMS, leaderboard_columns
from hygieia.bundle.worker import DEFAULT_TIME_LIMIT, run_submission
from hygieia.files import write_csv, write_json, write_npy, write_text
from hygieia.prepare.prior import box_prior

SEED = 0
PHASE = "Development"


def split_rows(labels: np.ndarray, holdout: float, limit: int | None = None) -> dict[str, np.ndarray]:
    """Row indices of train for local train / valid / test: the hold-out (stratified) is halved into
    valid and test. ``limit`` keeps at most that many rows in all (a quick run)."""
    rows = np.arange(len(labels))
    if limit is not None and limit < len(rows):
        rows, _ = train_test_split(rows, train_size=limit, stratify=labels, random_state=SEED)
    train, held = train_test_split(rows, test_size=holdout, stratify=labels[rows], random_state=SEED)
    valid, test = train_test_split(held, test_size=0.5, stratify=labels[held], random_state=SEED)
    return {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}


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


def ingest(kit: Path, input_data: Path, submission: Path, output: Path) -> Path:
    """The ingestion program: train ``submission`` on ``input_data``; predictions go to ``output``."""
    if output.exists():
        shutil.rmtree(output)
    program = kit / "ingestion_program"
    run_program(program / "ingestion.py", input_data, output, program, submission)
    return output


def score(kit: Path, reference: Path, predictions: Path, output: Path) -> Path:
    """The scoring program on one reference split and one ingestion output; results go to ``output``."""
    if output.exists():
        shutil.rmtree(output)
    run_program(kit / "scoring_program" / "score.py", reference, predictions, output)
    return output


def write_local_bundle(kit: Path, local: Path, folder: Path) -> Path:
    """A bundle folder as the local worker reads it: the kit's two programs, ``local``'s input data,
    and one development phase scored on ``local``'s valid reference."""
    if folder.exists():
        shutil.rmtree(folder)
    for program in PROGRAMS:
        shutil.copytree(kit / program, folder / program, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(local / ds.REFERENCE_DIR / "valid", folder / ds.REFERENCE_DIR / "valid")
    write_zip(folder / INPUT_ZIP, folder_entries(local / ds.INPUT_DIR, f"{ds.INPUT_DIR}/"))
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


def check_submission(kit: Path, submission: Path, local: Path, output: Path):
    """Run the submission zip through the local Codabench worker on the local hold-out; raise unless
    it finishes. Returns the worker's result (status, scores, leaderboard row, logs)."""
    bundle = write_local_bundle(kit, local, output.parent / f"{output.name}_bundle")
    result = run_submission(submission, bundle, phase=PHASE, out_dir=output, echo=False)
    print(result.report())
    if result.status != "Finished":
        raise RuntimeError(f"the local worker did not accept {submission.name}: {result.error}")
    return result
