"""The bounds of one step of ``hygieia run``: its memory (a cgroup of its own, or docker's ``--memory``),
what it may add to the folders it can write (its output, its copy of the submission, ``/tmp``), checked
while it runs and once more at its end, and sizes as people write them ("12g", "500m").
"""

from __future__ import annotations

import os
import re
import signal
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from hygieia.errors import HygieiaError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
# What a 16 GB Codabench worker leaves to its container (the system, Docker and the worker take the rest).
MEMORY_CAP = 12 * GiB
DEFAULT_OUTPUT = 1 * GiB       # what a step may add to a folder it writes: ingestion writes < 100 MB
DEFAULT_SCRATCH = 2 * GiB      # its /tmp
MAX_NEW_ENTRIES = 100_000      # files and folders a step may add to one of them
UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}


def default_memory() -> int:
    """12 GiB, or three quarters of this machine's memory when it has less than 16 GiB."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(MEMORY_CAP, total * 3 // 4)


@dataclass(frozen=True)
class Limits:
    """Per step: ``memory`` (bytes), what it may add to each folder it writes (``output``) and to its
    ``/tmp`` (``scratch``)."""
    memory: int
    output: int = DEFAULT_OUTPUT
    scratch: int = DEFAULT_SCRATCH

    @classmethod
    def default(cls) -> Limits:
        return cls(default_memory())

    def describe(self) -> str:
        return (f"memory {format_size(self.memory)}, output +{format_size(self.output)}, "
                f"/tmp {format_size(self.scratch)} per step")


def parse_size(text: str, option: str) -> int:
    """Bytes from "12g", "500m", "1.5G", "64k" or a plain number of bytes (powers of 1024, as docker)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgt]?)(?:i?b)?", text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise HygieiaError(f"{option} {text!r}: expected a size such as 12g, 500m or 64k")
    return int(float(match.group(1)) * UNITS[match.group(2)])


def format_size(size: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


# -- what a step writes ----------------------------------------------------------------------------
def folder_usage(folder: Path, stop_bytes: int | None = None, stop_entries: int | None = None) -> tuple[int, int]:
    """(bytes, entries) under ``folder``, following nothing; a file counts its size or its blocks,
    whichever is larger. Stops counting once past ``stop_bytes`` or ``stop_entries``."""
    used = entries = 0
    pending = [folder]
    while pending:
        try:
            listing = os.scandir(pending.pop())
        except OSError:          # removed meanwhile, or a folder the step made unreadable: not counted
            continue
        with listing:
            for entry in listing:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries += 1
                if stat.S_ISDIR(info.st_mode):
                    pending.append(Path(entry.path))
                elif stat.S_ISREG(info.st_mode):
                    used += max(info.st_size, info.st_blocks * 512)
                if (stop_bytes is not None and used > stop_bytes) or \
                        (stop_entries is not None and entries > stop_entries):
                    return used, entries
    return used, entries


class FolderWatch:
    """What a step adds to a folder it may write, against ``limit``: measured from what the folder held
    before the step (the worker's copy of the submission, for one)."""

    def __init__(self, folder: Path, limit: int, what: str, option: str):
        self.folder, self.limit, self.what, self.option = folder, limit, what, option
        self.bytes, self.entries = folder_usage(folder)

    def check(self) -> str | None:
        used, entries = folder_usage(self.folder, self.bytes + self.limit, self.entries + MAX_NEW_ENTRIES)
        if used - self.bytes > self.limit:
            return (f"{self.what} grew past its limit of {format_size(self.limit)} "
                    f"(hygieia run {self.option}); the step was stopped")
        if entries - self.entries > MAX_NEW_ENTRIES:
            return f"{self.what} got more than {MAX_NEW_ENTRIES:,} new files and folders; the step was stopped"
        return None


# -- memory: a cgroup per step ---------------------------------------------------------------------
class CgroupUnavailable(Exception):
    """No memory cgroup can be made here; the message says why."""


def _cgroup_mounts() -> dict[str, Path]:
    """{"memory": the cgroup v1 memory hierarchy, "unified": the cgroup v2 one}, as mounted here."""
    found = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fstype, _source, options = (after.split() + ["", "", ""])[:3]
        point = Path(before.split()[4].replace("\\040", " "))
        if fstype == "cgroup2":
            found.setdefault("unified", point)
        elif fstype == "cgroup" and "memory" in options.split(","):
            found.setdefault("memory", point)
    return found


def _cgroup_parent() -> tuple[Path, int]:
    """Where a step's memory cgroup goes, and the cgroup version: under this process's own memory
    cgroup (v1), or beside it (v2 keeps processes out of a cgroup whose children use controllers)."""
    mounts = _cgroup_mounts()
    lines = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    for _, controllers, path in lines:
        if "memory" in controllers.split(",") and "memory" in mounts:
            return mounts["memory"] / path.lstrip("/"), 1
    for number, _, path in lines:
        if number == "0" and "unified" in mounts:
            own = mounts["unified"] / path.lstrip("/")
            for parent in (own, own.parent):
                control = parent / "cgroup.subtree_control"
                if control.is_file() and "memory" in control.read_text().split():
                    return parent, 2
            raise CgroupUnavailable(f"the memory controller is not delegated to {own.parent}")
    raise CgroupUnavailable("no memory cgroup is mounted")


class MemoryCgroup:
    """A memory cgroup for the processes of one step: its limit, whether the kernel killed a process of
    it for going past the limit, its peak, and the end of every process still in it."""

    def __init__(self, name: str, limit: int):
        parent, self.version = _cgroup_parent()
        self.path = parent / f"hygieia-{name}-{uuid.uuid4().hex[:12]}"
        try:
            self.path.mkdir()
        except OSError as err:
            raise CgroupUnavailable(f"cannot make a cgroup in {parent} ({err.strerror})") from err
        try:
            if self.version == 1:
                self._write("memory.limit_in_bytes", limit)
                self._write("memory.memsw.limit_in_bytes", limit, optional=True)   # no swap beyond it
            else:
                self._write("memory.max", limit)
                self._write("memory.swap.max", 0, optional=True)
        except OSError as err:
            self.close()
            raise CgroupUnavailable(f"cannot set the memory limit of {self.path} ({err.strerror})") from err
        self.procs = str(self.path / "cgroup.procs")

    def _write(self, name: str, value: int, optional: bool = False) -> None:
        if optional and not (self.path / name).exists():
            return
        (self.path / name).write_text(str(value))

    def join(self) -> None:
        """Move the calling process into the cgroup: called in the step's process before it executes."""
        fd = os.open(self.procs, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def _field(self, name: str, key: str) -> int:
        for line in (self.path / name).read_text().splitlines():
            field, _, value = line.partition(" ")
            if field == key:
                return int(value)
        return 0

    def oom_kills(self) -> int:
        return self._field("memory.oom_control" if self.version == 1 else "memory.events", "oom_kill")

    def peak(self) -> int | None:
        path = self.path / ("memory.max_usage_in_bytes" if self.version == 1 else "memory.peak")
        return int(path.read_text()) if path.is_file() else None

    def close(self, seconds: float = 10) -> None:
        """Kill every process left in the cgroup and remove it."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            except FileNotFoundError:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not pids:
                try:
                    self.path.rmdir()
                    return
                except OSError:    # the last processes are still exiting
                    pass
            if time.monotonic() > deadline:
                raise HygieiaError(f"{self.path}: processes of the step would not end: {pids}")
            time.sleep(0.05)
