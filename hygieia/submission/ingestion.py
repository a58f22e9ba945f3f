"""The ingestion program: fit a submission's Model on train, predict valid and test, explain positives.

Two processes. This one is trusted: it reads the input data's ids, unzips the submission (bounded),
starts the submission's own process (``hygieia.submission.child``: load, import, fit, predict,
explain) where it cannot reach ingestion (``hygieia.submission.isolation``: its own user and PID
namespaces where the machine allows), enforces the time budget, ends that process and every
descendant at the end or at the budget, and only once they are all gone checks what it left in a
private folder and writes the output folder itself:

- ``predictions.csv``: id, proba, label for every valid and test image (valid first);
- ``heatmaps.npz``: ``ids`` and ``maps`` (K, H, W) float16 for the valid and test images predicted
  positive, each map divided by its own maximum (K = 0 and ``explanation`` null in ingestion.json
  when the model offers no explanation);
- ``ingestion.json``: status ("running", then "ok" or "failed"), the stage running or failed, the
  error {stage, message, traceback}, durations per stage, ``device`` (what ingestion sees: "cpu",
  "cpu; GPU: <model>"), library versions, explanation method ("explain", "gradcam" or null: what the
  submission's process says it used; ingestion checks that a map came for each predicted positive),
  ``claims`` (what the submission's process said: explanation, device), counts (``zero_heatmaps``:
  all-zero maps), the time budget and where it came from, ``isolation`` (the mechanism, and what it
  does not protect). Rewritten as stages start (at most every REPORT_INTERVAL seconds for the
  submission's progress messages); written last by this process.

Nothing the submission writes can make a run look finished: a budget overrun, an interrupt, a crash
or an exit from inside the model (``os._exit``, an ``atexit`` handler) is reported as such, and
output files this process did not write are removed, as is any link, FIFO or device in the output
folder (none is followed, and the run fails). Any failure ends the run with a one-line message
on stderr and in ingestion.json, keeps what was already produced, and gives a non-zero exit status.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np

import hygieia
from hygieia import dataset as ds
from hygieia.dataset import IngestionFailed
from hygieia.errors import DataError, HygieiaError
from hygieia.files import (entry_kind, require_dir, require_file_or_dir, special_entries, writable_dir, write_csv,
                           write_json, write_npz)
from hygieia.submission import child, evidence, isolation
from hygieia.submission.api import check_labels, check_probabilities
from hygieia.submission.gradcam import RANDOMISATION_STAGES
from hygieia.submission.isolation import SubmissionProcess, changed_limits, make_undumpable, own_limits
from hygieia.submission.loading import MAX_BYTES_ENV, MAX_ENTRIES_ENV, open_submission, unwrap
from hygieia.submission.processes import become_subreaper

PREDICTIONS, HEATMAPS, REPORT, WORKER_METADATA = ds.PREDICTIONS, ds.HEATMAPS, ds.INGESTION_REPORT, ds.WORKER_METADATA
OUTPUTS = (PREDICTIONS, HEATMAPS, ds.EVIDENCE, WORKER_METADATA)  # only this run writes them

TIME_BUDGET_ENV = "HYGIEIA_TIME_BUDGET"
BUDGET_FILE = "budget.json"  # {"time_budget_s": S} in the ingestion program's folder, from the bundle builder
DEFAULT_TIME_BUDGET = 540.0  # seconds; Codabench kills a prediction step after 600 s by default
CODABENCH_PATHS = ("/app/input_data", "/app/output", "/app/program", "/app/ingested_program")
USAGE = "usage: ingestion.py [INPUT_DATA OUTPUT PROGRAM_DIR SUBMISSION_DIR]"
HELP = ("Fits the submission's Model on INPUT_DATA/train, predicts valid and test, explains the predicted\n"
        "positives; writes predictions.csv, heatmaps.npz and ingestion.json to OUTPUT. Without arguments:\n"
        f"{' '.join(CODABENCH_PATHS)}.\nTime budget: ${TIME_BUDGET_ENV} seconds, else PROGRAM_DIR/{BUDGET_FILE} "
        f"({{\"time_budget_s\": S}}), else {DEFAULT_TIME_BUDGET:g}.\nA zipped submission is unpacked within "
        f"${MAX_BYTES_ENV} MB and ${MAX_ENTRIES_ENV} entries.")
VERSIONED = ("numpy", "pandas", "scikit-learn", "torch", "torchvision", "captum")
CHILD_STAGES = ("load", "import", "fit", "predict", "evidence", "explain")
MESSAGE_LIMIT = 1 << 20  # bytes of one progress line from the submission's process
ROW_BYTES = 200  # the most a line of predictions.csv may take (id, proba, label)
TRACEBACK_LIMIT = 20_000  # characters of the submission's traceback kept in ingestion.json
REPORT_INTERVAL = 0.25  # seconds: the most often progress messages rewrite ingestion.json
NO_NAMESPACES_ENV = "HYGIEIA_NO_NAMESPACES"  # "1": as where namespaces are refused (tests of the fallbacks)


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached ingestion."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def identity(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, type) of what is at ``path`` (a link itself, not followed), or None."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino, stat.S_IFMT(info.st_mode)


def open_folders(root: Path) -> None:
    """Give this process (their owner, as the submission's) back full access to ``root`` and every folder
    under it, links not followed, so that they can be listed and removed."""
    todo = [root]
    while todo:
        folder = todo.pop()
        try:
            os.chmod(folder, 0o700)
            todo += [Path(entry.path) for entry in os.scandir(folder) if entry.is_dir(follow_symlinks=False)]
        except OSError:
            continue  # not ours: removing it fails below, naming it


def observed_device() -> str:
    """What ingestion sees of the devices the submission's process may use: "cpu", or "cpu; GPU: <model>"
    for each NVIDIA GPU the driver lists (what the model used is only its own claim)."""
    models = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            text = info.read_text(errors="replace")
        except OSError:
            continue
        models += [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model:")]
    return "cpu" + (f"; GPU: {', '.join(models)}" if models else "")


def locate_input_data(input_dir: Path) -> Path:
    """``input_dir`` with train/ valid/ test/ at its root, as Codabench lays it, or its one wrapper folder."""
    found = unwrap(input_dir, "train") if input_dir.is_dir() else None
    if found is not None and found != input_dir:
        print(f"ingestion: the input data is inside the wrapper folder {found.name}/ of {input_dir}; using it")
    return found or input_dir


@contextmanager
def signals_interrupt():
    """SIGINT and SIGTERM raise Interrupted in the main thread (elsewhere: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Ingestion:
    """One run: the stages, their durations and the report, written to ``output`` as they go."""

    def __init__(self, input_dir, output_dir, submission, budget: float | None, budget_source: str,
                 limits: tuple[int, int] | None = None):
        self.input_dir, self.output = Path(input_dir), Path(output_dir)
        self.submission, self.limits = Path(submission), limits
        self.budget = budget
        self.isolation = isolation.choose(without_namespaces=os.environ.get(NO_NAMESPACES_ENV) == "1")
        self.report = {"status": "running", "stage": None, "error": None, "durations": {},
                       "time_budget": budget, "time_budget_source": budget_source, "device": observed_device(),
                       "versions": versions(), "explanation": None, "claims": {}, "counts": {}, "files": [],
                       "isolation": self.isolation.report()}
        self.lock = threading.Lock()
        self.closed = False  # once set, progress messages no longer rewrite ingestion.json
        self.dirty = False  # messages changed the report since it was last written
        self.started = {}
        self.child = {"error": None, "finished": False, "unreadable": 0}
        self.over_budget, self.exit_status, self.all_ended = False, None, True
        self.output_identity, self.output_mode, self.present_before, self.output_problems = None, None, {}, []

    def save(self) -> None:
        write_json(self.output / REPORT, self.report)
        self.dirty = False

    def flush(self) -> None:
        """Write the report if messages changed it since the last write (best effort: the submission may
        have locked the output folder; the last write comes after ``clean_output``)."""
        with self.lock:
            if self.dirty and not self.closed:
                try:
                    self.save()
                except OSError as err:
                    print(f"ingestion: could not update {self.output / REPORT} during the run: {err}", file=sys.stderr)

    def begin(self, name: str, save: bool = True) -> None:
        self.report["stage"] = name
        self.started[name] = time.perf_counter()
        self.dirty = True
        if save:
            self.save()

    def end(self, name: str) -> None:
        if name in self.started:
            elapsed = time.perf_counter() - self.started.pop(name)
            self.report["durations"][name] = round(self.report["durations"].get(name, 0) + elapsed, 3)

    @contextmanager
    def stage(self, name: str):
        self.begin(name)
        yield
        self.end(name)

    def run(self, workdir: Path) -> None:
        deadline = time.monotonic() + self.budget if self.budget else None
        with self.stage("load"):
            self.input_dir = locate_input_data(self.input_dir)
            scored = {split: ds.load_input_split(self.input_dir, split, features=False)
                      for split in ds.SCORED_SPLITS}
            self.ids = {split: scored[split]["ids"] for split in ds.SCORED_SPLITS}
            self.shape = scored["valid"]["images"].shape[1:]
            self.report["counts"] = {split: len(ids) for split, ids in self.ids.items()}
        with self.stage("alter"):  # the copies that measure where the model's decision comes from
            self.sampled = evidence.write_input(self.input_dir, workdir / "evidence")
            self.report["evidence"] = {"grid": evidence.GRID, "cells": evidence.GRID ** 2,
                                       "images": {split: len(ids) for split, ids in self.sampled.items()},
                                       "copies": evidence.GRID ** 2 * sum(map(len, self.sampled.values()))}
        with self.stage("import"):
            folder = open_submission(self.submission, workdir / "submission", self.limits).resolve()
        results = workdir / "results"
        results.mkdir()
        unusable = None
        try:
            self.run_child(folder, results, workdir / "evidence", deadline)
        finally:
            if self.all_ended:  # nothing of the submission runs any more: what it left in the output goes
                self.clean_output()
            try:
                self.publish(results)
            except HygieiaError as err:  # reported after the child's own failure, which comes first
                unusable = err
        self.check_child_finished()
        if unusable is not None:
            raise unusable
        for name, what in ((ds.EVIDENCE, "its answers on the altered copies"), (HEATMAPS, "its heatmaps")):
            if name not in self.report["files"]:
                raise IngestionFailed(f"the submission's process finished without writing {what}")

    def run_child(self, folder: Path, results: Path, evidence_dir: Path, deadline: float | None) -> None:
        """Run the submission's process to its end or to the deadline; end every process it started."""
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(hygieia.__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}

        def argv(parent: str) -> list[str]:
            return [sys.executable, "-m", child.__name__, str(self.input_dir.resolve()), str(folder),
                    str(results), str(write_fd), parent, str(evidence_dir)]

        limits = own_limits()
        try:
            process = SubmissionProcess(self.isolation, argv, (write_fd,), env)
        finally:
            os.close(write_fd)
        reader = threading.Thread(target=self.read_messages, args=(read_fd,), daemon=True)
        reader.start()
        try:
            while not process.wait(REPORT_INTERVAL):
                self.flush()
                if deadline is not None and time.monotonic() >= deadline:
                    self.over_budget = True
                    break
            # Time the submission stole by stopping ingestion (SIGSTOP) counts too.
            if deadline is not None and time.monotonic() > deadline + REPORT_INTERVAL:
                self.over_budget = True
        finally:
            ended = process.finish()
            self.all_ended = not ended.survivors
            reader.join(timeout=5)
        self.exit_status = ended.returncode
        self.report["isolation"] = self.isolation.report()
        if ended.survivors:
            raise IngestionFailed(f"{len(ended.survivors)} process(es) the submission started could not be stopped "
                            f"(a fork chain?) under the isolation '{self.isolation.mechanism}'; their output "
                            "is not used")
        if ended.problem:
            raise IngestionFailed(ended.problem)
        if ended.others:
            print(f"ingestion: stopped {ended.others} more process(es) the submission had started", file=sys.stderr)
        changed = changed_limits(limits)
        if changed:
            raise IngestionFailed(f"the submission changed ingestion's resource limits ({changed})")

    def read_messages(self, fd: int) -> None:
        """Progress lines from the submission's process (its claims). They update the report in memory;
        the main thread writes it at most every REPORT_INTERVAL seconds (``flush``)."""
        with os.fdopen(fd, "rb") as stream:
            for line in iter(lambda: stream.readline(MESSAGE_LIMIT), b""):
                with self.lock:
                    if not self.closed:
                        self.on_message(line)

    def on_message(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            kind, value = next(iter(message.items()))
        except (ValueError, AttributeError, StopIteration):
            self.child["unreadable"] += 1
            return
        if kind == "stage" and value in CHILD_STAGES:
            self.begin(value, save=False)
        elif kind == "done" and value in CHILD_STAGES:
            self.end(value)
        elif kind == "info" and isinstance(value, dict):
            claims = self.report["claims"]
            if isinstance(value.get("device"), str):
                claims["device"] = value["device"][:200]
            if value.get("explanation") in (*ds.EXPLANATION_METHODS, None) and "explanation" in value:
                claims["explanation"] = self.report["explanation"] = value["explanation"]
            self.dirty = True
        elif kind == "error" and isinstance(value, dict) and isinstance(value.get("message"), str):
            self.child["error"] = value
        elif kind == "finished" and value is True:
            self.child["finished"] = True
        else:
            self.child["unreadable"] += 1

    def check_child_finished(self) -> None:
        """Raise IngestionFailed unless the submission's process ended by finishing every stage (its heatmaps
        are checked after the publishing's own error, which says more)."""
        stage = self.report["stage"]
        error, status = self.child["error"], self.exit_status
        if self.over_budget:
            raise IngestionFailed(f"time budget of {self.budget:g} s ({self.report['time_budget_source']}) exceeded "
                                  f"during {stage}; the submission's processes were stopped")
        if error is not None:
            raise IngestionFailed(error["message"], str(error.get("traceback") or "")[-TRACEBACK_LIMIT:])
        if status is not None and status < 0:
            try:
                name = signal.Signals(-status).name
            except ValueError:
                name = str(-status)
            raise IngestionFailed(f"the submission's process was killed by signal {name} during {stage}"
                                  + (" (out of memory?)" if -status == signal.SIGKILL else ""))
        if not self.child["finished"] or status != 0:
            raise IngestionFailed(f"the submission's process exited with status {status} during {stage} without "
                                  f"finishing (os._exit() or exit() from the submission, or an atexit handler?)")
        if self.child["unreadable"]:
            raise IngestionFailed(f"the submission's process sent {self.child['unreadable']} unreadable progress "
                                  f"message(s) to ingestion")

    def publish(self, results: Path) -> None:
        """Check what the submission's process left in ``results``; write it to the output folder (not
        while a process it started may still be running)."""
        if not self.all_ended or not self.result_file(results / PREDICTIONS):
            return
        predictions = self.checked_predictions(results / PREDICTIONS)
        write_csv(self.output / PREDICTIONS, predictions[ds.PREDICTION_COLUMNS])
        self.report["files"].append(PREDICTIONS)
        for split in ds.SCORED_SPLITS:
            positive = predictions["label"][predictions["split"] == split]
            self.report["counts"][f"{split}_positive"] = int(positive.sum())
        if not self.result_file(results / evidence.ANSWERS):
            return
        write_npz(self.output / ds.EVIDENCE, **evidence.measured(self.sampled, self.shape, self.checked_answers(
            results / evidence.ANSWERS), predictions))
        self.report["files"].append(ds.EVIDENCE)
        if not self.result_file(results / HEATMAPS):
            return
        ids, maps = self.checked_heatmaps(results / HEATMAPS, predictions)
        write_npz(self.output / HEATMAPS, ids=ids, maps=maps)
        self.report["files"].append(HEATMAPS)
        self.report["counts"]["heatmaps"] = len(ids)
        self.report["counts"]["zero_heatmaps"] = int((~maps.any(axis=(1, 2))).sum())
        if self.result_file(results / evidence.RANDOMISATION):
            self.report["randomisation"] = self.checked_randomisation(results / evidence.RANDOMISATION)

    @staticmethod
    def result_file(path: Path) -> bool:
        """Whether the submission's process left a file at ``path``; IngestionFailed for a link, FIFO or device
        (refused without being followed or read, so no read can block)."""
        kind = entry_kind(path)
        if kind not in (None, "file"):
            raise IngestionFailed(f"{path.name} of the submission's process is a {kind}: refused without following "
                            "or reading it")
        return kind == "file"

    def checked_predictions(self, path: Path):
        what = f"{PREDICTIONS} of the submission's process"
        expected = [i for split in ds.SCORED_SPLITS for i in self.ids[split]]
        if path.stat().st_size > ROW_BYTES * (len(expected) + 1):
            raise IngestionFailed(f"{what}: {path.stat().st_size} bytes, too large for {len(expected)} rows")
        table = ds.read_table(path, ds.PREDICTION_COLUMNS)
        if table["id"].tolist() != expected:
            raise IngestionFailed(f"{what}: its ids are not the valid and test ids in order")
        table["split"] = [split for split in ds.SCORED_SPLITS for _ in self.ids[split]]
        for split in ds.SCORED_SPLITS:
            rows = table["split"] == split
            check_probabilities(table["proba"][rows].to_numpy(), self.ids[split], split)
            check_labels(table["label"][rows].to_numpy(), self.ids[split], split)
        return table

    def checked_answers(self, path: Path):
        """The submission's probabilities of the altered copies: every copy's id in order, each in [0, 1]."""
        what = f"{evidence.ANSWERS} of the submission's process"
        expected = evidence.expected_copies(self.sampled, evidence.GRID ** 2)
        if path.stat().st_size > ROW_BYTES * (len(expected) + 1):
            raise IngestionFailed(f"{what}: {path.stat().st_size} bytes, too large for {len(expected)} rows")
        table = ds.read_table(path, ["id", "proba"])
        if table["id"].tolist() != expected:
            raise IngestionFailed(f"{what}: its ids are not the altered copies' ids in order")
        check_probabilities(table["proba"].to_numpy(), expected, "altered copies")
        return table

    def checked_randomisation(self, path: Path) -> dict:
        """The randomisation check the submission's process ran: stages with a rank correlation in [-1, 1]."""
        what = f"{evidence.RANDOMISATION} of the submission's process"
        if path.stat().st_size > 100_000:
            raise IngestionFailed(f"{what}: {path.stat().st_size} bytes, far more than the check writes")
        found = ds.read_json(path)
        stages = found.get("stages") if isinstance(found, dict) else None
        good = isinstance(stages, list) and all(
            isinstance(stage, dict) and stage.get("stage") in RANDOMISATION_STAGES
            and isinstance(stage.get("modules"), int) and isinstance(stage.get("parameters"), int)
            and isinstance(stage.get("rank_correlation"), (int, float, type(None)))
            and (stage["rank_correlation"] is None or -1 <= stage["rank_correlation"] <= 1) for stage in stages)
        if not good or not isinstance(found.get("images"), int) \
                or not isinstance(found.get("error"), (str, type(None))):
            raise IngestionFailed(f"{what}: not what the check writes")
        return {"stages": stages, "images": found["images"], "error": (found["error"] or "")[:2000] or None}

    def checked_heatmaps(self, path: Path, predictions):
        positives = predictions["id"][predictions["label"] == 1].tolist() if self.report["explanation"] else []
        what = f"{HEATMAPS} of the submission's process"
        largest = 2 * len(positives) * (int(np.prod(self.shape)) * 2 + 100) + (1 << 20)  # deflate never doubles
        if path.stat().st_size > largest:
            raise IngestionFailed(f"{what}: {path.stat().st_size} bytes, too large for {len(positives)} maps")
        try:
            ids, maps = ds.read_heatmaps(path, self.shape, limit=len(positives), name=what)
        except DataError as err:
            raise IngestionFailed(str(err)) from err
        if ids.tolist() != positives:
            raise IngestionFailed(f"{what}: its ids are not the predicted positives in order")
        return ids, maps

    def clean_output(self) -> None:
        """Once nothing of the submission runs: remove from the output folder every link, FIFO, socket or
        device (at any depth, without following any), the worker's ``metadata`` and the outputs this run
        did not write (forgeries or stale ones); give back the folder's permissions. What is not the
        submission's own plain file or folder is a problem of the run (``output_problems``)."""
        if identity(self.output) != self.output_identity:
            self.output_problems.append(f"the output folder {self.output} was replaced during the run")
            return
        mode = stat.S_IMODE(os.lstat(self.output).st_mode)
        if mode != self.output_mode:
            os.chmod(self.output, self.output_mode)
            self.output_problems.append(f"the submission's process changed the permissions of the output folder "
                                        f"{self.output} ({self.output_mode:o} -> {mode:o}; restored)")
        for name in sorted(os.listdir(self.output)):
            path = self.output / name
            kind = entry_kind(path)
            if (name == REPORT or name in self.report["files"]) and kind == "file":
                continue
            if name not in OUTPUTS and self.present_before.get(name) == identity(path):
                continue  # there before the run, unchanged
            if kind == "folder":
                open_folders(path)  # the submission may have taken our (its owner's) access away
            if name in OUTPUTS or kind not in ("file", "folder"):
                self.remove_output(path, kind)
            elif kind == "folder":
                for inner, inner_kind in special_entries(path):
                    self.remove_output(path / inner, inner_kind)

    def remove_output(self, path: Path, kind: str) -> None:
        """Remove ``path`` (a link itself, not what it names), saying so; note it unless it was only a stale
        or forged output."""
        if kind == "folder":
            shutil.rmtree(path)  # follows no link
        else:
            path.unlink()
        print(f"ingestion: removed {path}: not written by this run", file=sys.stderr)
        if path.name == WORKER_METADATA and path.parent == self.output:
            self.output_problems.append(f"the submission's process wrote {path}, the worker's own file (removed)")
        elif kind not in ("file", "folder"):
            self.output_problems.append(f"the submission's process left a {kind} {path} in the output folder "
                                        "(removed; links, FIFOs and devices are never followed)")

    def fail(self, err: BaseException) -> str:
        stage = self.report["stage"]
        if isinstance(err, Interrupted):
            message = f"ingestion was interrupted ({err}) during {stage}; the submission's processes were stopped"
        else:
            message = str(err) if isinstance(err, HygieiaError) else f"{type(err).__name__}: {err}"
        trace = getattr(err, "traceback", None) or "".join(traceback.format_exception(err))
        self.report.update(status="failed", error={"stage": stage, "message": message, "traceback": trace})
        print(trace, file=sys.stderr)
        return f"ingestion failed during {stage}: {message}"


def run_ingestion(input_dir, output_dir, submission, time_budget_s: float | None = DEFAULT_TIME_BUDGET,
                  budget_source: str = "argument", limits: tuple[int, int] | None = None) -> dict:
    """Run a submission (folder or zip) on ``input_dir``; write to ``output_dir``; return the report.

    Raises nothing for a failing run: the report's status says "failed" and ``error`` holds
    {stage, message, traceback}; the message is also printed to stderr. ``limits`` bound a zip's
    extraction (default ``submission_limits()``). An interrupt (SIGINT, SIGTERM) fails the run and
    sets the report's ``interrupted`` to the signal's number.
    """
    run = Ingestion(input_dir, output_dir, submission, time_budget_s, budget_source, limits)
    run.output.mkdir(parents=True, exist_ok=True)
    run.output_identity = identity(run.output)
    run.output_mode = stat.S_IMODE(os.lstat(run.output).st_mode)
    run.present_before = {name: identity(run.output / name) for name in os.listdir(run.output)}
    start = time.perf_counter()
    become_subreaper()
    make_undumpable()  # before the submission's process exists: no ptrace, no /proc/<pid>/mem of ingestion
    print(f"ingestion: {run.isolation.log_line()}", file=sys.stderr if run.isolation.missing else sys.stdout)
    failure = None
    try:
        with signals_interrupt(), tempfile.TemporaryDirectory(prefix="hygieia-ingestion-") as workdir:
            os.chmod(workdir, 0o700)
            run.run(Path(workdir))
    except (Exception, Interrupted) as err:  # every failure goes to ingestion.json, named
        failure = err
    with run.lock:
        run.closed = True
        run.clean_output()
        if run.output_problems:
            failure = failure or IngestionFailed(run.output_problems[0])
        if failure is not None:
            print(run.fail(failure), file=sys.stderr)
            if isinstance(failure, Interrupted):
                run.report["interrupted"] = failure.signum
        else:
            run.report.update(status="ok", stage=None)
        run.report["durations"]["total"] = round(time.perf_counter() - start, 3)
        run.save()
    return run.report


def read_budget(program_dir: Path | None) -> tuple[float, str]:
    """The time budget and where it comes from: ``$HYGIEIA_TIME_BUDGET``, else ``PROGRAM_DIR/budget.json``,
    else the default."""
    value, source = os.environ.get(TIME_BUDGET_ENV), f"${TIME_BUDGET_ENV}"
    if not value and program_dir is not None and (program_dir / BUDGET_FILE).is_file():
        source = str(program_dir / BUDGET_FILE)
        try:
            value = json.loads((program_dir / BUDGET_FILE).read_text(encoding="utf-8"))["time_budget_s"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise HygieiaError(f"{source}: expected {{\"time_budget_s\": seconds}} ({type(err).__name__}: {err})")
    if not value:
        return DEFAULT_TIME_BUDGET, "default"
    try:
        budget = float(value)
    except (TypeError, ValueError):
        budget = -1.0
    if not budget > 0:
        raise HygieiaError(f"{source}: time budget {value!r}: expected a positive number of seconds")
    return budget, source


def main(argv: list[str] | None = None) -> int:
    """``ingestion.py [INPUT_DATA OUTPUT PROGRAM_DIR SUBMISSION_DIR]``; no arguments: Codabench's /app paths."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{HELP}")
        return 0
    if len(argv) not in (0, 4):
        print(USAGE, file=sys.stderr)
        return 2
    input_dir, output_dir, program_dir, submission = (Path(p) for p in argv or CODABENCH_PATHS)
    try:
        writable_dir(output_dir, "output folder")
    except HygieiaError as err:
        print(f"ingestion: error: {err}", file=sys.stderr)
        return 2
    try:
        require_dir(input_dir, "input data folder")
        require_dir(program_dir, "ingestion program folder")
        require_file_or_dir(submission, "submission")
        budget, source = read_budget(program_dir)
    except HygieiaError as err:  # the organizer's or the worker's setup: said on stderr and in ingestion.json
        write_json(output_dir / REPORT, {"status": "failed", "stage": "setup", "error": {
            "stage": "setup", "message": str(err), "traceback": None}, "durations": {}, "counts": {},
            "explanation": None, "files": []})
        print(f"ingestion: error: {err}", file=sys.stderr)
        return 2
    print(f"ingestion: time budget {budget:g} s ({source})")
    if warning := isolation.sandbox_warning():
        print(warning, file=sys.stderr, flush=True)
    report = run_ingestion(input_dir, output_dir, submission, budget, source)
    if report["status"] != "ok":
        return 128 + report["interrupted"] if "interrupted" in report else 1
    counts = report["counts"]
    print(f"ingestion ok in {report['durations']['total']:.1f} s on {report['device']}: "
          f"{counts['valid'] + counts['test']} predictions, {counts['heatmaps']} heatmaps "
          f"({report['explanation'] or 'no explanation'}, as the submission's process says"
          + (f"; {counts['zero_heatmaps']} all zero" if counts.get("zero_heatmaps") else "") + ")")
    return 0
