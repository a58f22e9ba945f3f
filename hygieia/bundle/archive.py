"""Zip files as the bundle needs them: deterministic to write, and unpacked the way Codabench's worker does
(a plain extract).

Deterministic: entries sorted by name, one fixed timestamp, fixed permissions, no directory entries,
so the same inputs give the same bytes. Zips nested in a zip are stored, not compressed again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from hygieia.errors import HygieiaError
from hygieia.files import check_zip_limits, entries_outside, write_zip  # noqa: F401  (write_zip: re-exported)

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
    a plain extract, nothing moved up a level (compute_worker.py, ``Run._get_bundle``). A zip that would
    unpack past ``max_bytes`` or ``max_entries`` is refused before anything is written."""
    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        # Codabench zips a bundle's folder with shutil.make_archive before the worker gets it.
        with tempfile.TemporaryDirectory() as tmp:
            made = shutil.make_archive(os.path.join(tmp, "folder"), "zip", source)
            _extract(made, dest, label=source)
        return
    if not source.is_file():
        raise HygieiaError(f"{source}: not found")
    with read_zip(source) as archive:
        check_zip_limits(archive, source, max_bytes=max_bytes, max_entries=max_entries)
    _extract(source, dest, label=source)


def _extract(zip_path, dest: Path, label) -> None:
    with read_zip(zip_path) as archive:
        safe_extract(archive, dest, label)
