"""``hygieia run``: a local Codabench compute worker, to run a submission against a bundle before uploading.

It does what Codabench's worker does for one submission in one phase, with folders in place of
containers:

    prediction/  program/ (the ingestion program)  ingested_program/ (the submission)
                 input_data/  output/               -> ingestion's command, then `metadata`
    scoring/     program/ (the scoring program)  input/ref/  input/res/ (= prediction/output)
                 output/                            -> scoring's command, then scores.json is read

Zips are unpacked with the worker's rule for a top folder; each metadata.yaml command gets the
worker's ``$input $output $program $ingestion_program $submission_program ...`` substitutions and
runs in its own process group under the phase's execution time limit, with ``python -S`` and
PYTHONPATH = the program folder + this interpreter's site-packages: nothing of this repository is
importable there, as in the competition's container.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hygieia.bundle.archive import read_zip, safe_extract, unpack_like_codabench
from hygieia.bundle.check import load_competition
from hygieia.errors import HygieiaError

DEFAULT_TIME_LIMIT = 600  # Codabench's default execution_time_limit, in seconds
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "CUDA_VISIBLE_DEVICES", "MPLBACKEND")
TAIL_LINES = 12


@dataclass
class StepResult:
    name: str
    exit_code: int | None
    elapsed: float
    timed_out: bool
    stdout: Path
    stderr: Path

    def stderr_tail(self, lines: int = TAIL_LINES) -> str:
        text = self.stderr.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
        kept = [line for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


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

    def report(self) -> str:
        lines = [f"phase: {self.phase}", f"status: {self.status}"]
        if self.error:
            lines += ["error:"] + [f"  {line}" for line in self.error.splitlines()]
        if self.row:
            width = max(len(title) for title, _ in self.row)
            lines.append("leaderboard row:")
            lines += [f"  {title:<{width}}  {value}" for title, value in self.row]
        for step in self.steps:
            code = "killed (time limit)" if step.timed_out else f"exit {step.exit_code}"
            lines.append(f"{step.name}: {code} after {step.elapsed:.1f} s; logs {step.stdout.parent}")
        if self.detailed_results:
            lines.append(f"detailed results: {self.detailed_results}")
        return "\n".join(lines)


def substitute(command: str, *, kind: str, folders: dict[str, Path]) -> list[str]:
    """The worker's legacy ``$name`` substitutions, with this run's folders in place of /app/...

    ``kind`` is "ingestion" (prediction step) or "scoring". As in the worker, the command is split
    on spaces and run without a shell.
    """
    scoring = kind == "scoring"
    replacements = [
        ("$input", folders["input"] if scoring else folders["input_data"]),
        ("$output", folders["output"]),
        ("$program", folders["program"]),
        ("$ingestion_program", folders["program"]),
        ("$hidden", folders.get("ref", folders["program"].parent / "input" / "ref")),
        ("$shared", folders.get("shared", folders["program"].parent / "shared")),
        ("$submission_program", folders.get("ingested_program", folders["program"])),
        ("$tmp", folders["output"]),
        ("$predictions", folders["res"] if scoring else folders["output"]),
    ]
    for name, path in replacements:
        command = command.replace(name, str(path))
    argv = [part for part in command.split(" ") if part]
    if argv and Path(argv[0]).name in ("python", "python3"):
        argv = [sys.executable, "-S"] + argv[1:]
    return argv


def program_env(program_dir: Path) -> dict[str, str]:
    """Only the program folder and third-party packages importable; HYGIEIA_* settings passed on."""
    packages = [p for p in site.getsitepackages() if Path(p).is_dir()]
    env = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith("HYGIEIA_")}
    env["PYTHONPATH"] = os.pathsep.join([str(program_dir)] + packages)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    return env


def read_command(program_dir: Path, where: str) -> str:
    for name in ("metadata.yaml", "metadata"):
        path = program_dir / name
        if path.is_file():
            try:
                metadata = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as err:
                raise HygieiaError(f"{where}/{name}: not valid YAML ({err})") from err
            command = metadata.get("command") if isinstance(metadata, dict) else None
            if not command:
                raise HygieiaError(f"{where}/{name}: no `command`")
            return str(command)
    raise HygieiaError(f"{where}: program folder has no metadata.yaml")


def run_step(name: str, argv: list[str], cwd: Path, env: dict, limit: float, log_dir: Path,
             echo: bool) -> StepResult:
    """Run one program in its own process group, teeing its output to log files; kill it at the limit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}_stdout.txt", log_dir / f"{name}_stderr.txt"
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    threads = [threading.Thread(target=_tee, args=(proc.stdout, out_path, sys.stdout if echo else None)),
               threading.Thread(target=_tee, args=(proc.stderr, err_path, sys.stderr if echo else None))]
    for thread in threads:
        thread.start()
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for thread in threads:
        thread.join()
    return StepResult(name, proc.returncode, time.monotonic() - start, timed_out, out_path, err_path)


def _tee(stream, path: Path, echo) -> None:
    with open(path, "wb") as log:
        for chunk in iter(lambda: stream.read1(65536), b""):
            log.write(chunk)
            log.flush()
            if echo is not None:
                if hasattr(echo, "buffer"):
                    echo.buffer.write(chunk)
                else:
                    echo.write(chunk.decode("utf-8", errors="replace"))
                echo.flush()


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


def bundle_folder(bundle: Path, out_dir: Path) -> Path:
    if bundle.is_dir():
        return bundle
    if not bundle.is_file():
        raise HygieiaError(f"{bundle}: no such bundle zip or folder")
    folder = out_dir / "bundle"  # out_dir is fresh: see fresh_out_dir
    with read_zip(bundle) as archive:
        safe_extract(archive, folder, bundle)
    return folder


def unpack(source: Path, dest: Path, *, is_program: bool, what: str) -> None:
    moved = unpack_like_codabench(source, dest, is_program=is_program)
    if moved:
        print(f"run: warning: as Codabench's worker does, the contents of {what}'s folder {moved}/ were "
              "moved up one level although it had other entries beside it", file=sys.stderr)


RUN_FOLDERS = {"bundle", "prediction", "scoring", "logs"}


def fresh_out_dir(out_dir: Path) -> Path:
    """An empty run folder, as an absolute path (commands run in the program folders get its paths);
    a previous run's folder is replaced, anything else is refused."""
    out_dir = out_dir.absolute()
    if out_dir.exists():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in RUN_FOLDERS)
        if foreign:
            raise HygieiaError(f"{out_dir} exists and is not a run folder (it holds {foreign[:3]}); "
                               "choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return out_dir


def run_submission(submission: str | Path, bundle: str | Path, *, phase: str = "development",
                   out_dir: str | Path | None = None, echo: bool = True) -> RunResult:
    """Run ``submission`` (zip or folder) in ``phase`` of ``bundle`` (zip or folder), as Codabench would."""
    submission, bundle = Path(submission), Path(bundle)
    if not submission.exists():
        raise HygieiaError(f"{submission}: no such submission zip or folder")
    out_dir = fresh_out_dir(Path(out_dir) if out_dir else Path("runs") / f"{submission.stem}-{phase}")
    root = bundle_folder(bundle, out_dir)
    competition = load_competition(root)
    phase_yaml = find_phase(competition, phase)
    task = find_task(competition, phase_yaml)
    limit = phase_yaml.get("execution_time_limit") or DEFAULT_TIME_LIMIT
    result = RunResult("Failed", str(phase_yaml.get("name")), out_dir)

    prediction_output, ingestion = predict(submission, root, task, out_dir, limit, echo)
    result.steps.append(ingestion)
    if ingestion.timed_out:
        result.error = f"Execution Time Limit exceeded. Limit was {limit} seconds (ingestion)"
        return result
    # No submission program runs on its own (the submission has no command), hence exitCode null.
    result.error = write_worker_metadata(prediction_output, "ingestion", {
        "exitCode": None, "elapsedTime": ingestion.elapsed,
        "ingestionExitCode": ingestion.exit_code, "ingestionElapsedTime": ingestion.elapsed})
    if result.error:
        return result

    scoring_output, scoring = score(root, task, prediction_output, out_dir, limit, echo)
    result.steps.append(scoring)
    html = scoring_output / "detailed_results.html"
    result.detailed_results = html if html.is_file() else None
    return finish(result, competition, ingestion, scoring, prediction_output, scoring_output, limit)


def predict(submission: Path, root: Path, task: dict, out_dir: Path, limit, echo: bool):
    """The prediction step: the ingestion program runs the submission on the input data."""
    folders = {name: out_dir / "prediction" / name
               for name in ("program", "ingested_program", "input_data", "output")}
    unpack(submission, folders["ingested_program"], is_program=False, what="the submission")
    unpack(_bundle_path(root, task, "ingestion_program"), folders["program"], is_program=True,
           what="the ingestion program")
    unpack(_bundle_path(root, task, "input_data"), folders["input_data"], is_program=False,
           what="the input data")
    folders["output"].mkdir(parents=True)
    argv = substitute(read_command(folders["program"], "ingestion_program"), kind="ingestion", folders=folders)
    step = run_step("ingestion", argv, folders["program"], program_env(folders["program"]), limit,
                    out_dir / "logs", echo)
    return folders["output"], step


def score(root: Path, task: dict, prediction_output: Path, out_dir: Path, limit, echo: bool):
    """The scoring step: the scoring program compares the prediction output with the reference data."""
    base = out_dir / "scoring"
    folders = {"program": base / "program", "input": base / "input", "ref": base / "input" / "ref",
               "res": base / "input" / "res", "output": base / "output", "shared": base / "shared"}
    unpack(_bundle_path(root, task, "scoring_program"), folders["program"], is_program=True,
           what="the scoring program")
    if task.get("reference_data"):
        unpack(_bundle_path(root, task, "reference_data"), folders["ref"], is_program=False,
               what="the reference data")
    unpack(prediction_output, folders["res"], is_program=False, what="the prediction output")
    folders["output"].mkdir(parents=True)
    folders["shared"].mkdir(parents=True)
    argv = substitute(read_command(folders["program"], "scoring_program"), kind="scoring", folders=folders)
    step = run_step("scoring", argv, folders["program"], program_env(folders["program"]), limit,
                    out_dir / "logs", echo)
    return folders["output"], step


def finish(result: RunResult, competition: dict, ingestion: StepResult, scoring: StepResult,
           prediction_output: Path, scoring_output: Path, limit) -> RunResult:
    taken = write_worker_metadata(scoring_output, "scoring", {
        "exitCode": scoring.exit_code, "elapsedTime": scoring.elapsed,
        "ingestionExitCode": None, "ingestionElapsedTime": None})
    if scoring.timed_out:
        result.error = f"Execution Time Limit exceeded. Limit was {limit} seconds (scoring)"
        return result
    problems = [taken] if taken else []
    if scoring.exit_code != 0:
        problems.append(f"the scoring program exited with code {scoring.exit_code}:\n{scoring.stderr_tail()}")
    try:
        result.scores = read_scores(scoring_output)
    except HygieiaError as err:
        problems.append(str(err))
    result.row = leaderboard_row(competition, result.scores)
    if not problems:
        result.status = "Finished"
        return result
    ingestion_error = _ingestion_error(prediction_output / "ingestion.json")
    if ingestion_error or ingestion.exit_code != 0:
        problems.append(f"ingestion exited with code {ingestion.exit_code}: "
                        f"{ingestion_error or ingestion.stderr_tail()}")
    result.error = "\n".join(problems)
    return result


def write_worker_metadata(output: Path, step: str, fields: dict) -> str | None:
    """Write the worker's ``metadata`` into a step's output folder, or return the error Codabench gives
    when the program already wrote a file of that name there."""
    path = output / "metadata"
    if path.exists():
        return (f"{step}: the output directory already contains a metadata file; it is reserved for the "
                "worker's exitCode and elapsedTime, do not write to it")
    path.write_text(yaml.safe_dump(fields))
    return None


def read_scores(output: Path) -> dict:
    """scores.json, else scores.txt, as the worker reads them: a {key: value} mapping."""
    if (output / "scores.json").is_file():
        path, parse, parse_error = output / "scores.json", json.loads, json.JSONDecodeError
    elif (output / "scores.txt").is_file():
        path, parse, parse_error = output / "scores.txt", yaml.safe_load, yaml.YAMLError
    else:
        raise HygieiaError("Could not find scores file, did the scoring program output it?")
    try:
        scores = parse(path.read_text(encoding="utf-8"))
    except (parse_error, UnicodeDecodeError) as err:
        raise HygieiaError(f"Could not decode {path.name} properly, it contains an error. {err}") from err
    if not isinstance(scores, dict):
        raise HygieiaError(f"{path.name} must hold key: value pairs, got {type(scores).__name__}")
    return scores


def leaderboard_row(competition: dict, scores: dict) -> list[tuple[str, str]]:
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
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
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
