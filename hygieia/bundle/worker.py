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
visible (bubblewrap: but the system and Python), no network, the program and its input read-only, and
every process of the step ends with it. Without either the steps run as plain processes with a loud
warning. Every run unpacks its own copy of the bundle.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hygieia.bundle.archive import read_zip, safe_extract, unpack
from hygieia.bundle.build import DEFAULT_TIME_LIMIT, MAX_DEFAULT_QUEUE_LIMIT
from hygieia.bundle.check import load_competition
from hygieia.errors import HygieiaError

TAIL_LINES = 12
RUN_MARKER = ".hygieia-run"   # marks a folder this worker created, so that it may replace it
MAX_SUBMISSION_BYTES = 2_000_000_000  # unpacked: far above a model's weights and code, far below a zip bomb
MAX_SUBMISSION_ENTRIES = 100_000
IMAGE_ENV = ("HYGIEIA_MOBILENET_WEIGHTS",)  # set by the competition's image (docker/Dockerfile)
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")
SANDBOXES = ("auto", "docker", "bwrap", "none")
# compute_worker.py:963-978: the capabilities Codabench drops from every competition container
CODABENCH_CAP_DROP = ("AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                      "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT")
NO_SANDBOX_WARNING = """\
run: WARNING: no sandbox (neither Docker nor bubblewrap usable): the steps run as plain processes.
run: WARNING: the submission can read this machine's files (reference data included), use the
run: WARNING: network and leave processes behind. Do not run untrusted code this way: run it in the
run: WARNING: competition's Docker image, or install bubblewrap (apt-get install bubblewrap)."""


@dataclass
class StepResult:
    name: str
    exit_code: int | None
    elapsed: float
    timed_out: bool
    stdout: Path
    stderr: Path
    container: str | None = None                 # the step's docker container name (docker sandbox)

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
    sandbox: str = "none"                        # "docker", "bwrap" or "none"
    image: str | None = None                     # the docker image the steps ran in

    def report(self) -> str:
        sandbox = f"docker ({self.image})" if self.sandbox == "docker" else self.sandbox
        lines = [f"phase: {self.phase}", f"status: {self.status}", f"sandbox: {sandbox}"]
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


@dataclass
class Step:
    """One container: its folders by mount point, its command (``/app`` paths), its limit."""
    name: str
    mounts: dict[str, Path]            # "/app/program" -> host folder
    read_only: set[str]
    command: str
    limit: int


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


def command_argv(command: str, mounts: dict[str, Path] | None) -> list[str]:
    """The container's argv (docker-py splits a string command with shlex), with ``python``/``python3``
    as this interpreter without site (-S). ``mounts`` maps /app paths to host folders (no sandbox)."""
    argv = shlex.split(command)
    if mounts:
        ordered = sorted(mounts, key=len, reverse=True)
        argv = [_host_path(arg, ordered, mounts) for arg in argv]
    if argv and Path(argv[0]).name in ("python", "python3"):
        argv = [sys.executable, "-S"] + argv[1:]
    return argv


def _host_path(arg: str, ordered: list[str], mounts: dict[str, Path]) -> str:
    for point in ordered:
        if arg == point or arg.startswith(point + "/"):
            return str(mounts[point]) + arg[len(point):]
    return arg


def step_env(program_dir: str, extra: dict[str, str], *, sandboxed: bool) -> dict[str, str]:
    """The container's environment: PYTHONUNBUFFERED and the proxy variables (compute_worker.py), the
    image's own settings, PYTHONPATH = the program folder + third-party packages, and ``extra`` (the
    organizer's ``--env``). Nothing else of the caller's environment, no HYGIEIA_* setting."""
    packages = [p for p in site.getsitepackages() if Path(p).is_dir()]
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
           "HOME": "/tmp" if sandboxed else os.environ.get("HOME", "/tmp"),
           "LANG": "C.UTF-8", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
           "http_proxy": "", "https_proxy": "",
           "PYTHONPATH": os.pathsep.join([program_dir] + packages)}
    env.update({k: os.environ[k] for k in IMAGE_ENV + ("CUDA_VISIBLE_DEVICES",) if k in os.environ})
    env.update(extra)
    return env


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


# -- sandbox ----------------------------------------------------------------------------------------
def bwrap_usable() -> bool:
    path = shutil.which("bwrap")
    if not path:
        return False
    probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@dataclass(frozen=True)
class Sandbox:
    kind: str                  # "docker", "bwrap" or "none"
    image: str | None = None   # docker: the image every step runs in
    gpus: bool = False         # docker: --gpus all


def docker_problem(image: str | None) -> str | None:
    """Why the steps cannot run in ``image`` under Docker here, or None when they can."""
    if not image:
        return "competition.yaml names no docker_image and no --docker-image was given"
    if not shutil.which("docker"):
        return "the docker command is not installed"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the Docker daemon did not answer `docker info` within 30 s"
    if info.returncode != 0:
        cause = (info.stderr.strip().splitlines() or ["no message"])[-1]
        return f"the Docker daemon does not answer ({cause})"
    found = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True,
                           timeout=60)
    if found.returncode != 0:
        return (f"the image {image} is not present locally (docker pull {image}, or build it: "
                "docker/README.md; --docker-image NAME names another)")
    return None


def choose_sandbox(requested: str, image: str | None = None, gpus: bool = False) -> Sandbox:
    """docker when asked or (auto) usable, else bubblewrap, else plain processes with a loud warning."""
    if requested not in SANDBOXES:
        raise HygieiaError(f"--sandbox must be one of {list(SANDBOXES)}, got {requested!r}")
    if requested == "none":
        print(NO_SANDBOX_WARNING, file=sys.stderr, flush=True)
        return Sandbox("none")
    if requested in ("auto", "docker"):
        problem = docker_problem(image)
        if problem is None:
            return Sandbox("docker", image, gpus)
        if requested == "docker":
            raise HygieiaError(f"--sandbox docker: {problem}")
        print(f"run: not using Docker: {problem}", file=sys.stderr, flush=True)
    if bwrap_usable():
        return Sandbox("bwrap")
    if requested == "bwrap":
        raise HygieiaError("--sandbox bwrap: bubblewrap (bwrap) is not installed or cannot create namespaces")
    print(NO_SANDBOX_WARNING, file=sys.stderr, flush=True)
    return Sandbox("none")


def docker_argv(step: Step, image: str, name: str, extra: dict[str, str], *, gpus: bool = False,
                user: str | None = None) -> list[str]:
    """``docker run`` for a step, as compute_worker.py creates its container (working dir, environment,
    dropped capabilities, no-new-privileges, host user namespace), plus what Codabench leaves to its
    machines: only the step's folders, the program and its input read-only, no network, the caller's
    user (files it can delete), and the image as present locally (no pull)."""
    user = user or f"{os.getuid()}:{os.getgid()}"
    argv = ["docker", "run", "--name", name, "--pull", "never", "--network", "none", "--user", user,
            "--userns", "host", "--security-opt", "no-new-privileges", "--workdir", "/app/program"]
    for capability in CODABENCH_CAP_DROP:
        argv += ["--cap-drop", capability]
    env = {"PYTHONUNBUFFERED": "1", "http_proxy": "", "https_proxy": "", **extra}
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    for point, folder in sorted(step.mounts.items()):
        fields = ["type=bind", f"source={folder}", f"target={point}"]
        fields += ["readonly"] if point in step.read_only else []
        argv += ["--mount", ",".join(_csv_field(field) for field in fields)]
    if gpus:
        argv += ["--gpus", "all"]
    return argv + [image] + shlex.split(step.command)


def _csv_field(text: str) -> str:
    """One field of --mount's comma-separated value, quoted when the path holds a comma or a quote."""
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text


def remove_container(name: str) -> None:
    """``docker rm -f``: kill the container (every process of its PID namespace) and remove it; a
    container that was never created is not an error."""
    done = subprocess.run(["docker", "rm", "--force", name], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "No such container" not in done.stderr:
        print(f"run: warning: docker rm -f {name} failed: {done.stderr.strip()}", file=sys.stderr, flush=True)


def bwrap_argv(step: Step, env: dict[str, str]) -> list[str]:
    """bubblewrap around a step: the system and Python read-only, the step's folders at their /app
    mount points, a private /tmp, no network, its own process tree that dies with the step."""
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for prefix in sorted({sys.prefix, sys.base_prefix, os.path.realpath(sys.prefix),
                          os.path.realpath(sys.base_prefix)}):
        argv += ["--ro-bind", prefix, prefix]
    for name in IMAGE_ENV:
        if name in env and Path(env[name]).exists():
            argv += ["--ro-bind", env[name], env[name]]
    for device in sorted(glob.glob("/dev/nvidia*")):
        argv += ["--dev-bind", device, device]
    for point, folder in sorted(step.mounts.items()):
        argv += ["--ro-bind" if point in step.read_only else "--bind", str(folder), point]
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    return argv + ["--chdir", "/app/program", "--"]


def run_step(step: Step, sandbox: Sandbox, extra_env: dict[str, str], log_dir: Path,
             echo: bool) -> StepResult:
    """Run one container's command, teeing its output to log files; kill all of it at the time limit."""
    if sandbox.kind == "docker":
        name = f"hygieia-{step.name}-{uuid.uuid4().hex[:12]}"
        argv = docker_argv(step, sandbox.image, name, extra_env, gpus=sandbox.gpus)
        result = _supervise(step.name, argv, None, None, step.limit, log_dir, echo,
                            cleanup=lambda: remove_container(name))
        result.container = name
        return result
    sandboxed = sandbox.kind == "bwrap"
    program = "/app/program" if sandboxed else str(step.mounts["/app/program"])
    env = step_env(program, extra_env, sandboxed=sandboxed)
    if sandboxed:
        argv = bwrap_argv(step, env) + command_argv(step.command, None)
        popen_env, cwd = None, None
    else:
        argv = command_argv(step.command, step.mounts)
        popen_env, cwd = env, step.mounts["/app/program"]
    return _supervise(step.name, argv, cwd, popen_env, step.limit, log_dir, echo)


def _supervise(name: str, argv: list[str], cwd, env, limit: float, log_dir: Path, echo: bool,
               cleanup=None) -> StepResult:
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}_stdout.txt", log_dir / f"{name}_stderr.txt"
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    threads = [threading.Thread(target=_tee, args=(proc.stdout, out_path, sys.stdout if echo else None),
                                daemon=True),
               threading.Thread(target=_tee, args=(proc.stderr, err_path, sys.stderr if echo else None),
                                daemon=True)]
    for thread in threads:
        thread.start()
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:  # the end of the step, the time limit, SIGINT or SIGTERM: nothing of the step stays
        if cleanup is not None:
            cleanup()
        _kill_group(proc.pid)
        proc.wait()
    for thread in threads:  # a process outside the group may still hold the pipes: do not wait for it
        thread.join(timeout=2)
    return StepResult(name, proc.returncode, time.monotonic() - start, timed_out, out_path, err_path)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
                   sandbox: str = "auto", docker_image: str | None = None, gpus: bool = False) -> RunResult:
    """Run ``submission`` (zip or folder) in ``phase`` of ``bundle`` (zip or folder), as Codabench would.
    ``env``: variables given to both programs (the caller's own environment is not passed on).
    ``sandbox``: auto (docker, else bwrap, else none), docker, bwrap or none; ``docker_image`` replaces
    competition.yaml's ``docker_image``; ``gpus``: docker's ``--gpus all``."""
    submission, bundle = Path(submission), Path(bundle)
    if not submission.exists():
        raise HygieiaError(f"{submission}: no such submission zip or folder")
    if sandbox not in SANDBOXES:
        raise HygieiaError(f"--sandbox must be one of {list(SANDBOXES)}, got {sandbox!r}")
    out_dir = fresh_out_dir(Path(out_dir) if out_dir else Path("runs") / f"{submission.stem}-{phase}")
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        root = copy_bundle(bundle, out_dir)
        image = docker_image or load_competition(root).get("docker_image")
        mode = choose_sandbox(sandbox, str(image) if image else None, gpus)
        return _run(submission, root, phase, out_dir, echo, dict(env or {}), mode)
    except _Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _run(submission: Path, root: Path, phase: str, out_dir: Path, echo: bool, env: dict, mode: Sandbox):
    competition = load_competition(root)
    phase_yaml = find_phase(competition, phase)
    task = find_task(competition, phase_yaml)
    limit = time_limit(competition, phase_yaml)
    result = RunResult("Failed", str(phase_yaml.get("name")), out_dir, sandbox=mode.kind, image=mode.image)
    logs = out_dir / "logs"

    step, prediction_output = prediction_step(submission, root, task, out_dir, limit)
    ingestion = run_step(step, mode, env, logs, echo)
    result.steps.append(ingestion)
    if ingestion.timed_out:
        result.error = f"Execution Time Limit exceeded. Limit was {limit} seconds (prediction step)"
        return result
    # The submission has no command of its own: its exit code is null (compute_worker.py push_output).
    result.error = write_worker_metadata(prediction_output, {
        "exitCode": None, "elapsedTime": ingestion.elapsed,
        "ingestionExitCode": ingestion.exit_code, "ingestionElapsedTime": ingestion.elapsed})
    if result.error:
        return result

    step, scoring_output = scoring_step(root, task, prediction_output, out_dir, limit)
    scoring = run_step(step, mode, env, logs, echo)
    result.steps.append(scoring)
    result.detailed_results = detailed_results(scoring_output)
    return finish(result, competition, ingestion, scoring, prediction_output, scoring_output, limit)


def prediction_step(submission: Path, root: Path, task: dict, out_dir: Path, limit: int):
    """The prediction step: the ingestion program runs the submission on the input data."""
    base = out_dir / "prediction"
    folders = {name: base / name for name in ("program", "ingested_program", "input_data", "output")}
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
        shutil.copytree(folders["ingested_program"], folders["output"])
    command = read_command(folders["program"], "ingestion_program")
    if command is None:
        raise HygieiaError("ingestion_program: Program directory missing 'metadata.yaml/metadata'")
    mounts = {f"/app/{name}": path for name, path in folders.items()}
    step = Step("ingestion", mounts, {"/app/program", "/app/input_data"}, substitute(command, kind="ingestion"),
                limit)
    return step, folders["output"]


def scoring_step(root: Path, task: dict, prediction_output: Path, out_dir: Path, limit: int):
    """The scoring step: the scoring program compares the prediction output with the reference data."""
    base = out_dir / "scoring"
    folders = {"program": base / "program", "input": base / "input", "output": base / "output",
               "shared": base / "shared"}
    unpack(_bundle_path(root, task, "scoring_program"), folders["program"])
    if task.get("reference_data"):
        unpack(_bundle_path(root, task, "reference_data"), folders["input"] / "ref")
    unpack(prediction_output, folders["input"] / "res")
    folders["output"].mkdir(parents=True)
    folders["shared"].mkdir(parents=True)
    command = read_command(folders["program"], "scoring_program")
    if command is None:
        raise HygieiaError("scoring_program: Program directory missing 'metadata.yaml/metadata'")
    mounts = {f"/app/{name}": path for name, path in folders.items()}
    step = Step("scoring", mounts, {"/app/program", "/app/input"}, substitute(command, kind="program"), limit)
    return step, folders["output"]


def detailed_results(output: Path) -> Path | None:
    """detailed_results.html, else the first .html file (compute_worker.py get_detailed_results_file_path)."""
    html = output / "detailed_results.html"
    if html.is_file():
        return html
    others = sorted(output.glob("*.html"))
    return others[0] if others else None


def finish(result: RunResult, competition: dict, ingestion: StepResult, scoring: StepResult,
           prediction_output: Path, scoring_output: Path, limit) -> RunResult:
    if scoring.timed_out:
        result.error = f"Execution Time Limit exceeded. Limit was {limit} seconds (scoring step)"
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
    ingestion_error = _ingestion_error(prediction_output / "ingestion.json")
    if ingestion_error or ingestion.exit_code != 0:
        problems.append(f"ingestion exited with code {ingestion.exit_code}: "
                        f"{ingestion_error or ingestion.stderr_tail()}")
    result.error = "\n".join(problems)
    return result


def write_worker_metadata(output: Path, fields: dict) -> str | None:
    """Write the worker's ``metadata`` into a step's output folder, or return the error Codabench gives
    when the program already wrote a file of that name there."""
    path = output / "metadata"
    if path.exists():
        return ("Error, the output directory already contains a metadata file. This file is used to store "
                "exitCode and other data, do not write to this file manually.")
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
