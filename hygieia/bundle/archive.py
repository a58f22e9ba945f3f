"""Zip files as the bundle needs them: deterministic to write, and unpacked the way Codabench's worker does.

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
from hygieia.files import entries_outside, write_zip  # noqa: F401  (write_zip: part of this module's API)

SKIPPED_NAMES = {"__pycache__", ".ipynb_checkpoints", ".DS_Store", ".pytest_cache"}
# The compute worker looks for these names when it decides whether a program zip has a parent folder.
META_DATA_FILES = ("metadata", "metadata.yaml")


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


def codabench_parent_dir(names: list[str], is_program: bool) -> str | None:
    """The folder that Codabench's compute worker strips when it unpacks a zip.

    For an ingestion or scoring program: the first folder holding a ``metadata``/``metadata.yaml``
    file. For anything else (data, a submission): the first path component of the first entry that
    has a folder in it. The worker moves that folder's contents up one level.
    """
    for name in names:
        if "/" not in name:
            continue
        if not is_program:
            return name.split("/")[0]
        if os.path.basename(name) in META_DATA_FILES:
            return name.split("/")[0]
    return None


def unpack_like_codabench(source: str | Path, dest: str | Path, *, is_program: bool) -> str | None:
    """Put ``source`` (a zip, or a folder that Codabench would zip first) into ``dest`` as the worker does.

    Returns the name of a folder that the worker's rule flattened although the zip had other
    entries beside it (one sub-folder of a data zip with several: a layout that breaks), else None.
    A single top folder, stripped as intended, returns None.
    """
    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        # Codabench zips a bundle's folder with shutil.make_archive before the worker gets it.
        with tempfile.TemporaryDirectory() as tmp:
            made = shutil.make_archive(os.path.join(tmp, "folder"), "zip", source)
            return _unpack_zip(made, dest, is_program, label=source)
    if not source.is_file():
        raise HygieiaError(f"{source}: not found")
    return _unpack_zip(source, dest, is_program, label=source)


def _unpack_zip(zip_path, dest: Path, is_program: bool, label) -> str | None:
    with read_zip(zip_path) as archive:
        names = archive.namelist()
        safe_extract(archive, dest, label)
    parent = codabench_parent_dir(names, is_program)
    if not parent:
        return None
    parent_path = dest / parent
    for child in sorted(parent_path.iterdir()):
        child.rename(dest / child.name)
    parent_path.rmdir()
    alone = all(name.split("/")[0] == parent for name in names)
    return None if alone else parent
