"""Atomic, deterministic file writes: a crash never leaves a half-written file behind."""

from __future__ import annotations

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
