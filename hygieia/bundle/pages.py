"""The competition's pages and the kit's README, filled in at build time from the data the bundle packs.

``pages/*.md`` and ``starting_kit/README.md`` are templates: every ``{{name}}`` is replaced by the value
``page_values`` computes from the prepared data (split sizes, the accuracy interval for those sizes,
the quick-run cap, the metric table ...), so no page can state a number that is not this bundle's. A
name without a value is an error.
A bundle built from the phantom gets a notice on each of them that its data are synthetic.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from hygieia import dataset as ds
from hygieia.errors import HygieiaError
from hygieia.scoring.metrics import metric_table_markdown

TEMPLATES = ("pages/", "starting_kit/README.md")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# The sample submission's and the notebook's HYGIEIA_FAST cap (sample_submission/model.py's
# FAST_IMAGES; a test checks that they agree).
FAST_IMAGES = 300
TYPICAL_ACCURACY = 0.8  # p of the Bernoulli interval the evaluation page quotes
SOURCE_FILE = "source.json"  # hygieia.prepare.card.SOURCE_FILE, in the card folder: {"source": "rsna" | "phantom"}
SYNTHETIC_NOTICE = ("> **Synthetic data.** This bundle was built from Hygieia's phantom: computer-generated "
                    "radiographs in the RSNA format, not images of real patients. Its numbers say nothing "
                    "about pneumonia detection on real X-rays.\n\n")


def is_template(name: str) -> bool:
    return name.endswith(".md") and name.startswith(TEMPLATES)


def data_source(data_dir: Path) -> str | None:
    """The data's source as prepare's dataset card records it ("phantom" or "rsna"); None without a record."""
    path = Path(data_dir) / "card" / SOURCE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["source"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise HygieiaError(f"{path}: not a dataset source record ({err})") from err


def scored_labels(data_dir: Path, split: str) -> np.ndarray:
    """The labels a scored split is scored on: off-box probes (``probe`` = 1), if any, left out."""
    path = Path(data_dir) / ds.REFERENCE_DIR / split / ds.LABELS
    table = ds.read_table(path, ds.LABEL_COLUMNS)
    if "probe" in pd.read_csv(path, nrows=0).columns:
        table = ds.read_table(path, ds.REFERENCE_LABEL_COLUMNS)
        table = table[table["probe"] != 1]
    return table["label"].to_numpy()


def split_table(counts: dict[str, int], labels: dict[str, np.ndarray]) -> str:
    names = {"train": "train (public labels)", "valid": "valid (Development phase)", "test": "test (Final phase)"}
    lines = ["| split | images | normal (0) | lung opacity (1) |", "|---|---|---|---|"]
    for split in ds.SPLITS:
        positives = int(labels[split].sum())
        lines.append(f"| {names[split]} | {counts[split]:,} | {len(labels[split]) - positives:,} | {positives:,} |")
    return "\n".join(lines)


def accuracy_halfwidth(n: int) -> str:
    return f"{math.sqrt(TYPICAL_ACCURACY * (1 - TYPICAL_ACCURACY) / n):.3f}" if n else "n/a"


def page_values(data_dir: Path, counts: dict[str, int], side: int, competition: dict) -> dict[str, str]:
    """Every placeholder's text, from the prepared data in ``data_dir`` and the filled competition."""
    data_dir = Path(data_dir)
    train_labels = ds.read_table(data_dir / ds.INPUT_DIR / "train" / ds.LABELS, ds.LABEL_COLUMNS)
    labels = {"train": train_labels["label"].to_numpy()}
    labels.update({split: scored_labels(data_dir, split) for split in ds.SCORED_SPLITS})
    limits = [phase["execution_time_limit"] for phase in competition.get("phases", [])
              if "execution_time_limit" in phase]
    return {
        "split_table": split_table(counts, labels),
        "train_images": f"{counts['train']:,}",
        "valid_images": f"{counts['valid']:,}",
        "test_images": f"{counts['test']:,}",
        "valid_scored": f"{len(labels['valid']):,}",
        "test_scored": f"{len(labels['test']):,}",
        "accuracy_halfwidth_valid": accuracy_halfwidth(len(labels["valid"])),
        "accuracy_halfwidth_test": accuracy_halfwidth(len(labels["test"])),
        "typical_accuracy": f"{TYPICAL_ACCURACY:g}",
        "side": str(side),
        "fast_images": f"{min(FAST_IMAGES, counts['train']):,}",
        "time_limit_s": str(min(limits)) if limits else "the phase's",
        "metric_table": metric_table_markdown(),
    }


def render(text: str, values: dict[str, str], where: str) -> str:
    """``text`` with every ``{{name}}`` filled; an unknown name is an error naming ``where``."""
    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name in values:
            return values[name]
        raise HygieiaError(f"{where}: no value for the placeholder {{{{{name}}}}} "
                           f"(known: {', '.join(sorted(values))})")
    return PLACEHOLDER.sub(fill, text)


FIGURE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def inline_figures(text: str, folder: Path, where) -> str:
    """``text`` with each ``![alt](relative.png)`` inlined as a data URI: Codabench stores a page as
    text only, so a page cannot link to a file of the bundle."""
    def inline(match: re.Match) -> str:
        figure = folder / match.group(2)
        if not figure.is_file():
            raise HygieiaError(f"{where}: figure {match.group(2)} not found in {folder}")
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return FIGURE.sub(inline, text)


def rendered_templates(entries: dict[str, Path | bytes], data_dir: Path, counts: dict[str, int], side: int,
                       competition: dict) -> dict[str, bytes]:
    """The bundle's template entries, filled (and marked synthetic for a phantom-built bundle)."""
    values = page_values(data_dir, counts, side, competition)
    notice = SYNTHETIC_NOTICE if data_source(data_dir) == "phantom" else ""
    filled = {}
    for name, source in entries.items():
        if not is_template(name):
            continue
        text = source.decode("utf-8") if isinstance(source, bytes) else Path(source).read_text(encoding="utf-8")
        text = render(text, values, name)
        if not isinstance(source, bytes):
            text = inline_figures(text, Path(source).parent, name)
        if notice:
            title, _, rest = text.partition("\n")  # the notice goes under the page's title
            text = f"{title}\n\n{notice}{rest.lstrip()}" if title.startswith("# ") else notice + text
        filled[name] = text.encode("utf-8")
    return filled
