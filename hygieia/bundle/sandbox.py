"""The sandbox of one step of ``hygieia run``: a ``docker run`` of the competition's image, bubblewrap
around this machine's Python, or (with a loud warning) a plain process.

A step (``Step``) is one container's worth of work: its folders by mount point (``/app/...`` and its
scratch ``/tmp``), which of them are read-only, its command and its time limit. ``run_step`` runs it in
the chosen ``Sandbox`` as an unprivileged user (the caller, or nobody:nogroup when the caller is root),
bounded (``limits.Limits``: memory, what it adds to each folder it writes), tees its output to log files
and ends every process of it at its end, at a limit, or on SIGINT/SIGTERM. What the steps are and in
which order they run is Codabench's protocol: ``hygieia.bundle.worker``.
"""

from __future__ import annotations

import functools
import glob
import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from hygieia.bundle.limits import CgroupUnavailable, FolderWatch, Limits, MemoryCgroup, format_size
from hygieia.errors import HygieiaError
from hygieia.isolation import warn_no_sandbox

TAIL_LINES = 12
WATCH_SECONDS = 0.5          # how often the folders a step writes (and its memory) are checked
IMAGE_ENV = ("HYGIEIA_MOBILENET_WEIGHTS",)  # set by the competition's image (docker/Dockerfile)
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")
SANDBOXES = ("auto", "docker", "bwrap", "none")
SANDBOX_USER = (65534, 65534)   # nobody:nogroup: who every step runs as when the worker runs as root
SHM_BYTES = 64 * 1024 * 1024    # bubblewrap's /dev/shm, the size of Docker's default one
# compute_worker.py:963-978: the capabilities Codabench drops from every competition container
CODABENCH_CAP_DROP = ("AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                      "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT")
# As root, bubblewrap mounts without a user namespace (root reaches every folder, /root/... included)
# and keeps only what the step's first process needs to become nobody; that process drops them all
# (bounding and inheritable sets too) before it runs the command. No capability is left in any set.
ROOT_BWRAP_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
DROP_PRIVILEGES = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in range(int(open("/proc/sys/kernel/cap_last_cap").read()) + 1):
    if libc.prctl(24, cap, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
if libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()):
    raise OSError(ctypes.get_errno(), "capset")
os.execvp(sys.argv[3], sys.argv[3:])
"""


def step_user() -> tuple[int, int]:
    """The uid and gid a sandboxed step runs as: the caller's, or nobody:nogroup when it is root."""
    return SANDBOX_USER if os.geteuid() == 0 else (os.getuid(), os.getgid())


@dataclass
class StepResult:
    name: str
    exit_code: int | None
    elapsed: float
    timed_out: bool
    stdout: Path
    stderr: Path
    container: str | None = None                 # the step's docker container name (docker sandbox)
    overrun: str | None = None                   # the limit it went past (memory, output, /tmp), named
    peak_memory: int | None = None               # bytes, where its memory cgroup tells

    def stderr_tail(self, lines: int = TAIL_LINES) -> str:
        text = self.stderr.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
        kept = [line for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])



@dataclass
class Step:
    """One container: its folders by mount point (``/app/...``, and ``/tmp``: its scratch), which are
    read-only (the others it may write, each bounded), its command (``/app`` paths), its time limit."""
    name: str
    mounts: dict[str, Path]            # "/app/program" -> host folder
    read_only: set[str]
    command: str
    limit: int

    def writable(self) -> dict[str, Path]:
        return {point: folder for point, folder in sorted(self.mounts.items()) if point not in self.read_only}


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


def step_env(program_dir: str, extra: dict[str, str], *, sandboxed: bool, scratch: str = "/tmp") -> dict[str, str]:
    """The container's environment: PYTHONUNBUFFERED and the proxy variables (compute_worker.py), the
    image's own settings, PYTHONPATH = the program folder + third-party packages, HOME and TMPDIR = the
    step's scratch (sandboxed: its /tmp), and ``extra`` (the organizer's ``--env``). Nothing else of the
    caller's environment, no HYGIEIA_* setting."""
    packages = [p for p in site.getsitepackages() if Path(p).is_dir()]
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
           "HOME": "/tmp" if sandboxed else os.environ.get("HOME", "/tmp"), "TMPDIR": scratch,
           "LANG": "C.UTF-8", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
           "http_proxy": "", "https_proxy": "",
           "PYTHONPATH": os.pathsep.join([program_dir] + packages)}
    env.update({k: os.environ[k] for k in IMAGE_ENV + ("CUDA_VISIBLE_DEVICES",) if k in os.environ})
    env.update(extra)
    return env


@functools.lru_cache(maxsize=None)
def bwrap_options() -> frozenset[str]:
    """The options this bubblewrap knows (from ``bwrap --help``); empty when it is not installed."""
    if not shutil.which("bwrap"):
        return frozenset()
    shown = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=30)
    return frozenset(word for line in (shown.stdout + shown.stderr).splitlines()
                     for word in line.split()[:1] if word.startswith("--"))


def bwrap_problem() -> str | None:
    """Why a step cannot run under bubblewrap here (as it would run: bwrap_argv), or None."""
    if not shutil.which("bwrap"):
        return "bubblewrap (bwrap) is not installed"
    options = bwrap_options()
    missing = [o for o in ("--perms", "--dir", "--cap-add", "--die-with-parent", "--new-session") if o not in options]
    if missing:
        return f"this bubblewrap is too old (no {', '.join(missing)}; 0.5 or later is needed)"
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        program, scratch = Path(folder, "program"), Path(folder, "tmp")
        program.mkdir(mode=0o755)
        scratch.mkdir(mode=0o755)
        # /tmp writable, as a step's scratch is: a Python under /tmp is mounted inside it (its folders made there)
        step = Step("probe", {"/app/program": program, "/tmp": scratch}, {"/app/program"}, "python3 -S -c pass", 30)
        argv = bwrap_argv(step, step_env("/app/program", {}, sandboxed=True)) + command_argv(step.command, None)
        probe = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"bubblewrap cannot make a sandbox here ({(probe.stderr.strip().splitlines() or ['no message'])[-1]})"
    return None


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
        warn_no_sandbox("run", "--sandbox none: the steps run as plain processes")
        return Sandbox("none")
    if requested in ("auto", "docker"):
        problem = docker_problem(image)
        if problem is None:
            return Sandbox("docker", image, gpus)
        if requested == "docker":
            raise HygieiaError(f"--sandbox docker: {problem}")
        print(f"run: not using Docker: {problem}", file=sys.stderr, flush=True)
    problem = bwrap_problem()
    if problem is None:
        return Sandbox("bwrap")
    if requested == "bwrap":
        raise HygieiaError(f"--sandbox bwrap: {problem}")
    warn_no_sandbox("run", f"no sandbox: {problem}, and Docker is not used: the steps run as plain processes")
    return Sandbox("none")


def docker_argv(step: Step, image: str, name: str, extra: dict[str, str], *, gpus: bool = False,
                user: str | None = None, limits: Limits | None = None) -> list[str]:
    """``docker run`` for a step, as compute_worker.py creates its container (working dir, environment,
    dropped capabilities, no-new-privileges, host user namespace), plus what Codabench leaves to its
    machines: only the step's folders, the program and its input read-only, the image's files too
    (--read-only, but with --gpus; /tmp is the step's scratch folder), no network, an unprivileged
    user (the caller, or nobody when the caller is root), the memory limit (no swap beyond it), and
    the image as present locally (no pull)."""
    user = user or "{}:{}".format(*step_user())
    argv = ["docker", "run", "--name", name, "--pull", "never", "--network", "none", "--user", user,
            "--userns", "host", "--security-opt", "no-new-privileges", "--workdir", "/app/program"]
    # NVIDIA's container hooks write into the image's files as the container starts (ld.so.cache...):
    # with --gpus its files stay writable, but only by root, which the step is not.
    argv += [] if gpus else ["--read-only"]
    for capability in CODABENCH_CAP_DROP:
        argv += ["--cap-drop", capability]
    if limits is not None:
        argv += ["--memory", str(limits.memory), "--memory-swap", str(limits.memory)]
    env = {"PYTHONUNBUFFERED": "1", "http_proxy": "", "https_proxy": "", "HOME": "/tmp", **extra}
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


def docker_oom_killed(name: str) -> bool:
    """Whether the kernel killed a process of the container for going past its --memory."""
    shown = subprocess.run(["docker", "inspect", "--format", "{{.State.OOMKilled}}", name], capture_output=True,
                           text=True, timeout=60)
    return shown.stdout.strip() == "true"


def bwrap_argv(step: Step, env: dict[str, str], *, as_root: bool | None = None) -> list[str]:
    """bubblewrap around a step: the system and Python read-only, the step's folders at their mount
    points, its own /dev/shm (64 MiB), no network, its own process tree that dies with the step, every
    capability dropped, as ``step_user()``. As root, bubblewrap mounts in the host's user namespace and
    the command starts with DROP_PRIVILEGES (nobody:nogroup, no capability in any set); as another user,
    bubblewrap runs as that user in a user namespace of its own. Folders are made 0755 on the way to
    each mount point, so that the step's user reaches them (/root/... included)."""
    as_root = os.geteuid() == 0 if as_root is None else as_root
    argv = ["bwrap", "--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL"]
    if as_root:
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        argv += [arg for cap in ROOT_BWRAP_CAPS for arg in ("--cap-add", cap)]
    else:
        argv += ["--unshare-all"]
    symlinks, binds = [], []
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            symlinks += [("--symlink", os.readlink(path), path)]
        elif os.path.isdir(path):
            binds += [("--ro-bind", path, path)]
    for prefix in sorted({sys.prefix, sys.base_prefix, os.path.realpath(sys.prefix),
                          os.path.realpath(sys.base_prefix)}):
        binds += [("--ro-bind", prefix, prefix)]
    for name in IMAGE_ENV:
        if name in env and Path(env[name]).exists():
            binds += [("--ro-bind", env[name], env[name])]
    for device in sorted(glob.glob("/dev/nvidia*")):
        binds += [("--dev-bind", device, device)]
    for point, folder in sorted(step.mounts.items()):
        binds += [("--ro-bind" if point in step.read_only else "--bind", str(folder), point)]
    for option, source, dest in symlinks:
        argv += [option, source, dest]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777"]
    argv += (["--size", str(SHM_BYTES)] if "--size" in bwrap_options() else []) + ["--tmpfs", "/dev/shm"]
    made = {"/", "/proc", "/dev"} | {dest for _, _, dest in symlinks}
    # Outer mount points first (/tmp before a venv under /tmp), each folder on the way made 0755
    for option, source, dest in sorted(binds, key=lambda bind: (len(Path(bind[2]).parts), bind[2])):
        for folder in map(str, reversed(Path(dest).parents)):
            if folder not in made:
                argv += ["--perms", "0755", "--dir", folder]
                made.add(folder)
        argv += [option, source, dest]
        made.add(dest)
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    argv += ["--chdir", "/app/program", "--"]
    if as_root:
        argv += [sys.executable, "-S", "-c", DROP_PRIVILEGES, *map(str, step_user())]
    return argv


def hand_over(step: Step) -> None:
    """As root, give the folders a step may write to the step's user (nobody), so that it can write
    them; the worker, root, still reads and removes them."""
    if os.geteuid() != 0:
        return
    uid, gid = SANDBOX_USER
    for folder in step.writable().values():
        os.lchown(folder, uid, gid)
        for parent, folders, files in os.walk(folder):
            for name in folders + files:
                os.lchown(os.path.join(parent, name), uid, gid)


_warned: set[str] = set()


def _memory_cgroup(step: Step, limits: Limits) -> MemoryCgroup | None:
    try:
        return MemoryCgroup(step.name, limits.memory)
    except CgroupUnavailable as err:
        if str(err) not in _warned:
            _warned.add(str(err))
            print(f"run: warning: the memory limit ({format_size(limits.memory)}) is not enforced: {err}",
                  file=sys.stderr, flush=True)
        return None


def run_step(step: Step, sandbox: Sandbox, extra_env: dict[str, str], log_dir: Path, echo: bool,
             limits: Limits | None = None) -> StepResult:
    """Run one container's command, teeing its output to log files; end all of it at the time limit,
    or as soon as it goes past ``limits`` (its result's ``overrun`` then names the limit)."""
    limits = limits or Limits.default()
    if sandbox.kind != "none":
        hand_over(step)
    watches = [FolderWatch(folder, limits.scratch if point == "/tmp" else limits.output,
                           f"the {step.name} step's {point}", "--scratch" if point == "/tmp" else "--max-output")
               for point, folder in step.writable().items()]
    if sandbox.kind == "docker":
        name = f"hygieia-{step.name}-{uuid.uuid4().hex[:12]}"
        argv = docker_argv(step, sandbox.image, name, extra_env, gpus=sandbox.gpus, limits=limits)
        oom = []

        def stop():
            oom.append(docker_oom_killed(name))
            remove_container(name)
        result = _supervise(step.name, argv, None, None, step.limit, log_dir, echo, watches, stop=stop)
        result.container = name
        if result.overrun is None and any(oom):
            result.overrun = _memory_overrun(step.name, limits, "a process of its container")
        return result
    sandboxed = sandbox.kind == "bwrap"
    program = "/app/program" if sandboxed else str(step.mounts["/app/program"])
    env = step_env(program, extra_env, sandboxed=sandboxed,
                   scratch="/tmp" if sandboxed else str(step.mounts.get("/tmp", "/tmp")))
    if sandboxed:
        argv = bwrap_argv(step, env) + command_argv(step.command, None)
        popen_env, cwd = None, None
    else:
        argv = command_argv(step.command, step.mounts)
        popen_env, cwd = env, step.mounts["/app/program"]
    memory = _memory_cgroup(step, limits)
    try:
        result = _supervise(step.name, argv, cwd, popen_env, step.limit, log_dir, echo, watches, memory=memory,
                            limits=limits)
        if memory is not None:
            result.peak_memory = memory.peak()
    finally:
        if memory is not None:
            memory.close()   # every process still in it (a plain process's detached children) ends
    return result


def _memory_overrun(name: str, limits: Limits, what: str) -> str:
    return (f"the {name} step went past its memory limit of {format_size(limits.memory)} "
            f"(hygieia run --memory): the kernel killed {what}; the step was stopped")


def _supervise(name: str, argv: list[str], cwd, env, limit: float, log_dir: Path, echo: bool,
               watches: list[FolderWatch], *, memory: MemoryCgroup | None = None, limits: Limits | None = None,
               stop=None) -> StepResult:
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}_stdout.txt", log_dir / f"{name}_stderr.txt"
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=memory.join if memory is not None else None)
    threads = [threading.Thread(target=_tee, args=(proc.stdout, out_path, sys.stdout if echo else None),
                                daemon=True),
               threading.Thread(target=_tee, args=(proc.stderr, err_path, sys.stderr if echo else None),
                                daemon=True)]
    for thread in threads:
        thread.start()

    def overrun() -> str | None:
        if memory is not None and memory.oom_kills():
            return _memory_overrun(name, limits, f"{memory.oom_kills()} of its processes")
        return next((problem for watch in watches if (problem := watch.check())), None)

    timed_out, problem = False, None
    deadline = start + limit
    try:
        while True:
            try:
                proc.wait(timeout=max(0.0, min(WATCH_SECONDS, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                problem = overrun()
                if problem:
                    break
    finally:  # the end of the step, a limit, SIGINT or SIGTERM: nothing of the step stays
        if stop is not None:
            stop()
        _kill_group(proc.pid)
        proc.wait()
    for thread in threads:  # a process outside the group may still hold the pipes: do not wait for it
        thread.join(timeout=2)
    if not timed_out and problem is None:
        problem = overrun()   # what it did just before it ended
    return StepResult(name, proc.returncode, time.monotonic() - start, timed_out, out_path, err_path,
                      overrun=problem)


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
