"""``hygieia run``: a local Codabench compute worker, to run a submission against a bundle before uploading.

It does what Codabench's worker (``compute_worker.py``) does for one submission in one phase, each step
in a container or a sandbox (docs/bundle.md lists every point and the worker line it follows):

    prediction/  program/ (the ingestion program)  ingested_program/ (the submission)
                 input_data/  output/               -> ingestion's command, then `metadata`
    scoring/     program/ (the scoring program)  input/ref/  input/res/ (= prediction/output)
                 shared/  output/                   -> scoring's command, then scores.json is read

Each folder is mounted where the container would see it (``/app/program``, ``/app/output``...): by
``docker run`` in the competition's image when a Docker daemon answers and the image is present locally,
else by bubblewrap around this machine's Python. Either way nothing else of the machine's files is
visible (bubblewrap: but the system and Python, read-only), no network, the program and its input
read-only, the step runs as an unprivileged user with no capability, within a memory limit, what it
adds to the folders it writes is bounded, and every process of the step ends with it. Without either
the steps run as plain processes with a loud warning. Every run unpacks its own copy of the bundle;
nothing a step leaves (a link, a FIFO, a device) is followed or copied (``sandbox.py``, ``limits.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hygieia import dataset as ds
from hygieia.bundle.archive import read_zip, safe_extract, unpack
from hygieia.bundle.build import DEFAULT_TIME_LIMIT, MAX_DEFAULT_QUEUE_LIMIT
from hygieia.bundle.check import load_competition
from hygieia.bundle.limits import Limits, format_size
from hygieia.bundle.sandbox import SANDBOXES, Sandbox, Step, StepResult, choose_sandbox, run_step
from hygieia.errors import HygieiaError
from hygieia.files import read_regular

RUN_MARKER = ".hygieia-run"   # marks a folder this worker created, so that it may replace it
MAX_SUBMISSION_BYTES = 2_000_000_000  # unpacked: far above a model's weights and code, far below a zip bomb
MAX_SUBMISSION_ENTRIES = 100_000
# The scoring program's switch for per-image results (hygieia.scoring.score.PER_IMAGE_ENV): set for the
# scoring step by ``per_image=True`` only. Codabench's workers never set it.
PER_IMAGE_ENV = "HYGIEIA_PER_IMAGE"
MAX_READ_BYTES = 50_000_000   # ingestion.json, scores.json, scores.txt: far above what the programs write



@dataclass
class RunResult:
    status: str                                  # "Finished" or "Failed"
    phase: str
    out_dir: Path
    error: str | None = None
    scores: dict = field(default_factory=dict)
    row: list[tuple[str, str]] = field(default_factory=list)   # (column title, formatted value)
    detailed_results: Path | None = None
    steps: list[StepResult] = field(default_factory=list)
    sandbox: str = "none"                        # "docker", "bwrap" or "none"
    image: str | None = None                     # the docker image the steps ran in
    per_image: bool = False                      # the scoring step was asked for per-image results
    limits: Limits | None = None

    def report(self) -> str:
        sandbox = f"docker ({self.image})" if self.sandbox == "docker" else self.sandbox
        lines = [f"phase: {self.phase}", f"status: {self.status}", f"sandbox: {sandbox}"]
        if self.limits:
            lines.append(f"limits: {self.limits.describe()}")
        if self.error:
            lines += ["error:"] + [f"  {line}" for line in self.error.splitlines()]
        if self.row:
            width = max(len(title) for title, _ in self.row)
            lines.append("leaderboard row:")
            lines += [f"  {title:<{width}}  {value}" for title, value in self.row]
        for step in self.steps:
            code = ("killed (time limit)" if step.timed_out else "stopped (a limit)" if step.overrun
                    else f"exit {step.exit_code}")
            peak = f", peak memory {format_size(step.peak_memory)}" if step.peak_memory else ""
            lines.append(f"{step.name}: {code} after {step.elapsed:.1f} s{peak}; logs {step.stdout.parent}")
        if self.detailed_results:
            lines.append(f"detailed results: {self.detailed_results}"
                         + (" (with per-image results: for labels you own, never to publish)" if self.per_image
                            else ""))
        return "\n".join(lines)



def substitute(command: str, *, kind: str) -> str:
    """compute_worker.py ``replace_legacy_metadata_command``: ``$name`` -> the container's ``/app`` path.
    ``kind`` is "ingestion" or "program" (the scoring program, or a submission with a command)."""
    scoring = kind != "ingestion"
    replacements = [
        ("$input", "/app/input" if scoring else "/app/input_data"),
        ("$output", "/app/output"),
        ("$program", "/app/program"),
        ("$ingestion_program", "/app/program"),
        ("$hidden", "/app/input/ref"),
        ("$shared", "/app/shared"),
        ("$submission_program", "/app/ingested_program"),
        ("$tmp", "/app/output"),
        ("$predictions", "/app/input/res" if scoring else "/app/output"),
    ]
    for name, path in replacements:
        command = command.replace(name, path)
    return command



def read_command(program_dir: Path, where: str) -> str | None:
    """The ``command`` of a program's metadata.yaml (else metadata); None when it has neither file."""
    for name in ("metadata.yaml", "metadata"):
        path = program_dir / name
        if path.is_file():
            try:
                metadata = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as err:
                raise HygieiaError(f"{where}/{name}: not valid YAML ({err})") from err
            command = metadata.get("command") if isinstance(metadata, dict) else None
            if not command:
                raise HygieiaError(f"{where}/{name}: Program directory missing 'command' in metadata")
            return str(command)
    return None



# -- the bundle and the run folder -------------------------------------------------------------------
def find_phase(competition: dict, phase: str) -> dict:
    phases = competition.get("phases") or []
    for candidate in phases:
        if str(candidate.get("name", "")).lower() == phase.lower():
            return candidate
    names = [p.get("name") for p in phases]
    raise HygieiaError(f"no phase named {phase!r} in competition.yaml; phases: {names}")


def find_task(competition: dict, phase: dict) -> dict:
    tasks = {t.get("index"): t for t in competition.get("tasks") or []}
    indexes = phase.get("tasks") or []
    if len(indexes) != 1 or indexes[0] not in tasks:
        raise HygieiaError(f"phase {phase.get('name')!r}: expected one task from `tasks`, got {indexes}")
    return tasks[indexes[0]]


def time_limit(competition: dict, phase: dict) -> int:
    """tasks.py: min(600, the phase's limit) on Codabench's default queue; the phase's own limit on a
    competition's custom ``queue``."""
    limit = int(phase.get("execution_time_limit") or DEFAULT_TIME_LIMIT)
    return limit if competition.get("queue") else min(MAX_DEFAULT_QUEUE_LIMIT, limit)


def copy_bundle(bundle: Path, out_dir: Path) -> Path:
    """This run's own copy of the bundle: nothing a submission does reaches the original or a later run."""
    folder = out_dir / "bundle"
    if bundle.is_dir():
        shutil.copytree(bundle, folder, symlinks=False)
    elif bundle.is_file():
        with read_zip(bundle) as archive:
            safe_extract(archive, folder, bundle)
    else:
        raise HygieiaError(f"{bundle}: no such bundle zip or folder")
    return folder


def fresh_out_dir(out_dir: Path) -> Path:
    """An empty run folder, as an absolute path. Only a folder this worker made (it holds the run
    marker) is replaced; an empty folder is used; anything else is refused, never deleted."""
    out_dir = out_dir.absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise HygieiaError(f"{out_dir} is a file, not a folder; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / RUN_MARKER).is_file():
            held = sorted(p.name for p in out_dir.iterdir())
            raise HygieiaError(f"{out_dir} exists and is not a run folder of `hygieia run` (it holds "
                               f"{held[:3]}); choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RUN_MARKER).write_text("made by hygieia run; replaced by the next run in this folder\n")
    return out_dir


# -- the run ----------------------------------------------------------------------------------------
class _Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that every step's process tree is killed on the way out."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def run_submission(submission: str | Path, bundle: str | Path, *, phase: str = "development",
                   out_dir: str | Path | None = None, echo: bool = True, env: dict[str, str] | None = None,
                   sandbox: str = "auto", docker_image: str | None = None, gpus: bool = False,
                   per_image: bool = False, limits: Limits | None = None) -> RunResult:
    """Run ``submission`` (zip or folder) in ``phase`` of ``bundle`` (zip or folder), as Codabench would.
    ``env``: variables given to both programs (the caller's own environment is not passed on).
    ``sandbox``: auto (docker, else bwrap, else none), docker, bwrap or none; ``docker_image`` replaces
    competition.yaml's ``docker_image``; ``gpus``: docker's ``--gpus all``. ``per_image``: the scoring
    step also writes per-image results (ROC curve, galleries, per-image table; ``$HYGIEIA_PER_IMAGE=1``),
    which a run on Codabench never shows: for labels the caller owns. ``limits``: each step's memory and
    what it may write (default ``Limits.default()``)."""
    submission, bundle = Path(submission), Path(bundle)
    if not submission.exists():
        raise HygieiaError(f"{submission}: no such submission zip or folder")
    if sandbox not in SANDBOXES:
        raise HygieiaError(f"--sandbox must be one of {list(SANDBOXES)}, got {sandbox!r}")
    out_dir = fresh_out_dir(Path(out_dir) if out_dir else Path("runs") / f"{submission.stem}-{phase}")
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    umask = os.umask(0o022)   # the run's folders: readable by the steps' unprivileged user
    try:
        root = copy_bundle(bundle, out_dir)
        image = docker_image or load_competition(root).get("docker_image")
        mode = choose_sandbox(sandbox, str(image) if image else None, gpus)
        return _run(submission, root, phase, out_dir, echo, dict(env or {}), mode, per_image,
                    limits or Limits.default())
    except _Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        os.umask(umask)
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _run(submission: Path, root: Path, phase: str, out_dir: Path, echo: bool, env: dict, mode: Sandbox,
         per_image: bool, limits: Limits):
    competition = load_competition(root)
    phase_yaml = find_phase(competition, phase)
    task = find_task(competition, phase_yaml)
    limit = time_limit(competition, phase_yaml)
    result = RunResult("Failed", str(phase_yaml.get("name")), out_dir, sandbox=mode.kind, image=mode.image,
                       per_image=per_image, limits=limits)
    logs = out_dir / "logs"

    step, prediction_output = prediction_step(submission, root, task, out_dir, limit)
    ingestion = run_step(step, mode, env, logs, echo, limits)
    result.steps.append(ingestion)
    drop_scratch(step)
    if ingestion.timed_out:
        result.error = f"Execution Time Limit exceeded. Limit was {limit} seconds (prediction step)"
        return result
    if ingestion.overrun:   # not Codabench's (it sets no such limit): the local worker's bounds
        result.error = _with_ingestion_error(ingestion.overrun, prediction_output)
        return result
    # The submission has no command of its own: its exit code is null (compute_worker.py push_output).
    result.error = write_worker_metadata(prediction_output, {
        "exitCode": None, "elapsedTime": ingestion.elapsed,
        "ingestionExitCode": ingestion.exit_code, "ingestionElapsedTime": ingestion.elapsed})
    if result.error:
        return result
    try:   # after the step, before any of it is copied: a link, FIFO or device refuses the run, named
        unpack(prediction_output, out_dir / "scoring" / "input" / "res")
    except HygieiaError as err:
        result.error = f"the prediction output is not copied into the scoring input: {err}"
        return result

    step, scoring_output = scoring_step(root, task, out_dir, limit)
    scoring = run_step(step, mode, {**env, PER_IMAGE_ENV: "1"} if per_image else env, logs, echo, limits)
    result.steps.append(scoring)
    drop_scratch(step)
    result.detailed_results = detailed_results(scoring_output)
    return finish(result, competition, ingestion, scoring, prediction_output, scoring_output, limit)


def drop_scratch(step: Step) -> None:
    """A step's /tmp goes with it, as a container's does."""
    shutil.rmtree(step.mounts["/tmp"], ignore_errors=True)


def _with_ingestion_error(problem: str, prediction_output: Path) -> str:
    said = _ingestion_error(prediction_output / "ingestion.json")
    return f"{problem}\ningestion said: {said}" if said else problem


def prediction_step(submission: Path, root: Path, task: dict, out_dir: Path, limit: int):
    """The prediction step: the ingestion program runs the submission on the input data."""
    base = out_dir / "prediction"
    folders = {name: base / name for name in ("program", "ingested_program", "input_data", "output", "tmp")}
    unpack(submission, folders["ingested_program"], max_bytes=MAX_SUBMISSION_BYTES,
           max_entries=MAX_SUBMISSION_ENTRIES)
    unpack(_bundle_path(root, task, "ingestion_program"), folders["program"])
    unpack(_bundle_path(root, task, "input_data"), folders["input_data"])
    if (folders["ingested_program"] / "metadata").exists() or (folders["ingested_program"] / "metadata.yaml").exists():
        print("run: warning: the submission has its own metadata file: Codabench runs its `command` in a "
              "container of its own beside ingestion (and does not copy it into the output); this local "
              "worker does not run it", file=sys.stderr, flush=True)
        folders["output"].mkdir(parents=True)
    else:
        # compute_worker.py _run_program_directory: a submission without metadata is copied into the output
        unpack(folders["ingested_program"], folders["output"])
    folders["tmp"].mkdir()
    command = read_command(folders["program"], "ingestion_program")
    if command is None:
        raise HygieiaError("ingestion_program: Program directory missing 'metadata.yaml/metadata'")
    mounts = _mount_points(folders)
    step = Step("ingestion", mounts, {"/app/program", "/app/input_data"}, substitute(command, kind="ingestion"),
                limit)
    return step, folders["output"]


def scoring_step(root: Path, task: dict, out_dir: Path, limit: int):
    """The scoring step: the scoring program compares the prediction output (already copied into
    ``scoring/input/res``) with the reference data."""
    base = out_dir / "scoring"
    folders = {"program": base / "program", "input": base / "input", "output": base / "output",
               "shared": base / "shared", "tmp": base / "tmp"}
    unpack(_bundle_path(root, task, "scoring_program"), folders["program"])
    if task.get("reference_data"):
        unpack(_bundle_path(root, task, "reference_data"), folders["input"] / "ref")
    for name in ("output", "shared", "tmp"):
        folders[name].mkdir(parents=True)
    command = read_command(folders["program"], "scoring_program")
    if command is None:
        raise HygieiaError("scoring_program: Program directory missing 'metadata.yaml/metadata'")
    step = Step("scoring", _mount_points(folders), {"/app/program", "/app/input"},
                substitute(command, kind="program"), limit)
    return step, folders["output"]


def _mount_points(folders: dict[str, Path]) -> dict[str, Path]:
    """Each folder at its container path: /app/<name>, and the step's scratch at /tmp."""
    return {("/tmp" if name == "tmp" else f"/app/{name}"): path for name, path in folders.items()}


def detailed_results(output: Path) -> Path | None:
    """detailed_results.html, else the first .html file (compute_worker.py get_detailed_results_file_path);
    only a regular file (a link is not shown)."""
    pages = [output / "detailed_results.html"] + sorted(output.glob("*.html"))
    return next((page for page in pages if page.exists() and stat.S_ISREG(page.lstat().st_mode)), None)


def finish(result: RunResult, competition: dict, ingestion: StepResult, scoring: StepResult,
           prediction_output: Path, scoring_output: Path, limit) -> RunResult:
    if scoring.timed_out:
        result.error = f"Execution Time Limit exceeded. Limit was {limit} seconds (scoring step)"
        return result
    if scoring.overrun:
        result.error = scoring.overrun
        return result
    problems = []
    if scoring.exit_code != 0:
        # Codabench fails the run here, before it looks for a scores file: report scoring's own error.
        problems.append(f"the scoring program exited with code {scoring.exit_code}:\n{scoring.stderr_tail()}")
    else:
        try:
            result.scores = read_scores(scoring_output)
        except HygieiaError as err:
            problems.append(str(err))
        result.row = leaderboard_row(competition, result.scores)
        taken = write_worker_metadata(scoring_output, {
            "exitCode": scoring.exit_code, "elapsedTime": scoring.elapsed,
            "ingestionExitCode": None, "ingestionElapsedTime": None})
        problems += [taken] if taken else []
    if not problems:
        result.status = "Finished"
        return result
    ingestion_error = _ingestion_error(prediction_output / ds.INGESTION_REPORT)
    if ingestion_error or ingestion.exit_code != 0:
        problems.append(f"ingestion exited with code {ingestion.exit_code}: "
                        f"{ingestion_error or ingestion.stderr_tail()}")
    result.error = "\n".join(problems)
    return result


def write_worker_metadata(output: Path, fields: dict) -> str | None:
    """Write the worker's ``metadata`` into a step's output folder, or return the error Codabench gives
    when the program already put anything of that name there (a link, dangling or not, included: it is
    never written through)."""
    try:
        fd = os.open(output / ds.WORKER_METADATA, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
    except FileExistsError:
        return ("Error, the output directory already contains a metadata file. This file is used to store "
                "exitCode and other data, do not write to this file manually.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(yaml.safe_dump(fields))
    return None


def read_scores(output: Path) -> dict:
    """scores.json, else scores.txt, as the worker reads them: a {key: value} mapping. Read only as a
    regular file of at most MAX_READ_BYTES (a link or FIFO is named, never followed)."""
    if os.path.lexists(output / "scores.json"):
        path, parse, parse_error = output / "scores.json", json.loads, json.JSONDecodeError
    elif os.path.lexists(output / "scores.txt"):
        path, parse, parse_error = output / "scores.txt", yaml.safe_load, yaml.YAMLError
    else:
        raise HygieiaError("Could not find scores file, did the scoring program output it?")
    try:
        scores = parse(read_regular(path, MAX_READ_BYTES).decode("utf-8"))
    except (parse_error, UnicodeDecodeError) as err:
        raise HygieiaError(f"Could not decode {path.name} properly, it contains an error. {err}") from err
    if not isinstance(scores, dict):
        raise HygieiaError(f"{path.name} must hold key: value pairs, got {type(scores).__name__}")
    return scores


def leaderboard_row(competition: dict, scores: dict) -> list[tuple[str, str]]:
    """Each column of the leaderboard with the score of its key, as the server's score upload matches
    them (api/views/submissions.py: keys without a column are dropped)."""
    row = []
    for board in competition.get("leaderboards") or []:
        for column in sorted(board.get("columns") or [], key=lambda c: c.get("index", 0)):
            value = scores.get(column.get("key"))
            if isinstance(value, (int, float)):
                row.append((column.get("title", column.get("key")), f"{value:.{column.get('precision', 2)}f}"))
            else:
                row.append((column.get("title", column.get("key")), "missing"))
    return row


def _ingestion_error(path: Path) -> str | None:
    if not os.path.lexists(path):
        return None
    try:
        report = json.loads(read_regular(path, MAX_READ_BYTES).decode("utf-8"))
    except HygieiaError as err:
        return str(err)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{path.name} is not valid JSON"
    if not isinstance(report, dict):
        return f"{path.name} is not a JSON object"
    if report.get("status") == "ok":
        return None
    error = report.get("error") or {}
    return error.get("message") if isinstance(error, dict) else str(error)


def _bundle_path(root: Path, task: dict, field_name: str) -> Path:
    value = task.get(field_name)
    if not value:
        raise HygieiaError(f"task {task.get('name')!r} has no `{field_name}`")
    path = root / str(value)
    if not path.exists():
        raise HygieiaError(f"task {task.get('name')!r}: {field_name} {value} does not exist in the bundle")
    return path
