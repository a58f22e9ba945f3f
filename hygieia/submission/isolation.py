"""Keeping the submission's processes away from ingestion, and ending every one of them.

Ingestion makes itself non-dumpable (``PR_SET_DUMPABLE`` 0: without ``CAP_SYS_PTRACE`` in its user
namespace no process can ptrace it or open its ``/proc/<pid>/mem``), then starts the submission's
process with the first of these mechanisms that the machine allows:

- ``namespaces``: the submission runs in a user, PID and mount namespace of its own, under a small
  trusted init (``hygieia.submission.launcher``, whose protocol is there). Ingestion is not
  in that PID namespace: ptrace, ``prlimit`` and ``kill`` on it name no process there, and a pidfd
  made from its ``/proc`` entry is refused. When the submission's process ends, the init kills every
  process left in the namespace at once (``kill(-1)``, which no fork can outrun) and reaps them; if
  ingestion stops the run, the launcher kills the init, and the kernel kills the whole namespace.
  Either way the launcher exits only when the namespace is empty. Unprivileged processes may create
  these namespaces on most Linux systems; Docker's default seccomp profile forbids it (Codabench).
- ``alone``: ingestion is alone in its PID namespace (the PID 1 of Codabench's container, or the
  only process under a sandbox's init), so every other process there is the submission's:
  ``kill(-1, SIGKILL)`` ends them all at once. The submission gets its own session. A PID 1 receives
  no signal from inside its namespace but those it handles (SIGINT, SIGTERM: the run then fails as
  interrupted); ``prlimit`` on ingestion stays possible and is detected afterwards.
- ``session``: neither; the submission gets its own session and ingestion, a child subreaper,
  kills what it finds of its descendants for a bounded number of rounds. The submission can signal
  ingestion and change its limits; a fork chain may outrun the rounds (the run then fails). Said
  loudly in the log and in ingestion.json.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from hygieia.submission import launcher
from hygieia.submission.launcher import NAMESPACES, changed_limits, make_undumpable, own_limits
from hygieia.submission.processes import alive, children, descendants, kill_all, process_table

__all__ = ["Isolation", "SubmissionProcess", "changed_limits", "choose", "make_undumpable", "own_limits"]

DESCRIPTIONS = {
    "namespaces": "the submission runs in user, PID and mount namespaces of its own: it cannot trace, "
                  "signal or limit ingestion (nor see it, with a /proc of its own), and every process it "
                  "starts ends with it",
    "alone": "no namespace can be created here (Docker's seccomp profile?); ingestion is alone in its PID "
             "namespace, so kill(-1) ends every process of the submission at once",
    "session": "no namespace can be created here and ingestion is not alone in its PID namespace: the "
               "submission runs in its own session only",
}
MISSING = {
    "namespaces": [],
    "alone": ["the submission can change ingestion's resource limits (detected afterwards: the run fails)",
              "the submission can send ingestion the signals it handles (the run then fails as interrupted)"],
    "session": ["the submission can signal ingestion and change its resource limits",
                "a fork chain may outrun the cleanup (the run then fails)"],
}


# Why ingestion warns (hygieia.isolation.warn_no_sandbox, the warning ``hygieia run`` prints too).
NOT_CONTAINED = "not inside a container or sandbox (other processes share ingestion's PID namespace)"


def unsandboxed_reason() -> str | None:
    """NOT_CONTAINED unless ingestion is alone in its PID namespace (a container's or a sandbox's)."""
    return None if alone_in_pid_namespace() else NOT_CONTAINED


@dataclass
class Isolation:
    """How this run keeps the submission's processes away; reported in ingestion.json."""
    mechanism: str
    why_not_namespaces: str | None = None
    own_proc: bool | None = None     # namespaces: whether the submission got a /proc of its own
    missing: list[str] = field(default_factory=list)

    def report(self) -> dict:
        return {"mechanism": self.mechanism, "description": DESCRIPTIONS[self.mechanism],
                "namespaces_unavailable": self.why_not_namespaces, "own_proc": self.own_proc,
                "missing": list(self.missing)}

    def log_line(self) -> str:
        line = f"isolation: {self.mechanism}: {DESCRIPTIONS[self.mechanism]}"
        if self.why_not_namespaces and self.mechanism != "namespaces":
            line += f" (namespaces: {self.why_not_namespaces})"
        if self.missing:
            line = "WARNING: " + line + ". Not protected: " + "; ".join(self.missing)
        return line


def namespaces_problem() -> str | None:
    """Why this process cannot create user + PID + mount namespaces for a child, or None: tried in a fresh
    interpreter (a fork of a process with threads, as pytest or a notebook, may not survive its own libc
    calls), which exits at once."""
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    probe = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
             f"print(0 if libc.unshare({NAMESPACES}) == 0 else ctypes.get_errno())")
    try:
        done = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=60)
        code = int(done.stdout.strip() or errno.EIO)
    except (OSError, subprocess.TimeoutExpired, ValueError) as err:
        return f"unshare(CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNS) could not be tried ({err})"
    return None if code == 0 else f"unshare(CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNS): {os.strerror(code)}"


def alone_in_pid_namespace() -> bool:
    """Whether every other process of this PID namespace is its init (our parent) or our descendant."""
    me = os.getpid()
    if me == 1:
        return True
    try:
        if int(os.readlink("/proc/self")) != me:
            return False  # /proc is another namespace's
    except (OSError, ValueError):
        return False
    if os.getppid() != 1:
        return False
    mine = set(descendants(me))
    return all(pid in (1, me) or pid in mine for pid in process_table())


def choose(without_namespaces: bool = False) -> Isolation:
    """The strongest mechanism available (``without_namespaces``: as if namespaces were refused)."""
    problem = "not tried ($HYGIEIA_NO_NAMESPACES=1)" if without_namespaces else namespaces_problem()
    if problem is None:
        mechanism = "namespaces"
    else:
        mechanism = "alone" if alone_in_pid_namespace() else "session"
    return Isolation(mechanism, problem, missing=list(MISSING[mechanism]))


ENDING_TIMEOUT = 60.0  # seconds for the namespace's last processes to die (a process in disk sleep)


@dataclass
class Ended:
    """The end of the submission's processes: its own process's return code (``Popen.returncode``
    style, -N for signal N; None when it did not end by itself), how many other processes were
    ended, the pids of those that could not be (only in the "session" mechanism), and what went
    wrong with the isolation itself (the run then fails with that message)."""
    returncode: int | None
    others: int
    survivors: list[int]
    problem: str | None = None


class SubmissionProcess:
    """The submission's process, started under ``isolation``; ``finish`` ends it and all it started.

    ``argv(parent)`` is its command line given the pid its parent has in its eyes (``die_with_parent``);
    ``pass_fds`` reach it (and only it) open. Its stdin is /dev/null; stdout and stderr are ours."""

    def __init__(self, isolation: Isolation, argv, pass_fds: tuple[int, ...], env: dict):
        self.isolation = isolation
        self.keep = set(children(os.getpid()))
        self.report_fd = None
        if isolation.mechanism == "namespaces":
            self.report_fd, report_write = os.pipe()
            passed = ",".join(map(str, pass_fds)) or "-"
            command = [sys.executable, "-S", "-m", launcher.__name__, str(report_write), str(os.getpid()), passed,
                       "--", *argv("1")]  # the init is PID 1 of the new namespace
            fds = (*pass_fds, report_write)
        else:
            command, fds = argv(str(os.getpid())), pass_fds
        try:
            # A session of its own: a kill(0) or killpg from the submission does not reach ingestion.
            self.process = subprocess.Popen(command, pass_fds=fds, stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)
        finally:
            if self.report_fd is not None:
                os.close(report_write)

    def wait(self, timeout: float) -> bool:
        """Whether the process (the launcher, with namespaces) has ended within ``timeout`` seconds."""
        try:
            self.process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def finish(self) -> Ended:
        """Stop the process if it runs, end every process it started, wait until they are all gone."""
        if self.isolation.mechanism == "namespaces":
            return self._finish_namespaces()
        if self.isolation.mechanism == "alone":
            return self._finish_alone()
        others, survivors = kill_all(self.process, self.keep)
        return Ended(self.process.returncode, others, survivors)

    def _finish_namespaces(self) -> Ended:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the launcher kills the init: the namespace goes
        if not self.wait(ENDING_TIMEOUT):
            self.process.kill()
            self.process.wait()
        with os.fdopen(self.report_fd, "rb") as stream:
            try:
                report = json.loads(stream.read() or b"{}")
            except ValueError:
                report = {}
        if report.get("error"):
            raise OSError(f"could not start the submission's process in its namespaces: {report['error']}")
        self.isolation.own_proc = report.get("own_proc")
        # Left over only if the launcher died first: its init, adopted by ingestion (a subreaper).
        others, survivors = kill_all_adopted(self.keep)
        status = report.get("status")
        returncode = None if status is None else os.waitstatus_to_exitcode(status)
        problem = None
        if report.get("limits_changed"):
            problem = ("the submission changed the resource limits of its namespace's init, its parent "
                       f"process ({report['limits_changed']})")
        elif status is None and not report.get("stopped"):
            init = report.get("init_status")
            how = "ended" if init is None else describe_status(os.waitstatus_to_exitcode(init))
            problem = (f"the init of the submission's namespace {how} before the submission's process "
                       "(the submission lowered its limits?); every process of the namespace was stopped")
        return Ended(returncode, int(report.get("others") or 0) + others, survivors, problem)

    def _finish_alone(self) -> Ended:
        for target in (lambda: os.killpg(self.process.pid, signal.SIGKILL), lambda: os.kill(-1, signal.SIGKILL)):
            try:
                target()  # kill(-1): every process of the namespace but its init and ingestion, at once
            except (ProcessLookupError, PermissionError):
                pass
        self.process.wait()
        others = 0
        while True:  # every other process was ours: reap them all (ingestion is a subreaper or PID 1)
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
            others += 1
        return Ended(self.process.returncode, others, alive(descendants(os.getpid(), self.keep)))


def describe_status(returncode: int) -> str:
    """"was killed by signal SIGKILL" or "exited with status 3"."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        return f"was killed by signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


def kill_all_adopted(keep: set[int]) -> tuple[int, list[int]]:
    """SIGKILL and reap our descendants outside ``keep`` (none unless a launcher died before its init)."""
    found = descendants(os.getpid(), keep)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in found:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return len(found), alive(descendants(os.getpid(), keep))
