"""Opening a submission (zip or folder), importing its ``model.py``, and zipping one for upload."""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
import zipfile
from pathlib import Path

from hygieia.errors import HygieiaError
from hygieia.files import extract_zip as extract_files
from hygieia.files import special_entries, write_zip
from hygieia.submission.api import MODEL_CLASS, REQUIRED_METHODS, SubmissionError

MODEL_FILE = "model.py"
IGNORED_NAMES = ("__MACOSX", "__pycache__")
MESSAGE_LIMIT = 400  # characters of an exception's message in the one-line summary


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in IGNORED_NAMES


def find_model_file(folder: str | Path) -> Path:
    """``model.py`` at the root of ``folder``, or inside its one wrapper folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SubmissionError(f"submission folder {folder} does not exist")
    found_in = unwrap(folder, MODEL_FILE)
    if found_in is not None and (found_in / MODEL_FILE).is_file():
        return found_in / MODEL_FILE
    entries = sorted(p for p in folder.iterdir() if _visible(p))
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob(MODEL_FILE)
                   if all(_visible(Path(part)) for part in p.relative_to(folder).parts))
    listing = ", ".join(p.name for p in entries[:10]) or "nothing"
    where = f"; found {', '.join(found)} (put model.py at the zip's root)" if found else ""
    raise SubmissionError(f"no {MODEL_FILE} at the submission's root or inside one wrapper folder "
                          f"(the submission holds {listing}){where}")


MAX_BYTES_ENV = "HYGIEIA_MAX_SUBMISSION_MB"
MAX_ENTRIES_ENV = "HYGIEIA_MAX_SUBMISSION_FILES"
DEFAULT_MAX_MB = 1000.0  # a submission with its weights; the competition's own MobileNetV2 is 14 MB
DEFAULT_MAX_ENTRIES = 10_000


def _limit(env: str, default: float) -> float:
    value = os.environ.get(env)
    if not value:
        return default
    try:
        limit = float(value)
    except ValueError:
        limit = -1.0
    if not limit > 0:
        raise HygieiaError(f"${env}={value!r}: expected a positive number")
    return limit


def submission_limits() -> tuple[int, int]:
    """(max uncompressed bytes, max entries) of a submission zip: ${MAX_BYTES_ENV} (MB) and
    ${MAX_ENTRIES_ENV}, defaults 1000 MB and 10,000 entries."""
    return int(_limit(MAX_BYTES_ENV, DEFAULT_MAX_MB) * 1e6), int(_limit(MAX_ENTRIES_ENV, DEFAULT_MAX_ENTRIES))


def _archive_clutter(name: str) -> bool:
    """Entries that macOS and Windows add to zips (``__MACOSX/``, ``._*``, ``.DS_Store``, ``Thumbs.db``)."""
    parts = Path(name).parts
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1].startswith("._")
                            or parts[-1] in (".DS_Store", "Thumbs.db"))


def extract_zip(zip_path: str | Path, folder: str | Path, limits: tuple[int, int] | None = None) -> Path:
    """Unzip ``zip_path`` into ``folder``: bounded by ``limits`` (default ``submission_limits()``),
    refusing entries that would land outside it, leaving out macOS/Windows clutter."""
    max_bytes, max_entries = limits or submission_limits()
    try:
        return extract_files(zip_path, folder, max_bytes=max_bytes, max_entries=max_entries,
                             skip=_archive_clutter, limit_hint=f" (set by ${MAX_BYTES_ENV} / ${MAX_ENTRIES_ENV})")
    except HygieiaError as err:
        raise SubmissionError(str(err)) from err


def unwrap(folder: str | Path, wanted: str) -> Path | None:
    """``folder`` if ``wanted`` is at its root, its one visible subfolder if ``wanted`` is there, else None."""
    folder = Path(folder)
    if (folder / wanted).exists():
        return folder
    subfolders = [p for p in folder.iterdir() if _visible(p) and p.is_dir()]
    if len(subfolders) == 1 and (subfolders[0] / wanted).exists():
        return subfolders[0]
    return None


def open_submission(path: str | Path, workdir: str | Path, limits: tuple[int, int] | None = None) -> Path:
    """The folder holding ``model.py`` for a submission folder or zip (unzipped into ``workdir``,
    bounded by ``limits``: see ``extract_zip``). A folder holding a symbolic link, a FIFO or a device
    anywhere is refused, naming it: nothing of a submission is followed or read but its files."""
    path = Path(path)
    if path.is_file():
        folder = extract_zip(path, workdir, limits)
        if not folder.is_dir() or not any(folder.iterdir()):
            raise SubmissionError(f"{path}: the zip is empty" if not _zip_names(path) else
                                  f"{path}: the zip holds only system clutter ({', '.join(_zip_names(path)[:5])})")
        path = folder
    elif path.is_dir():
        max_entries = (limits or submission_limits())[1]
        try:
            special = special_entries(path, max_entries)
        except HygieiaError as err:
            raise SubmissionError(f"submission folder {err}") from err
        if special:
            name, kind = special[0]
            more = f" (and {len(special) - 1} more)" if len(special) > 1 else ""
            raise SubmissionError(f"submission folder {path}: {name} is a {kind}{more}; a submission may hold "
                                  "only files and folders (links, FIFOs and devices are never followed)")
    else:
        raise SubmissionError(f"submission {path} does not exist")
    return find_model_file(path).parent


def _zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def _own_line(err: BaseException, folder: Path) -> str:
    """"model.py line 12" for the deepest traceback frame in the submission's files, else ""."""
    location = ""
    if isinstance(err, SyntaxError) and err.filename and Path(err.filename).resolve().is_relative_to(folder):
        return f"{Path(err.filename).resolve().relative_to(folder)} line {err.lineno}"
    for frame in traceback.extract_tb(err.__traceback__):
        file = Path(frame.filename).resolve()
        if file.is_relative_to(folder):
            location = f"{file.relative_to(folder)} line {frame.lineno}"
    return location


def describe_error(err: BaseException, folder: str | Path) -> str:
    """``"model.py line 12: ValueError: message"``: the exception and where in the submission it arose."""
    where = _own_line(err, Path(folder).resolve())
    message = err.msg if isinstance(err, SyntaxError) else str(err)
    message = " ".join(message.split())  # one line; the traceback keeps the original
    if len(message) > MESSAGE_LIMIT:
        message = message[:MESSAGE_LIMIT] + " [...]"
    text = f"{type(err).__name__}: {message}".rstrip(": ")
    return f"{where}: {text}" if where else text


def import_model_class(folder: str | Path) -> type:
    """Import ``folder/model.py`` (with ``folder`` first on sys.path) and return its ``Model`` class."""
    folder = Path(folder).resolve()
    path = folder / MODEL_FILE
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["model"] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # participant code: any failure is reported, with its place
        raise SubmissionError(f"importing {MODEL_FILE} failed: {describe_error(err, folder)}") from err
    model_class = getattr(module, MODEL_CLASS, None)
    if not isinstance(model_class, type):
        raise SubmissionError(f"{MODEL_FILE} defines no class named {MODEL_CLASS}")
    missing = [name for name in REQUIRED_METHODS if not callable(getattr(model_class, name, None))]
    if missing:
        raise SubmissionError(f"class {MODEL_CLASS} in {MODEL_FILE} has no method {', '.join(missing)}")
    return model_class


def forget_modules(folder: str | Path) -> None:
    """Drop the modules imported from ``folder`` (``model`` and its helpers) from ``sys.modules``."""
    folder = Path(folder).resolve()
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder):
            del sys.modules[name]


def zip_submission(folder: str | Path, zip_path: str | Path) -> Path:
    """Zip a submission folder as a participant uploads it: model.py at the root, sorted entries,
    fixed timestamps (the same folder always gives the same bytes); dotfiles and caches left out."""
    folder, zip_path = Path(folder), Path(zip_path)
    if not (folder / MODEL_FILE).is_file():
        raise HygieiaError(f"{folder}: no {MODEL_FILE} to zip")
    return write_zip(zip_path, {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")
                                if p.is_file() and all(_visible(Path(part)) for part in p.relative_to(folder).parts)})
