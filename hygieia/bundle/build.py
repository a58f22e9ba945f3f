"""``hygieia bundle build``: the zip an organizer uploads to Codabench, from ``prepare``'s output.

Layout of the bundle (paths as competition.yaml names them)::

    competition.yaml, logo.png, pages/*.md        (the data page carries the dataset card)
    ingestion_program/, scoring_program/          each with its own copy of the ``hygieia`` modules its
                                                  entry point imports (Codabench mounts a folder alone);
                                                  ingestion_program/budget.json: its time budget;
                                                  scoring_program/leaderboard.json: the columns it writes
    input_data.zip                                train/ valid/ test/ at its root
    reference_data/valid/, reference_data/test/   what the scoring program compares against
    starting_kit/                                 notebook, sample submission zips, public data,
                                                  both programs for local runs, the dataset card, and
                                                  the hygieia modules its notebook and helpers import

Codabench's compute worker unpacks every part with a plain extract (nothing moved up a level), so
``input_data.zip`` holds the splits at its root, where the ingestion program looks for them.
``ingestion_program/budget.json`` gives ingestion its time budget: a margin below the smallest time
limit of the phases that run it (see ``time_budget``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from hygieia import dataset as ds
from hygieia.bundle.archive import folder_entries, write_zip
from hygieia.bundle.check import LEADERBOARD_FILE
from hygieia.bundle.closure import import_closure
from hygieia.bundle.pages import inline_figures, rendered_templates
from hygieia.errors import HygieiaError
from hygieia.scoring.keys import LEADERBOARD_COLUMNS, PRIMARY_KEY, SCORE_KEYS
from hygieia.submission.loading import zip_submission

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ("ingestion_program", "scoring_program")
DEFAULT_TIME_LIMIT = 600       # Codabench's default execution_time_limit (seconds)
MAX_DEFAULT_QUEUE_LIMIT = 600  # its cap on the default queue (tasks.py MAX_EXECUTION_TIME_LIMIT)
SAMPLE_SUBMISSIONS = ("sample_submission", "sample_submission_boxes", "sample_submission_tabular")
INPUT_ZIP = "input_data.zip"
CARD_DIR = "card"
CARD_FILE = "dataset_card.md"
DATA_PAGE = "pages/data.md"


@dataclass
class BuildSummary:
    path: Path
    size: int
    counts: dict[str, int]        # split -> number of samples
    contents: dict[str, tuple[int, int]]  # top-level entry -> (files, bytes before compression)

    def report(self) -> str:
        lines = [f"bundle: {self.path} ({self.size / 1e6:.1f} MB)",
                 "samples: " + ", ".join(f"{split} {n}" for split, n in self.counts.items())]
        for name, (files, size) in self.contents.items():
            lines.append(f"  {name:<32} {files:>5} file(s) {size / 1e6:>9.2f} MB")
        return "\n".join(lines)


def leaderboard_columns() -> list[dict]:
    """The leaderboard's columns, one per key the scoring program writes, in the same order."""
    return [{"title": column["title"], "key": column["key"], "index": index,
             "sorting": column["sorting"], "precision": column["precision"]}
            for index, column in enumerate(LEADERBOARD_COLUMNS)]


def leaderboard_json() -> bytes:
    """The scoring program's columns, for ``bundle check`` to read without running the program's code."""
    return (json.dumps(LEADERBOARD_COLUMNS, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def required_data_files(data_dir: Path) -> list[Path]:
    files = []
    for split in ds.SPLITS:
        names = [ds.IMAGES, ds.FEATURES, ds.META] + ([ds.LABELS, ds.BOXES] if split == "train" else [])
        files += [data_dir / ds.INPUT_DIR / split / name for name in names]
    for split in ds.SCORED_SPLITS:
        files += [data_dir / ds.REFERENCE_DIR / split / name
                  for name in (ds.LABELS, ds.BOXES, ds.META, ds.IMAGES)]
    return files


def split_counts(data_dir: Path) -> tuple[dict[str, int], int]:
    """Samples per split and the image side, read from the arrays' headers."""
    counts, side = {}, None
    for split in ds.SPLITS:
        images = np.load(data_dir / ds.INPUT_DIR / split / ds.IMAGES, mmap_mode="r", allow_pickle=False)
        counts[split] = int(images.shape[0])
        side = int(images.shape[-1])
    return counts, side


def fill_competition(template: dict, counts: dict[str, int], side: int, docker_image: str | None) -> dict:
    competition = dict(template)
    if docker_image:
        competition["docker_image"] = docker_image
    scored = {0: "valid", 1: "test"}
    for phase in competition.get("phases", []):
        split = scored.get(phase.get("index"))
        if split:
            phase["description"] = (f"{phase.get('description', '').strip()} "
                                    f"Training: {counts['train']} images; scored on the {counts[split]} "
                                    f"{'validation' if split == 'valid' else 'test'} images "
                                    f"({side}x{side} crops).").strip()
    boards = competition.get("leaderboards")
    if not isinstance(boards, list) or not boards:
        raise HygieiaError("competition.yaml template: `leaderboards` must be a list with one leaderboard")
    boards[0]["columns"] = leaderboard_columns()
    boards[0]["primary_index"] = SCORE_KEYS.index(PRIMARY_KEY)
    return competition


def card_markdown(data_dir: Path) -> str:
    """The dataset card, its figures inlined as data URIs (Codabench stores a page as text only)."""
    card_dir = data_dir / CARD_DIR
    card = card_dir / CARD_FILE
    if not card.is_file():
        print(f"bundle build: warning: {card} not found; the data page will not include a dataset card",
              file=sys.stderr)
        return "\n\n## Dataset card\n\nNo dataset card was produced for this data.\n"

    text = inline_figures(card.read_text(encoding="utf-8"), card_dir, card)
    return "\n\n" + text.strip() + "\n"


ENTRY_POINTS = {"ingestion_program": "ingestion.py", "scoring_program": "score.py"}
BUDGET_FILE = "budget.json"
BUDGET_MARGIN = 0.9     # ingestion stops itself at 90 % of the step's limit, before the worker kills it


def vendored_entries(root: Path, sources: list[Path], prefix: str) -> dict[str, Path]:
    """The ``hygieia`` modules that ``sources`` import (see ``closure``), as ``prefix + hygieia/...``."""
    files: set[Path] = set()
    for source in sources:
        files.update(import_closure(source, root))
    return {f"{prefix}{path.relative_to(root).as_posix()}": path for path in sorted(files)}


def program_entries(root: Path, program: str, prefix: str) -> dict[str, Path]:
    """A program folder with the ``hygieia`` modules its entry point imports vendored into it."""
    folder = root / program
    entries = {name: path for name, path in folder_entries(folder, prefix).items()
               if not name.startswith(f"{prefix}hygieia/")}
    if not any(name == f"{prefix}metadata.yaml" for name in entries):
        raise HygieiaError(f"{folder}: metadata.yaml not found")
    entries.update(vendored_entries(root, [folder / ENTRY_POINTS[program]], prefix))
    return entries


def time_budget(competition: dict, ingestion_program: str = "ingestion_program") -> float:
    """Ingestion's time budget in seconds: BUDGET_MARGIN of the smallest time limit the worker applies
    (min(600, limit) on Codabench's default queue, the phase's own on a custom ``queue``) among the
    phases whose task runs ``ingestion_program``."""
    tasks = {t.get("index"): t for t in competition.get("tasks") or [] if isinstance(t, dict)}
    limits = []
    for phase in competition.get("phases") or []:
        if any(tasks.get(i, {}).get("ingestion_program") == ingestion_program for i in phase.get("tasks") or []):
            limit = int(phase.get("execution_time_limit") or DEFAULT_TIME_LIMIT)
            limits.append(limit if competition.get("queue") else min(MAX_DEFAULT_QUEUE_LIMIT, limit))
    return round(BUDGET_MARGIN * min(limits or [DEFAULT_TIME_LIMIT]), 1)


def build_bundle(data_dir: str | Path, output: str | Path, *, root: str | Path = REPO_ROOT,
                 docker_image: str | None = None) -> BuildSummary:
    """Write the Codabench bundle for the prepared data in ``data_dir`` to ``output``."""
    data_dir, output, root = Path(data_dir), Path(output), Path(root)
    missing = [str(p) for p in required_data_files(data_dir) if not p.is_file()]
    if missing:
        raise HygieiaError(f"{data_dir} is not a prepared dataset (run `hygieia prepare`): "
                           f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    template_path = root / "competition.yaml"
    if not template_path.is_file():
        raise HygieiaError(f"{template_path} not found: run from a checkout of the Hygieia repository")
    try:
        template = yaml.safe_load(template_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise HygieiaError(f"{template_path}: not valid YAML ({err})") from err

    counts, side = split_counts(data_dir)
    competition = fill_competition(template, counts, side, docker_image)
    entries: dict[str, Path | bytes] = {
        "competition.yaml": yaml.safe_dump(competition, sort_keys=False, allow_unicode=True).encode("utf-8"),
        "logo.png": _existing(root / "logo.png"),
    }
    for name, path in folder_entries(root / "pages", "pages/").items():
        entries[name] = path
    if DATA_PAGE not in entries:
        raise HygieiaError(f"{root / DATA_PAGE} not found")
    entries[DATA_PAGE] = (Path(entries[DATA_PAGE]).read_text(encoding="utf-8").rstrip()
                          + card_markdown(data_dir)).encode("utf-8")

    for program in PROGRAMS:
        entries.update(program_entries(root, program, f"{program}/"))
    entries[f"{PROGRAMS[0]}/{BUDGET_FILE}"] = json.dumps({"time_budget_s": time_budget(competition)}).encode()
    entries[f"{PROGRAMS[1]}/{LEADERBOARD_FILE}"] = leaderboard_json()
    entries.update(folder_entries(data_dir / ds.REFERENCE_DIR, f"{ds.REFERENCE_DIR}/"))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        entries[INPUT_ZIP] = write_zip(tmp / INPUT_ZIP, folder_entries(data_dir / ds.INPUT_DIR))
        entries.update(starting_kit_entries(root, data_dir, tmp, entries[f"{PROGRAMS[0]}/{BUDGET_FILE}"]))
        # The pages and the kit's README are templates, filled from the data (hygieia/bundle/pages.py).
        entries.update(rendered_templates(entries, data_dir, counts, side, competition))
        write_zip(output, entries)
        contents = summarize(entries)
    return BuildSummary(output, output.stat().st_size, counts, contents)


def kit_sources(kit: Path, tmp: Path) -> list[Path]:
    """The kit's Python files, and its notebooks' code cells (magics and shell lines left out)."""
    sources = sorted(p for p in kit.rglob("*.py") if "hygieia" not in p.relative_to(kit).parts)
    for notebook in sorted(kit.glob("*.ipynb")):
        try:
            cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise HygieiaError(f"{notebook}: not a readable notebook ({err})") from err
        code = "\n".join("".join(c.get("source", [])) for c in cells if c.get("cell_type") == "code")
        lines = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]
        sources.append(tmp / f"{notebook.stem}_cells.py")
        sources[-1].write_text("\n".join(lines), encoding="utf-8")
    return sources


def starting_kit_entries(root: Path, data_dir: Path, tmp: Path, budget: bytes) -> dict[str, Path | bytes]:
    kit = "starting_kit/"
    entries: dict[str, Path | bytes] = {}
    if (root / "starting_kit").is_dir():
        entries.update({name: path for name, path in folder_entries(root / "starting_kit", kit).items()
                        if not name.startswith(f"{kit}hygieia/")})
        # the kit's own copy of what its notebook and helpers import
        entries.update(vendored_entries(root, kit_sources(root / "starting_kit", tmp), kit))
    for sample in SAMPLE_SUBMISSIONS:
        entries[f"{kit}{sample}.zip"] = zip_submission(root / sample, tmp / f"{sample}.zip")
    entries.update(folder_entries(data_dir / ds.INPUT_DIR, f"{kit}input_data/"))
    for program in PROGRAMS:
        entries.update(program_entries(root, program, f"{kit}{program}/"))
    entries[f"{kit}{PROGRAMS[0]}/{BUDGET_FILE}"] = budget
    entries[f"{kit}{PROGRAMS[1]}/{LEADERBOARD_FILE}"] = leaderboard_json()
    if (data_dir / CARD_DIR).is_dir():
        entries.update(folder_entries(data_dir / CARD_DIR, f"{kit}dataset_card/"))
    return entries


def summarize(entries: dict[str, Path | bytes]) -> dict[str, tuple[int, int]]:
    contents: dict[str, tuple[int, int]] = {}
    for name, source in sorted(entries.items()):
        parts = name.split("/")
        top = "/".join(parts[:2]) if parts[0] in ("reference_data", "starting_kit") and len(parts) > 2 else parts[0]
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        files, total = contents.get(top, (0, 0))
        contents[top] = (files + 1, total + size)
    return contents


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise HygieiaError(f"{path} not found")
    return path
