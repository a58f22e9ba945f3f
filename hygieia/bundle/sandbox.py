"""The sandbox of one step of ``hygieia run``: a ``docker run`` of the competition's image, bubblewrap
around this machine's Python, or (with a loud warning) a plain process.

A step (``Step``) is one container's worth of work: its folders by ``/app`` mount point, which of them
are read-only, its command and its time limit. ``run_step`` runs it in the chosen ``Sandbox``, tees its
output to log files and ends every process of it at its end, at the time limit, or on SIGINT/SIGTERM.
What the steps are and in which order they run is Codabench's protocol: ``hygieia.bundle.worker``.
"""

from __future__ import annotations

import glob
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
from dataclasses import dataclass
from pathlib import Path

from hygieia.errors import HygieiaError

TAIL_LINES = 12
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
class Step:
    """One container: its folders by mount point, its command (``/app`` paths), its limit."""
    name: str
    mounts: dict[str, Path]            # "/app/program" -> host folder
    read_only: set[str]
    command: str
    limit: int


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
