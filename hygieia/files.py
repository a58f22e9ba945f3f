"""Files: atomic, deterministic writes (a crash never leaves a half-written file behind), bounded zip
extraction, .npz headers read without loading, and path arguments checked with one clear line."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import stat
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from hygieia.errors import HygieiaError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | Path):
    """A binary file handle whose content lands at ``path`` (through a rename) only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        # mkstemp creates 0600 files; give the file the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a crash leaves either the old file or the new one."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return write_bytes(path, buffer.getvalue())


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes(path, buffer.getvalue())


def write_csv(path: str | Path, table: pd.DataFrame, float_format: str = "%.6g") -> Path:
    return write_text(path, table.to_csv(index=False, float_format=float_format, lineterminator="\n"))


def entries_outside(archive: zipfile.ZipFile, dest: str | Path) -> list[str]:
    """Names in ``archive`` that would be extracted outside ``dest`` (``../`` or absolute paths)."""
    root = Path(dest).resolve()
    outside = []
    for name in archive.namelist():
        target = (root / name).resolve()
        if target != root and root not in target.parents:
            outside.append(name)
    return outside


ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = 0o644


def write_zip(path: str | Path, entries: dict[str, Path | bytes]) -> Path:
    """A deterministic zip of {arcname: path or bytes}, written atomically: sorted entries, fixed
    timestamps and permissions, so the same entries always give the same bytes."""
    with atomic_file(path) as handle, zipfile.ZipFile(handle, "w", allowZip64=True) as archive:
        for name in sorted(entries):
            _add_zip_entry(archive, name, entries[name])
    return Path(path)


def _add_zip_entry(archive: zipfile.ZipFile, name: str, source: Path | bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.create_system = 3  # unix, so that the permissions below are read back
    info.external_attr = (stat.S_IFREG | ZIP_FILE_MODE) << 16
    info.compress_type = zipfile.ZIP_STORED if name.endswith(".zip") else zipfile.ZIP_DEFLATED
    if isinstance(source, bytes):
        archive.writestr(info, source)
        return
    info.file_size = Path(source).stat().st_size
    with open(source, "rb") as src, archive.open(info, "w", force_zip64=info.file_size > 2**31) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def check_zip_limits(archive: zipfile.ZipFile, source, *, max_bytes: int | None, max_entries: int | None,
                     hint: str = "") -> None:
    """HygieiaError, before anything is extracted, for a zip of more than ``max_entries`` entries or
    ``max_bytes`` uncompressed bytes, as its directory declares them (None: no limit); ``hint`` ends the
    message (where to change the limit)."""
    infos = archive.infolist()
    if max_entries is not None and len(infos) > max_entries:
        raise HygieiaError(f"{source}: {len(infos)} entries, more than the limit of {max_entries}" + hint)
    declared = sum(info.file_size for info in infos)
    if max_bytes is not None and declared > max_bytes:
        raise HygieiaError(f"{source}: {declared / 1e6:.1f} MB uncompressed, more than the limit of "
                           f"{max_bytes / 1e6:.1f} MB" + hint)


def extract_zip(zip_path: str | Path, dest: str | Path, *, max_bytes: int, max_entries: int,
                skip=lambda name: False, limit_hint: str = "") -> Path:
    """Unzip ``zip_path`` into ``dest``, bounded: HygieiaError past ``max_entries`` entries or
    ``max_bytes`` uncompressed bytes, checked from the zip's directory before extracting and counted
    again while writing (a header that lies about sizes does not get through), and for an entry that
    would land outside ``dest``. Entries for which ``skip(name)`` is true are not extracted;
    ``limit_hint`` ends the message of a limit (where to change it)."""
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
            check_zip_limits(archive, zip_path, max_bytes=max_bytes, max_entries=max_entries, hint=limit_hint)
            outside = entries_outside(archive, dest)
            if outside:
                raise HygieiaError(f"{zip_path}: entry {outside[0]!r} points outside the zip")
            written = 0
            for info in infos:
                if skip(info.filename):
                    continue
                target = dest / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise HygieiaError(f"{zip_path}: extracting {info.filename!r} went past the "
                                               f"limit of {max_bytes / 1e6:.1f} MB" + limit_hint)
                        dst.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as err:
        raise HygieiaError(f"{zip_path}: not a readable zip file ({err})") from err
    return dest


def entry_kind(path: str | Path) -> str | None:
    """What is at ``path``, the link itself when it is one (nothing is followed, nothing is read): "file",
    "folder", "symbolic link to <target>", "FIFO", "socket", "character device", "block device"; None if
    nothing is there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        try:
            return f"symbolic link to {os.readlink(path)}"
        except OSError:
            return "symbolic link"
    kinds = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((kind for test, kind in kinds if test(mode)), "special file")


def special_entries(folder: str | Path, max_entries: int | None = None) -> list[tuple[str, str]]:
    """(path relative to ``folder``, kind) of every entry under ``folder`` that is neither a file nor a folder
    (links, FIFOs, sockets, devices), found without following any link or reading any file; HygieiaError
    past ``max_entries`` entries."""
    folder = Path(folder)
    found, seen = [], 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            seen += 1
            if max_entries is not None and seen > max_entries:
                raise HygieiaError(f"{folder}: more than {max_entries} entries")
            kind = entry_kind(Path(root) / name)
            if kind not in ("file", "folder"):
                found.append(((Path(root) / name).relative_to(folder).as_posix(), kind))
    return found


def npz_headers(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} of an .npz file, read from the .npy headers only (no array is loaded)."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                else:
                    raise ValueError(f"{name}: .npy format version {version} is not supported")
            headers[name[:-len(".npy")]] = (tuple(shape), dtype)
    return headers


# Files that untrusted code could have left: read without following a link, never blocking.

SPECIAL_KINDS = {stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
                 stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def special_entry(path: str | Path, mode: int) -> str | None:
    """What ``path`` is ("a symbolic link (to /etc/hostname)", "a FIFO"...) when ``mode`` (from
    ``lstat``) is neither a regular file nor a folder; None for those two."""
    kind = SPECIAL_KINDS.get(stat.S_IFMT(mode))
    if kind is None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = f"a file of type {stat.S_IFMT(mode):o}"
    if kind == SPECIAL_KINDS[stat.S_IFLNK]:
        try:
            kind += f" (to {os.readlink(path)})"
        except OSError:
            pass
    return kind


def open_regular(path: str | Path) -> int:
    """A read-only descriptor of ``path`` if it is a regular file, else HygieiaError saying what it is.
    A symbolic link is never followed and a FIFO or device never opened (checked with ``lstat``, then
    on the open file: O_NOFOLLOW | O_NONBLOCK, so that nothing swapped in between can block a read)."""
    try:
        mode = os.lstat(path).st_mode
        kind = "a folder" if stat.S_ISDIR(mode) else special_entry(path, mode)
        if kind is not None:
            raise HygieiaError(f"{path}: {kind}, not a regular file (not followed, not read)")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise HygieiaError(f"{path}: cannot be read ({err.strerror})") from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise HygieiaError(f"{path}: changed into something other than a regular file while being read")
    return fd


def read_regular(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (see ``open_regular``), refused past ``max_bytes``."""
    with os.fdopen(open_regular(path), "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HygieiaError(f"{path}: larger than the {max_bytes / 1e6:g} MB read from such a file")
    return data


# Path arguments: one line naming the path and what is wrong with it, never a traceback.

def require_dir(path: str | Path, what: str = "folder") -> Path:
    """``path`` if it is a folder this process can read, else HygieiaError naming it."""
    path = Path(path)
    if not path.exists():
        raise HygieiaError(f"{what} {path}: not found")
    if not path.is_dir():
        raise HygieiaError(f"{what} {path}: is a file, not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise HygieiaError(f"{what} {path}: permission denied (cannot read it)")
    return path


def require_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it is a file this process can read, else HygieiaError naming it."""
    path = Path(path)
    if not path.exists():
        raise HygieiaError(f"{what} {path}: not found")
    if path.is_dir():
        raise HygieiaError(f"{what} {path}: is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise HygieiaError(f"{what} {path}: permission denied (cannot read it)")
    return path


def require_file_or_dir(path: str | Path, what: str) -> Path:
    """``path`` if it is a readable file or folder (a zip or its unpacked folder), else HygieiaError."""
    return require_dir(path, what) if Path(path).is_dir() else require_file(path, what)


def _creatable(path: Path, what: str) -> None:
    """``path`` does not exist: its nearest existing parent must be a folder this process can write."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise HygieiaError(f"{what} {path}: cannot be created, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HygieiaError(f"{what} {path}: cannot be created, permission denied in {parent}")


def writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """``path`` if it is a folder this process can write into, or can be created; nothing is created."""
    path = Path(path)
    if not path.exists():
        _creatable(path, what)
    elif not path.is_dir():
        raise HygieiaError(f"{what} {path}: exists and is a file, not a folder")
    elif not os.access(path, os.W_OK | os.X_OK):
        raise HygieiaError(f"{what} {path}: permission denied (cannot write into it)")
    return path


def writable_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` if a file can be written there (a new file, or a file this process may replace)."""
    path = Path(path)
    if path.is_dir():
        raise HygieiaError(f"{what} {path}: is a folder, not a file")
    if not path.exists():
        _creatable(path, what)
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        raise HygieiaError(f"{what} {path}: permission denied in {path.parent}")
    return path


def argument(check, what: str):
    """An argparse ``type=`` for one of the checks above: argparse then prints one line naming the path."""
    def convert(value: str) -> Path:
        try:
            return check(value, what)
        except HygieiaError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    convert.__name__ = what  # argparse names the type in some messages
    return convert
