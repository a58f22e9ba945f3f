"""Zip files as the bundle needs them: deterministic to write, and unpacked the way Codabench's worker does
(a plain extract).

Deterministic: entries sorted by name, one fixed timestamp, fixed permissions, no directory entries,
so the same inputs give the same bytes. Zips nested in a zip are stored, not compressed again.
A folder (a bundle's, a submission's, a step's output) is copied without following anything: a
symbolic link, FIFO, device or socket in it refuses the copy, named.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path

from hygieia.errors import HygieiaError
from hygieia.files import check_zip_limits, entries_outside, open_regular, special_entry, write_zip  # noqa: F401

SKIPPED_NAMES = {"__pycache__", ".ipynb_checkpoints", ".DS_Store", ".pytest_cache"}


def folder_entries(folder: str | Path, prefix: str = "") -> dict[str, Path]:
    """Every file under ``folder`` as {arcname: path}, skipping caches and compiled files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HygieiaError(f"{folder}: folder not found")
    entries = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part in SKIPPED_NAMES for part in relative.parts) or path.suffix == ".pyc":
            continue
        if path.is_symlink():
            raise HygieiaError(f"{path}: symbolic links are not allowed in a bundle")
        if path.is_file():
            entries[f"{prefix}{relative.as_posix()}"] = path
    return entries


def read_zip(path: str | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise HygieiaError(f"{path}: not a readable zip file ({err})") from err


def safe_extract(archive: zipfile.ZipFile, dest: Path, source: str | Path) -> None:
    """Extract every entry under ``dest``; refuse names that would land outside it."""
    outside = entries_outside(archive, dest)
    if outside:
        raise HygieiaError(f"{source}: entry {outside[0]!r} would be written outside the folder")
    archive.extractall(dest)


def unpack(source: str | Path, dest: str | Path, *, max_bytes: int | None = None,
           max_entries: int | None = None) -> None:
    """Put ``source`` (a zip, or a folder that Codabench would zip first) into ``dest`` as the worker does:
    a plain extract, nothing moved up a level (compute_worker.py, ``Run._get_bundle``). A zip or folder
    that would unpack past ``max_bytes`` or ``max_entries`` is refused before anything is written, and so
    is a folder holding a symbolic link, FIFO, device or socket (``copy_folder``)."""
    source, dest = Path(source), Path(dest)
    if source.is_dir():   # the caller's own argument: a link to it is followed, none inside it
        # Codabench zips a folder with shutil.make_archive (which follows links) and extracts it: the
        # same tree as a plain copy, which this is, without following anything.
        copy_folder(source, dest, max_bytes=max_bytes, max_entries=max_entries)
        return
    if not source.is_file():
        raise HygieiaError(f"{source}: not found")
    with read_zip(source) as archive:
        check_zip_limits(archive, source, max_bytes=max_bytes, max_entries=max_entries)
    dest.mkdir(parents=True, exist_ok=True)
    _extract(source, dest, label=source)


def _extract(zip_path, dest: Path, label) -> None:
    with read_zip(zip_path) as archive:
        safe_extract(archive, dest, label)


def folder_tree(folder: str | Path) -> tuple[list[Path], list[tuple[Path, int]]]:
    """The sub-folders and the regular files (with their sizes) under ``folder``, found without
    following anything; HygieiaError naming the first symbolic link, FIFO, device or socket."""
    folder = Path(folder)
    folders, files = [], []
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path, info = Path(entry.path), entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    folders.append(path)
                    pending.append(path)
                elif stat.S_ISREG(info.st_mode):
                    files.append((path, info.st_size))
                else:
                    raise HygieiaError(f"{folder}: {path.relative_to(folder)} is "
                                       f"{special_entry(path, info.st_mode)}: a link, FIFO or device is never "
                                       "followed or copied")
    return folders, files


def copy_folder(source: str | Path, dest: str | Path, *, max_bytes: int | None = None,
                max_entries: int | None = None) -> None:
    """Copy the folders and regular files of ``source`` into ``dest``; refused, before anything is
    written, past ``max_bytes`` or ``max_entries`` or for a link, FIFO, device or socket in it."""
    source, dest = Path(source), Path(dest)
    folders, files = folder_tree(source)
    if max_entries is not None and len(folders) + len(files) > max_entries:
        raise HygieiaError(f"{source}: {len(folders) + len(files)} entries, more than the limit of {max_entries}")
    total = sum(size for _, size in files)
    if max_bytes is not None and total > max_bytes:
        raise HygieiaError(f"{source}: holds {total / 1e6:.0f} MB, more than the limit of {max_bytes / 1e6:.0f} MB")
    dest.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        (dest / folder.relative_to(source)).mkdir(parents=True, exist_ok=True)
    for path, _ in files:
        with os.fdopen(open_regular(path), "rb") as src, open(dest / path.relative_to(source), "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
