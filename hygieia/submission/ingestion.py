"""The ingestion run: fit a submission's Model on train, predict valid and test, explain positives.

Writes to the output folder (each file atomically, as soon as it is ready):

- ``predictions.csv``: id, proba, label for every valid and test image (valid first);
- ``heatmaps.npz``: ``ids`` and ``maps`` (K, H, W) float16 for the valid and test images predicted
  positive (K = 0 and ``explanation`` null in ingestion.json when the model offers no explanation);
- ``ingestion.json``: status ("running", then "ok" or "failed"), the stage running or failed, the
  error {stage, message, traceback}, durations per stage, device, library versions, explanation
  method ("explain", "gradcam" or null), counts. Rewritten as each stage completes.

Any failure (the submission's or the data's) ends the run with a one-line message on stderr and in
ingestion.json, keeps what was already written, and gives exit status 1. A time budget stops a
run before Codabench would kill it, naming the stage that was running.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from hygieia import dataset as ds
from hygieia.errors import HygieiaError
from hygieia.files import write_csv, write_json, write_npz
from hygieia.submission.api import (THRESHOLD, SubmissionError, check_heatmaps, check_labels,
                                    check_probabilities, explanation_method)
from hygieia.submission.gradcam import gradcam_heatmaps
from hygieia.submission.loading import describe_error, forget_modules, import_model_class, open_submission

PREDICTIONS = "predictions.csv"
HEATMAPS = "heatmaps.npz"
REPORT = "ingestion.json"
PREDICTION_COLUMNS = ["id", "proba", "label"]

TIME_BUDGET_ENV = "HYGIEIA_TIME_BUDGET"
DEFAULT_TIME_BUDGET = 540.0  # seconds; Codabench kills a prediction step after 600 s by default
CODABENCH_PATHS = ("/app/input_data", "/app/output", "/app/program", "/app/ingested_program")
USAGE = "usage: ingestion.py [INPUT_DATA OUTPUT PROGRAM_DIR SUBMISSION_DIR]"
HELP = ("Fits the submission's Model on INPUT_DATA/train, predicts valid and test, explains the predicted\n"
        "positives; writes predictions.csv, heatmaps.npz and ingestion.json to OUTPUT. Without arguments:\n"
        f"{' '.join(CODABENCH_PATHS)}.\nTime budget: ${TIME_BUDGET_ENV} seconds "
        f"(default {DEFAULT_TIME_BUDGET:g}).")
VERSIONED = ("numpy", "pandas", "scikit-learn", "torch", "torchvision", "captum")


class TimeBudgetExceeded(BaseException):
    """Raised by the alarm; a BaseException so that ``except Exception`` in a model cannot swallow it."""


@contextmanager
def time_budget(seconds: float | None):
    """Raise TimeBudgetExceeded after ``seconds`` (SIGALRM: main thread on POSIX only, else no limit)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not seconds or not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise TimeBudgetExceeded()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_name() -> str:
    """"cuda (<GPU name>)" when torch sees a GPU, else "cpu"."""
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def call_model(what: str, folder: Path, function, *args):
    """Call the participant's ``function``; any exception becomes a SubmissionError naming ``what``."""
    try:
        return function(*args)
    except SubmissionError:
        raise
    except (Exception, SystemExit) as err:  # untrusted code: report every failure with its place
        raise SubmissionError(f"{what} failed: {describe_error(err, folder)}") from err


def subset(X: dict, mask: np.ndarray) -> dict:
    """The rows of a split mapping where ``mask`` is true (ids, images, features, meta)."""
    ids = [i for i, keep in zip(X["ids"], mask) if keep]
    return {"ids": ids, "images": X["images"][mask], "features": X["features"][mask],
            "meta": X["meta"].loc[ids]}


class Ingestion:
    """One run: the stages, their durations and the report, written to ``output`` as they go."""

    def __init__(self, input_dir, output_dir, submission, budget: float | None):
        self.input_dir, self.output = Path(input_dir), Path(output_dir)
        self.submission = Path(submission)
        self.report = {"status": "running", "stage": None, "error": None, "durations": {},
                       "time_budget": budget, "device": None, "versions": versions(),
                       "explanation": None, "counts": {}, "files": []}
        self.budget = budget
        self.folder = None  # the submission's folder, once opened

    def save(self) -> None:
        write_json(self.output / REPORT, self.report)

    @contextmanager
    def stage(self, name: str):
        self.report["stage"] = name
        self.save()
        start = time.perf_counter()
        yield
        self.report["durations"][name] = round(time.perf_counter() - start, 3)

    def wrote(self, name: str) -> None:
        self.report["files"].append(name)
        self.save()

    def run(self, workdir: Path) -> None:
        with self.stage("load"):
            data = {split: ds.load_input_split(self.input_dir, split) for split in ds.SPLITS}
            y = data["train"].pop("labels", None)
            if y is None:
                raise HygieiaError(f"{self.input_dir / 'train' / ds.LABELS}: file not found")
            self.report["counts"] = {split: len(data[split]["ids"]) for split in ds.SPLITS}
            self.report["device"] = device_name()
        with self.stage("import"):
            folder = self.folder = open_submission(self.submission, workdir).resolve()
            model_class = import_model_class(folder)
            model = call_model("Model()", folder, model_class)
            method = explanation_method(model)
            self.report["explanation"] = method
        with self.stage("fit"):
            call_model("Model.fit", folder, model.fit, dict(data["train"]), y.copy())
        with self.stage("predict"):
            predictions = {split: self.predict(model, folder, data[split], split) for split in ds.SCORED_SPLITS}
            table = pd.concat(predictions.values(), ignore_index=True)
            write_csv(self.output / PREDICTIONS, table)
            for split, frame in predictions.items():
                self.report["counts"][f"{split}_positive"] = int(frame["label"].sum())
            self.wrote(PREDICTIONS)
        with self.stage("explain"):
            ids, maps = self.explain(model, method, folder, data, predictions)
            write_npz(self.output / HEATMAPS, ids=np.array(ids, dtype=str), maps=maps)
            self.report["counts"]["heatmaps"] = len(ids)
            self.wrote(HEATMAPS)

    def predict(self, model, folder: Path, X: dict, split: str) -> pd.DataFrame:
        # Models get shallow copies of X: one that pops or replaces a key does not break later stages.
        proba = check_probabilities(call_model("Model.predict_proba", folder, model.predict_proba, dict(X)),
                                    X["ids"], split)
        if callable(getattr(model, "predict", None)):
            label = check_labels(call_model("Model.predict", folder, model.predict, dict(X)), X["ids"], split)
        else:
            label = (proba >= THRESHOLD).astype(np.int64)
        return pd.DataFrame({"id": X["ids"], "proba": proba, "label": label})

    def explain(self, model, method, folder: Path, data: dict, predictions: dict):
        """Heatmaps of the predicted positives of valid and test: (ids, (K, H, W) float16)."""
        shape = data["valid"]["images"].shape[1:]
        ids, maps = [], []
        if method == "gradcam":
            module, layer = self.gradcam_target(model, folder)
        for split in ds.SCORED_SPLITS:
            positives = subset(data[split], predictions[split]["label"].to_numpy() == 1)
            if not positives["ids"] or method is None:
                continue
            if method == "explain":
                what = "Model.explain"
                raw = call_model(what, folder, model.explain, positives)
            else:
                what = "Grad-CAM on Model.gradcam_target()"
                raw = call_model(what, folder, lambda: gradcam_heatmaps(module, layer, positives["images"],
                                                                        progress=True))
            maps.append(check_heatmaps(raw, positives["ids"], shape, split, what))
            ids.extend(positives["ids"])
        stacked = np.concatenate(maps) if maps else np.zeros((0, *shape), np.float16)
        return ids, stacked

    def gradcam_target(self, model, folder: Path):
        target = call_model("Model.gradcam_target", folder, model.gradcam_target)
        if not (isinstance(target, tuple) and len(target) == 2):
            raise SubmissionError(f"Model.gradcam_target() returned {type(target).__name__}; "
                                  f"expected a tuple (module, layer)")
        return target

    def fail(self, err: BaseException) -> str:
        stage = self.report["stage"]
        if isinstance(err, TimeBudgetExceeded):
            message = (f"time budget of {self.budget:g} s exceeded during {stage} "
                       f"(set by --time-budget or ${TIME_BUDGET_ENV})")
        else:
            message = str(err) if isinstance(err, HygieiaError) else f"{type(err).__name__}: {err}"
        trace = "".join(traceback.format_exception(err))
        self.report.update(status="failed", error={"stage": stage, "message": message, "traceback": trace})
        self.save()
        print(trace, file=sys.stderr)
        return f"ingestion failed during {stage}: {message}"


def run_ingestion(input_dir, output_dir, submission, time_budget_s: float | None = DEFAULT_TIME_BUDGET) -> dict:
    """Run a submission (folder or zip) on ``input_dir``; write to ``output_dir``; return the report.

    Raises nothing for a failing run: the report's status says "failed" and ``error`` holds
    {stage, message, traceback}; the message is also printed to stderr.
    """
    run = Ingestion(input_dir, output_dir, submission, time_budget_s)
    path_before = list(sys.path)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="hygieia-submission-") as workdir, time_budget(time_budget_s):
            run.run(Path(workdir))
    except (Exception, TimeBudgetExceeded) as err:  # every failure goes to ingestion.json, named
        print(run.fail(err), file=sys.stderr)
    else:
        run.report.update(status="ok", stage=None)
        run.save()
    finally:
        sys.path[:] = path_before
        if run.folder is not None:
            forget_modules(run.folder)
    run.report["durations"]["total"] = round(time.perf_counter() - start, 3)
    run.save()
    return run.report


def budget_from_env() -> float:
    value = os.environ.get(TIME_BUDGET_ENV)
    if not value:
        return DEFAULT_TIME_BUDGET
    try:
        budget = float(value)
    except ValueError:
        budget = -1.0
    if not budget > 0:
        raise HygieiaError(f"${TIME_BUDGET_ENV}={value!r}: expected a positive number of seconds")
    return budget


def main(argv: list[str] | None = None) -> int:
    """``ingestion.py [INPUT_DATA OUTPUT PROGRAM_DIR SUBMISSION_DIR]``; no arguments: Codabench's /app paths."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{HELP}")
        return 0
    if len(argv) not in (0, 4):
        print(USAGE, file=sys.stderr)
        return 2
    input_dir, output_dir, _program_dir, submission = argv or CODABENCH_PATHS
    try:
        budget = budget_from_env()
    except HygieiaError as err:
        print(f"ingestion: error: {err}", file=sys.stderr)
        return 2
    report = run_ingestion(input_dir, output_dir, submission, budget)
    if report["status"] != "ok":
        return 1
    counts = report["counts"]
    print(f"ingestion ok in {report['durations']['total']:.1f} s on {report['device']}: "
          f"{counts['valid'] + counts['test']} predictions, {counts['heatmaps']} heatmaps "
          f"({report['explanation'] or 'no explanation'})")
    return 0
