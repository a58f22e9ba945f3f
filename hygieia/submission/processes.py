"""Processes seen from ingestion: the process table, descendants, and killing them by rounds.

On Linux, ingestion makes itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``) before it
starts the submission, so a process that the submission detaches (a double fork, ``setsid``) is
re-parented to ingestion instead of to init, and is found in ``/proc``. ``kill_all`` is the last
resort of ``hygieia.submission.isolation`` (its "session" mechanism): a bounded number of rounds,
which a fast fork chain can outrun; it then says how many processes are still alive.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from hygieia.submission.launcher import PR_SET_PDEATHSIG, prctl

PR_SET_CHILD_SUBREAPER = 36
KILL_ROUNDS = 50  # a process forked between two scans is found in the next one


def become_subreaper() -> bool:
    """Adopt the orphans of our descendants (Linux); False where the system does not offer it."""
    return prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(parent: int) -> None:
    """In the submission's process: be killed if ingestion is (a worker's SIGKILL at its time limit)."""
    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL) and os.getppid() != parent:
        os._exit(1)  # ingestion ended before the request took effect


def process_table() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, state)} of every process in /proc ({} without /proc); state "Z" is a zombie."""
    parents = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        parents[int(entry.name)] = (int(parent), state)
    return parents


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    return [child for child, (parent, _state) in process_table().items() if parent == pid]


def descendants(root: int, exclude: set[int] = frozenset()) -> list[int]:
    """Every descendant of ``root`` (zombies included), leaving out the subtrees of the pids in ``exclude``."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _state) in process_table().items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [pid for pid in children.get(root, []) if pid not in exclude]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(p for p in children.get(pid, []) if p not in exclude)
    return found


def _signal(pid: int, signum: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pids) -> None:
    """Collect the exit status of adopted processes, so that none stays a zombie."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def alive(pids) -> list[int]:
    """The pids of ``pids`` that are still running (neither gone nor zombies)."""
    states = process_table()
    return [pid for pid in pids if pid in states and states[pid][1] != "Z"]


def _kill_with_group(pid: int) -> None:
    """SIGKILL ``pid`` and its process group (all at once: a fork chain that stays in its group dies
    whole), unless that group is ours. The submission's process has a session of its own, so its
    descendants' groups hold none of ours."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    if group != os.getpgrp():
        _signal(group, signal.SIGKILL, group=True)
    _signal(pid, signal.SIGKILL)


def kill_all(process, keep: set[int]) -> tuple[int, list[int]]:
    """SIGKILL ``process``, the process group it may have made of its own, and every descendant of ours
    that is not under a pid in ``keep`` with its process group, for at most KILL_ROUNDS rounds; return how
    many other processes were found, and the pids of the descendants still alive after the rounds (a
    fork chain's head, when a scan catches it: a chain that changes group at every step can outrun it)."""
    _signal(process.pid, signal.SIGKILL, group=True)
    _signal(process.pid, signal.SIGKILL)
    others = set()
    for _ in range(KILL_ROUNDS):
        found = [pid for pid in descendants(os.getpid(), keep) if pid != process.pid]
        _reap(found)
        running = alive(found)
        if not running:
            break
        others.update(running)
        for pid in running:
            _kill_with_group(pid)
        time.sleep(0.01)
    process.wait()
    _reap(others)
    return len(others), alive(descendants(os.getpid(), keep))
