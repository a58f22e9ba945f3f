"""``hygieia bundle check``: validate a bundle offline, with the rules Codabench applies when it unpacks one.

The rules follow Codabench's v2 unpacker and leaderboard serializers (required keys, page and terms
content, task indexes and scoring programs, phase order and dates, leaderboard columns) and its fact
sheet (``fact_sheet.py``), plus what makes this competition run: each program has a ``metadata.yaml``
with a ``command`` (none of which turns on per-image results), and the scoring program writes exactly
the leaderboard's keys (its ``leaderboard.json``, written by the bundle builder from the metric table,
read here as plain JSON: no code of the bundle runs).
"""

from __future__ import annotations

import datetime
import json
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml
from dateutil import parser as date_parser

from hygieia.bundle.archive import read_zip, safe_extract, unpack
from hygieia.bundle.fact_sheet import question_problems
from hygieia.errors import HygieiaError

MAX_KEY = 36            # Codabench's Column.key, Column.title and Leaderboard.key lengths
MAX_BOARD_TITLE = 64
SORTINGS = ("asc", "desc")
COMPUTATIONS = ("avg", "sum", "min", "max", "avg_rank")
TASK_FILES = ("ingestion_program", "input_data", "scoring_program", "reference_data")
LEADERBOARD_FILE = "leaderboard.json"  # in the scoring program: [{"key", "title", "sorting", "precision"}]
PLACEHOLDER_IMAGE = "USER/"   # the template's docker_image before an organizer names a real one
PER_IMAGE_SWITCH = "HYGIEIA_PER_IMAGE"   # the scoring program's per-image results: never in a bundle
# Docker's image reference grammar (distribution/reference): [host[:port]/]name[/name...][:tag][@digest],
# every name component in lower case.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)"
IMAGE_REFERENCE = re.compile(rf"^{_HOST}?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
                             r"(?:@sha256:[0-9a-f]{64})?$")


@dataclass(frozen=True)
class Finding:
    level: str   # "error" or "warning"
    where: str   # the YAML key or the file at fault
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


class Checker:
    def __init__(self, root: Path, competition, allow_placeholder_image: bool = False):
        self.root = root
        self.yaml = competition
        self.allow_placeholder_image = allow_placeholder_image
        self.findings: list[Finding] = []

    def error(self, where: str, message: str) -> None:
        self.findings.append(Finding("error", where, message))

    def warn(self, where: str, message: str) -> None:
        self.findings.append(Finding("warning", where, message))

    # -- files -----------------------------------------------------------------------------------
    def path(self, where: str, value, *, kind: str = "file or folder") -> Path | None:
        """The bundle path that a YAML value names, or None after reporting why it is not usable."""
        if not isinstance(value, str) or not value.strip():
            self.error(where, f"must be a path inside the bundle, got {value!r}")
            return None
        if _is_uuid(value):
            self.warn(where, f"{value} is a Codabench dataset key; it cannot be checked offline")
            return None
        path = self.root / value
        if not path.exists():
            self.error(where, f"{value} does not exist in the bundle")
            return None
        if kind == "file" and not path.is_file():
            self.error(where, f"{value} must be a file")
            return None
        return path

    def text_file(self, where: str, value) -> None:
        path = self.path(where, value, kind="file")
        if path is None:
            return
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            self.error(where, f"{value} is not UTF-8 text")
            return
        if not text.strip():
            self.error(where, f"{value} is empty; Codabench requires content")

    # -- sections --------------------------------------------------------------------------------
    def run(self) -> list[Finding]:
        if not isinstance(self.yaml, dict):
            self.error("competition.yaml", "must be a YAML mapping")
            return self.findings
        self.top_level()
        tasks = self.tasks()
        self.solutions(tasks)
        self.phases(tasks)
        board_keys = self.leaderboards()
        scoring_programs = {str(task.get("scoring_program")) for task in tasks.values()
                            if isinstance(task, dict) and task.get("scoring_program")}
        for program in sorted(scoring_programs):
            self.scoring_keys(program, board_keys)
        return self.findings

    def top_level(self) -> None:
        c = self.yaml
        if c.get("version") != 2:
            self.error("version", f"must be 2 for a Codabench v2 bundle, got {c.get('version')!r}")
        if not str(c.get("title") or "").strip():
            self.error("title", "missing or empty")
        if "image" not in c:
            self.error("image", "missing: Codabench requires a logo image")
        else:
            self.path("image", c["image"], kind="file")
        if "terms" not in c:
            self.error("terms", "missing: Codabench requires a terms page participants accept")
        else:
            self.text_file("terms", c["terms"])
        pages = c.get("pages")
        if not isinstance(pages, list) or not pages:
            self.error("pages", "must be a non-empty list of {title, file}")
        else:
            for i, page in enumerate(pages):
                where = f"pages[{i}]"
                if not isinstance(page, dict) or "file" not in page:
                    self.error(where, "must have a `file`")
                    continue
                if not str(page.get("title") or "").strip():
                    self.error(f"{where}.title", "missing or empty")
                self.text_file(f"{where}.file ({page.get('title')})", page["file"])
        self.docker_image(str(c.get("docker_image") or ""))
        for level, where, message in question_problems(c.get("fact_sheet")):
            self.findings.append(Finding(level, where, message))
        self.programs_publish_aggregates_only()

    def programs_publish_aggregates_only(self) -> None:
        """No program command turns on the scoring program's per-image results: the detailed results of
        a published competition are served to anyone."""
        for i, task in enumerate(self.yaml.get("tasks") or []):
            for field in ("ingestion_program", "scoring_program"):
                path = self.root / str(task.get(field)) if isinstance(task, dict) and task.get(field) else None
                if path is None or not path.exists():
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    folder = _program_folder(path, Path(tmp))
                    text = "".join(p.read_text(encoding="utf-8", errors="replace")
                                   for p in (folder / "metadata.yaml", folder / "metadata") if p.is_file())
                if PER_IMAGE_SWITCH in text:
                    self.error(f"tasks[{i}].{field}", f"its metadata sets {PER_IMAGE_SWITCH}: the scoring "
                               "program would publish ids and pictures of hidden images to anyone")

    def docker_image(self, image: str) -> None:
        """An image the workers can pull: every submission fails on Codabench without one."""
        how = "build and push the image (docker/README.md), then `hygieia bundle build --docker-image NAME`"
        if not image:
            self.error("docker_image", f"missing: Codabench's default image (codalab/codalab-legacy:py37) has "
                       f"no torch or Captum; {how}")
        elif image.startswith(PLACEHOLDER_IMAGE):
            if self.allow_placeholder_image:
                self.warn("docker_image", f"{image!r} is the template's placeholder (allowed by "
                          f"--allow-placeholder-image); {how}")
            else:
                self.error("docker_image", f"{image!r} is the template's placeholder, which no worker can pull; "
                           f"{how} (or pass --allow-placeholder-image for a local check)")
        elif not IMAGE_REFERENCE.match(image):
            self.error("docker_image", f"{image!r} is not a valid Docker image reference "
                       "([registry/]name[:tag], names in lower case)")

    def tasks(self) -> dict:
        tasks = self.yaml.get("tasks")
        found: dict = {}
        if not isinstance(tasks, list) or not tasks:
            self.error("tasks", "no tasks listed in this competition")
            return found
        for i, task in enumerate(tasks):
            where = f"tasks[{i}]"
            if not isinstance(task, dict):
                self.error(where, "must be a mapping")
                continue
            if "index" not in task:
                self.error(f"{where}.index", "missing")
                continue
            if task["index"] in found:
                self.error(f"{where}.index", f"duplicate task index {task['index']}")
                continue
            found[task["index"]] = task
            if "key" in task:
                continue  # an existing Codabench task, referenced by key
            if "scoring_program" not in task:
                self.error(f"{where}.scoring_program", f"task {task.get('name') or task['index']!r} "
                           "has no scoring program")
            for field in TASK_FILES:
                if field in task:
                    path = self.path(f"{where}.{field}", task[field])
                    if path is not None and field.endswith("_program"):
                        self.program(f"{where}.{field}", path)
        return found

    def solutions(self, tasks: dict) -> None:
        for i, solution in enumerate(self.yaml.get("solutions") or []):
            where = f"solutions[{i}]"
            if not isinstance(solution, dict) or "index" not in solution:
                self.error(where, "needs an `index`")
                continue
            unknown = [t for t in solution.get("tasks") or [] if t not in tasks]
            if not solution.get("tasks") or unknown:
                self.error(f"{where}.tasks", f"must list existing task indexes; unknown: {unknown}")
            if "key" not in solution:
                self.path(f"{where}.path", solution.get("path"))

    def program(self, where: str, path: Path) -> None:
        """A program (folder or zip) must carry metadata.yaml with a command, as the worker needs."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = _program_folder(path, Path(tmp))
            metadata = next((folder / n for n in ("metadata.yaml", "metadata") if (folder / n).is_file()), None)
            if metadata is None:
                self.error(where, f"{path.relative_to(self.root)} has no metadata.yaml")
                return
            try:
                content = yaml.safe_load(metadata.read_text(encoding="utf-8"))
            except yaml.YAMLError as err:
                self.error(where, f"{metadata.relative_to(folder)} is not valid YAML ({err})")
                return
            if not isinstance(content, dict) or not str(content.get("command") or "").strip():
                self.error(where, f"{path.relative_to(self.root)}/{metadata.name} has no `command`")

    def phases(self, tasks: dict) -> None:
        phases = self.yaml.get("phases")
        if not isinstance(phases, list) or not phases:
            self.error("phases", "unable to find any phases for this competition")
            return
        seen: set = set()
        dated = [self.phase(i, phase, tasks, seen) for i, phase in enumerate(phases) if isinstance(phase, dict)]
        if len(dated) != len(phases):
            self.error("phases", "every phase must be a mapping")
        if [d[0] for d in dated] != sorted(d[0] for d in dated):
            self.warn("phases", "phases are not listed in index order; Codabench orders them by index")
        self.phase_order(sorted(dated, key=lambda d: d[0]))

    def phase(self, i: int, phase: dict, tasks: dict, seen: set) -> tuple:
        """Check one phase; return (index, name, start, end, position) for the order check."""
        where, name = f"phases[{i}]", phase.get("name") or f"#{i}"
        index = phase.get("index", 0)  # Codabench sorts by index, 0 when absent: then declaration order
        if "index" in phase and (not isinstance(index, int) or index in seen):
            self.error(f"{where}.index", f"phase {name!r}: index {index!r} is not an integer or is a duplicate")
        seen.add(index)
        phase_tasks = phase.get("tasks")
        if not isinstance(phase_tasks, list) or not phase_tasks:
            self.error(f"{where}.tasks", f"phase {name!r} must list at least one task")
        else:
            for t in phase_tasks:
                if t not in tasks:
                    self.error(f"{where}.tasks", f"phase {name!r} refers to task {t!r}, which is not in `tasks`")
        limit = phase.get("execution_time_limit")
        if limit is None:
            self.warn(f"{where}.execution_time_limit", f"phase {name!r} has none; Codabench's default applies")
        elif not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            self.error(f"{where}.execution_time_limit", f"must be a positive number of seconds, got {limit!r}")
        for field in ("max_submissions_per_day", "max_submissions"):
            value = phase.get(field)
            if value is not None and (not isinstance(value, int) or value < 0):
                self.error(f"{where}.{field}", f"must be a non-negative integer, got {value!r}")
        for field in ("starting_kit", "public_data"):
            if field in phase:
                self.path(f"{where}.{field}", phase[field])
        start = self.date(f"{where}.start", phase.get("start"), required=True)
        end = self.date(f"{where}.end", phase.get("end"), required=False)
        if start and end and end <= start:
            self.error(f"{where}.end", f"phase {name!r} ends ({end:%Y-%m-%d %H:%M}) before it starts")
        return (index if isinstance(index, int) else i, name, start, end, i)

    def phase_order(self, dated: list[tuple]) -> None:
        """Every phase but the last ends; each starts strictly after the previous one ends."""
        for (_, prev_name, _, prev_end, prev_i), (_, name, start, _, i) in zip(dated, dated[1:]):
            if prev_end is None:
                self.error(f"phases[{prev_i}].end", f"phase {prev_name!r} must have an end because phase "
                           f"{name!r} comes after it")
            elif start is not None and start <= prev_end:
                self.error(f"phases[{i}].start", f"phases overlap: {name!r} starts ({start:%Y-%m-%d %H:%M}) "
                           f"before {prev_name!r} has ended ({prev_end:%Y-%m-%d %H:%M}); it must start after")

    def date(self, where: str, value, *, required: bool):
        if value is None or value == "":
            if required:
                self.error(where, "missing")
            return None
        if isinstance(value, datetime.datetime):
            return value.replace(tzinfo=None)
        if isinstance(value, datetime.date):
            return datetime.datetime.combine(value, datetime.time())
        try:
            return date_parser.parse(str(value)).replace(tzinfo=None)
        except (ValueError, OverflowError):
            self.error(where, f"not a date: {value!r}")
            return None

    def leaderboards(self) -> list[str]:
        """Check the leaderboards; return the keys the scoring program must write."""
        if "leaderboard" in self.yaml:
            self.error("leaderboard", "the singular `leaderboard` is CodaLab's v1 form and Codabench v2 ignores "
                       "it; write `leaderboards:` as a list")
        boards = self.yaml.get("leaderboards")
        if boards is None:
            self.error("leaderboards", "missing: Codabench needs `leaderboards`, a list")
            return []
        if not isinstance(boards, list) or not boards:
            self.error("leaderboards", "must be a non-empty list of leaderboards")
            return []
        keys: list[str] = []
        for b, board in enumerate(boards):
            where = f"leaderboards[{b}]"
            if not isinstance(board, dict):
                self.error(where, "must be a mapping")
                continue
            title, key = str(board.get("title") or ""), str(board.get("key") or "")
            if not title or len(title) > MAX_BOARD_TITLE:
                self.error(f"{where}.title", f"must be 1 to {MAX_BOARD_TITLE} characters, got {title!r}")
            if not key or len(key) > MAX_KEY:
                self.error(f"{where}.key", f"must be 1 to {MAX_KEY} characters, got {key!r}")
            keys += self.columns(where, board)
        return keys

    def columns(self, where: str, board: dict) -> list[str]:
        columns = board.get("columns")
        if not isinstance(columns, list) or not columns:
            self.error(f"{where}.columns", "leaderboards require at least one column")
            return []
        indexes, keys, score_keys = [], [], []
        for c, column in enumerate(columns):
            at = f"{where}.columns[{c}]"
            if not isinstance(column, dict):
                self.error(at, "must be a mapping")
                continue
            index, key, title = column.get("index"), column.get("key"), column.get("title")
            if not isinstance(index, int) or index < 0:
                self.error(f"{at}.index", f"must be a non-negative integer, got {index!r}")
            elif index in indexes:
                self.error(f"{at}.index", f"duplicate column index {index}")
            indexes.append(index)
            if not isinstance(key, str) or not key:
                self.error(f"{at}.key", "missing")
            elif len(key) > MAX_KEY:
                self.error(f"{at}.key", f"{key!r} is longer than {MAX_KEY} characters")
            elif key in keys:
                self.error(f"{at}.key", f"duplicate column key {key!r}")
            keys.append(key)
            if not isinstance(title, str) or not title or len(title) > MAX_KEY:
                self.error(f"{at}.title", f"must be 1 to {MAX_KEY} characters, got {title!r}")
            if column.get("sorting", "desc") not in SORTINGS:
                self.error(f"{at}.sorting", f"must be 'asc' or 'desc', got {column.get('sorting')!r}")
            if "precision" in column and (not isinstance(column["precision"], int) or column["precision"] < 0):
                self.error(f"{at}.precision", f"must be a non-negative integer, got {column['precision']!r}")
            if column.get("computation") is None and not column.get("computation_indexes"):
                score_keys.append(key)
        for c, column in enumerate(columns):
            if isinstance(column, dict):
                self.computation(f"{where}.columns[{c}]", column, indexes)
        primary = board.get("primary_index", 0)
        if primary not in indexes:
            self.error(f"{where}.primary_index", f"{primary!r} is not one of the column indexes {indexes}")
        return [k for k in score_keys if isinstance(k, str)]

    def computation(self, at: str, column: dict, indexes: list) -> None:
        computation, refs = column.get("computation"), column.get("computation_indexes")
        if computation is None and not refs:
            return
        if computation is None:
            self.error(f"{at}.computation_indexes", "given without a `computation`")
            return
        if computation not in COMPUTATIONS:
            self.error(f"{at}.computation", f"must be one of {list(COMPUTATIONS)}, got {computation!r}")
        if not refs:
            self.error(f"{at}.computation_indexes", f"`computation: {computation}` needs the indexes of "
                       "the columns it acts upon")
            return
        refs = str(refs).split(",") if not isinstance(refs, list) else refs
        for ref in refs:
            try:
                ref = int(ref)
            except (TypeError, ValueError):
                self.error(f"{at}.computation_indexes", f"{ref!r} is not an integer")
                continue
            if ref == column.get("index"):
                self.error(f"{at}.computation_indexes", f"column {ref} refers to itself")
            elif ref not in indexes:
                self.error(f"{at}.computation_indexes", f"column index {ref} does not exist in {indexes}")

    def scoring_keys(self, program: str, board_keys: list[str]) -> None:
        """The keys the bundle's own scoring program writes must be the leaderboard's keys."""
        path = self.root / program
        if not path.exists() or _is_uuid(program):
            return
        with tempfile.TemporaryDirectory() as tmp:
            keys_file = _program_folder(path, Path(tmp)) / LEADERBOARD_FILE
            if not keys_file.is_file():
                self.error(program, f"{program}/{LEADERBOARD_FILE} not found: `hygieia bundle build` writes the "
                           "keys the scoring program writes there")
                return
            try:
                score_keys = read_score_keys(keys_file)
            except HygieiaError as err:
                self.error(f"{program}/{LEADERBOARD_FILE}", str(err))
                return
        missing = [k for k in score_keys if k not in board_keys]
        extra = [k for k in board_keys if k not in score_keys]
        if missing or extra:
            self.error("leaderboards", f"columns do not match the keys {program} writes: "
                       f"not on the leaderboard {missing}, not written by scoring {extra}")


def read_score_keys(leaderboard_file: Path) -> list[str]:
    """The keys of a scoring program's ``leaderboard.json`` (a list of columns with a string ``key``)."""
    try:
        columns = json.loads(leaderboard_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HygieiaError(f"not valid JSON ({err})") from err
    if not isinstance(columns, list) or not all(isinstance(c, dict) and isinstance(c.get("key"), str)
                                                for c in columns):
        raise HygieiaError(f"expected a list of columns, each with a string \"key\"; got {columns!r:.200}")
    return [column["key"] for column in columns]


def _program_folder(path: Path, tmp: Path) -> Path:
    if path.is_dir():
        return path
    unpack(path, tmp / "program")
    return tmp / "program"


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def load_competition(root: Path):
    path = root / "competition.yaml"
    if not path.is_file():
        raise HygieiaError(f"{root}: competition.yaml not found at the bundle's root")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise HygieiaError(f"{path}: not valid YAML ({err})") from err


def check_folder(root: Path, allow_placeholder_image: bool = False) -> list[Finding]:
    return Checker(root, load_competition(root), allow_placeholder_image).run()


def check_bundle(bundle: str | Path, *, allow_placeholder_image: bool = False) -> list[Finding]:
    """All findings for a bundle zip or folder; errors first."""
    bundle = Path(bundle)
    if bundle.is_dir():
        findings = check_folder(bundle, allow_placeholder_image)
    elif bundle.is_file():
        with tempfile.TemporaryDirectory() as tmp, read_zip(bundle) as archive:
            safe_extract(archive, Path(tmp), bundle)
            findings = check_folder(Path(tmp), allow_placeholder_image)
    else:
        raise HygieiaError(f"{bundle}: no such bundle zip or folder")
    return sorted(findings, key=lambda f: f.level != "error")


def report(findings: list[Finding], bundle) -> str:
    errors = sum(f.level == "error" for f in findings)
    lines = [str(f) for f in findings]
    lines.append(f"{bundle}: {errors} error(s), {len(findings) - errors} warning(s)"
                 + ("" if errors else " — ready to upload to Codabench"))
    return "\n".join(lines)
