"""The launcher and the init of the submission's namespaces (the "namespaces" mechanism of
``hygieia.submission.isolation``), and the few system calls the isolation needs.

``python -S -m hygieia.submission.launcher REPORT_FD PARENT_PID PASSED_FDS -- ARGV...``, started by
ingestion in a session of its own. The launcher dies with ingestion (``PR_SET_PDEATHSIG``), makes
itself non-dumpable and creates user, PID and mount namespaces (``unshare``); it maps the caller's
uid and gid into the new user namespace when the kernel lets it (root needs CAP_SETFCAP to map uid
0: otherwise the ids stay unmapped, shown as nobody), then forks the init. The init, PID 1 of the
new namespace, dies with the launcher, mounts a /proc of its own when allowed, starts a new session
and forks ARGV as its one child (which dies with it). The file descriptors PASSED_FDS
(comma-separated, ``-`` for none) reach ARGV open and are closed in the launcher and the init.

When ARGV's process ends, the init kills every other process of the namespace at once (``kill(-1)``)
and reaps them all. On SIGTERM the launcher kills the init, and the kernel the whole namespace. The
launcher returns only once the init is reaped, that is once the namespace is empty, and writes one
JSON line to REPORT_FD: ``status`` (ARGV's wait status; None if it did not end by itself),
``others`` (processes killed in the namespace after it ended), ``own_proc``, ``limits_changed`` (the
init's resource limits that changed while it ran: the submission sees the init, its parent, and may
``prlimit`` it), ``stopped`` (ingestion asked for the stop), ``init_status``; or ``error``.

Standard library only, and few modules of it: the launcher starts in a few tens of milliseconds.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
NAMESPACES = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
EXEC_FAILED = 127


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def call(name: str, *args) -> int:
    """A libc call; returns 0 or the errno it failed with (ENOSYS where libc lacks it)."""
    try:
        function = getattr(_libc(), name)
    except (OSError, AttributeError):
        return errno.ENOSYS
    return 0 if function(*args) == 0 else ctypes.get_errno()


def prctl(option: int, value: int) -> bool:
    return call("prctl", option, value, 0, 0, 0) == 0


def make_undumpable() -> bool:
    """No ptrace, no /proc/<pid>/mem, no core dump of this process without CAP_SYS_PTRACE."""
    return prctl(PR_SET_DUMPABLE, 0)


def own_limits() -> dict[str, tuple[int, int]]:
    """This process's resource limits, by name (the first name of each: RLIMIT_OFILE is RLIMIT_NOFILE)."""
    names = {}
    for name in sorted(dir(resource)):
        if name.startswith("RLIMIT_"):
            names.setdefault(getattr(resource, name), name)
    return {name: resource.getrlimit(number) for number, name in sorted(names.items())}


def changed_limits(before: dict[str, tuple[int, int]]) -> str:
    """The limits that differ from ``before`` (a process that reached this one used ``prlimit``), or ""."""
    now = own_limits()
    return ", ".join(f"{name} {before[name]} -> {now[name]}" for name in before if now[name] != before[name])


def _write_file(path: str, text: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, text.encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _map_ids(uid: int, gid: int) -> None:
    """The caller's uid and gid, the same inside (root without CAP_SETFCAP stays unmapped: nobody)."""
    _write_file("/proc/self/setgroups", "deny")
    _write_file("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write_file("/proc/self/gid_map", f"{gid} {gid} 1\n")


def _mount_proc() -> bool:
    """A /proc of the new PID namespace (refused where the old one is partly hidden, as in bubblewrap)."""
    if call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    return call("mount", b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0


def _reap_all() -> int:
    """Wait for every child (adopted ones included) until none is left; return how many."""
    count = 0
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return count
        count += 1


def _init(report_fd: int, passed: list[int], argv: list[str]) -> None:
    """PID 1 of the new namespace: run ARGV, then end everything else, reap it, report. Never returns."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the launcher, and the namespace with it
    for signum in (signal.SIGINT, signal.SIGTERM):  # as PID 1, unhandled signals from inside are dropped
        signal.signal(signum, signal.SIG_DFL)
    os.setsid()
    own_proc = _mount_proc()
    limits = own_limits()  # the submission sees this process (its parent) and may prlimit it: checked at the end
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(EXEC_FAILED)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for fd in passed:
        os.close(fd)
    while True:  # reap orphans as they come, until the submission's own process ends
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            break
    try:
        os.kill(-1, signal.SIGKILL)  # every other process of the namespace, at once
    except ProcessLookupError:
        pass  # none is left
    others = _reap_all()
    os.write(report_fd, json.dumps({"status": status, "others": others, "own_proc": own_proc,
                                    "limits_changed": changed_limits(limits)}).encode())
    os._exit(0)


def launch(report_fd: int, parent: int, passed: list[int], argv: list[str]) -> None:
    """The launcher, in ingestion's namespaces: make the new ones, fork the init, wait, report."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)  # ingestion ended before the request took effect
    make_undumpable()
    uid, gid = os.geteuid(), os.getegid()
    code = call("unshare", NAMESPACES)
    if code:
        os.write(report_fd, json.dumps({"error": f"unshare: {os.strerror(code)}"}).encode())
        os._exit(1)
    _map_ids(uid, gid)
    state = {"init": None, "stopped": False}

    def stop(signum, frame):
        state["stopped"] = True
        if state["init"]:
            os.kill(state["init"], signal.SIGKILL)  # not reaped yet (below): its pid is still its own

    signal.signal(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # a stop before the fork waits for its pid
    read_end, write_end = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(read_end)
        os.close(report_fd)
        _init(write_end, passed, argv)
    os.close(write_end)
    for fd in passed:
        os.close(fd)
    state["init"] = init
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    # Once every process of the namespace is gone; the init is left a zombie until no stop can target it.
    os.waitid(os.P_PID, init, os.WEXITED | os.WNOWAIT)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    state["init"] = None
    _, init_status = os.waitpid(init, 0)
    with os.fdopen(read_end, "rb") as stream:
        try:
            report = json.loads(stream.read() or b"{}")
        except ValueError:
            report = {}
    report.setdefault("status", None)
    report.update(stopped=state["stopped"], init_status=init_status)
    os.write(report_fd, json.dumps(report).encode())
    os._exit(0)


def main(argv: list[str]) -> None:
    report_fd, parent, passed, separator, *command = argv
    if separator != "--" or not command:
        sys.exit("usage: python -S -m hygieia.submission.launcher REPORT_FD PARENT_PID PASSED_FDS -- ARGV...")
    launch(int(report_fd), int(parent), [int(fd) for fd in passed.split(",") if fd != "-"], command)


if __name__ == "__main__":
    main(sys.argv[1:])
