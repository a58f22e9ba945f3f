"""Every leaderboard column of many submissions on real radiographs, over several prepared datasets,
with paired differences against a reference submission.

    hygieia prepare RSNA_DIR DATA_DIR --train 630 --valid 200 --test 200 --full-size 128 \\
        --probe-share 0.5 --id-secret-file SECRET_S
    python tools/real_radiographs.py DATA_DIR [DATA_DIR ...] OUT_DIR [--reuse] [--only KEY ...]
        [--model KEY=TITLE=PATH[=DATA_SUBDIR] ...] [--reference KEY] [--markdown T.md] [--json T.json]

Each DATA_DIR is a ``hygieia prepare`` output (one per secret) with view-balanced hidden splits and a
whole-film version (``--full-size 128``). Each submission folder is run through the real programs, as
subprocesses: ``hygieia ingest`` once per dataset (full training: ``HYGIEIA_FAST`` is removed unless
``--fast``), then ``hygieia score --per-image`` on valid and on test. The models (``MODELS``): the
sample, the tabular sample, the view-only rule, the CNN trained on the view, the sample fed whole
films, and issue 19's rows (a separate box-finder explaining the sample's classifier, a histogram
classifier and "everything is positive"; Grad-CAM through a re-initialised head); ``--model`` adds
any submission folder (DATA_SUBDIR: ``.`` for the crops, ``full_128`` for whole films).

OUT_DIR/<dataset>/<model>/ keeps every run (submission/, ingestion/, valid/, test/, logs). The
per-image results stay there: they name hidden images and are never published. ``--reuse`` skips an
ingestion whose inputs did not change (the input data, the submission folder's files, the ingestion
code, the weights) and a scoring whose inputs did not change (that ingestion, the reference split,
the scoring code): see ``ingestion_key`` and ``scoring_key``.

Writes OUT_DIR/real_radiographs.md (the tables: every column with its 95% interval per model ×
dataset × split; the paired differences against ``--reference`` with paired bootstrap intervals
(``tools/paired.py``); the mean and range over datasets; ingestion times), real_radiographs.json
(the same numbers: aggregates only) and paired_differences.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paired  # noqa: E402
import real_submissions as subs  # noqa: E402
from hygieia import dataset as ds  # noqa: E402
from hygieia.errors import HygieiaError  # noqa: E402
from hygieia.scoring import shortcut  # noqa: E402
from hygieia.scoring import metrics as mt  # noqa: E402

FULL = "full_128"
write_view_only, write_view_cnn = subs.write_view_only, subs.write_view_cnn  # the names tests use
REFERENCE = "sample"
TIME_BUDGET = 3600.0   # seconds per ingestion: generous, the shared machine is slow; the times are reported
# The code each step runs (hygieia's top-level modules and one package): an ingestion or a scoring is
# done again when a file there changes. The other packages (prepare, bundle, ...) are not imported by either.
INGESTION_CODE = ("hygieia/*.py", "hygieia/submission/**/*.py")
SCORING_CODE = ("hygieia/*.py", "hygieia/scoring/**/*.py")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A row of the tables: ``submission`` is a folder, or a writer ``(data_dir, folder) -> folder``;
    ``data`` the folder of DATA_DIR it runs on (``.``: the crops; ``full_128``: whole films)."""
    key: str
    title: str
    submission: Path | Callable[[Path, Path], Path]
    data: str = "."


MODELS = (
    ModelSpec("sample", "the sample (MobileNetV2 + linear head, Grad-CAM)", ROOT / "sample_submission"),
    ModelSpec("tabular", "the tabular sample (whole-film features)", ROOT / "sample_submission_tabular"),
    ModelSpec("view_only", "view-only rule (positive if AP)", subs.write_view_only),
    ModelSpec("view_cnn", "CNN trained on the view (crops)", subs.write_view_cnn),
    ModelSpec("whole_film", "the sample fed whole films (128 px)", ROOT / "sample_submission", FULL),
    ModelSpec("box_finder", "the sample's classifier + a separate box-finder", subs.write_sample_box_finder),
    ModelSpec("histogram_box_finder", "intensity-histogram classifier + the box-finder",
              subs.write_histogram_box_finder),
    ModelSpec("positive_box_finder", "\"everything is positive\" + the box-finder", subs.write_positive_box_finder),
    ModelSpec("random_head", "the sample, Grad-CAM through a re-initialised head", subs.write_random_head),
)


def parse_model(text: str) -> ModelSpec:
    """``KEY=TITLE=PATH[=DATA_SUBDIR]`` (``--model``)."""
    parts = text.split("=")
    if len(parts) not in (3, 4) or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=TITLE=PATH or KEY=TITLE=PATH=DATA_SUBDIR")
    folder = Path(parts[2]).resolve()
    if not (folder / "model.py").is_file():
        raise argparse.ArgumentTypeError(f"{folder}: no model.py there")
    return ModelSpec(parts[0], parts[1], folder, parts[3] if len(parts) == 4 else ".")


# ---- what a step depends on ---------------------------------------------------------------------------

def files_digest(root: Path, patterns=("**/*",)) -> str:
    """sha256 over the files under ``root`` matching ``patterns``: their paths relative to ``root``
    and their bytes (Python's caches left out)."""
    files = sorted({p for pattern in patterns for p in root.glob(pattern)
                    if p.is_file() and "__pycache__" not in p.parts})
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def text_digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def weights_digest() -> str:
    path = os.environ.get("HYGIEIA_MOBILENET_WEIGHTS")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else "no weights"


def ingestion_key(input_dir: Path, submission: Path, fast: bool) -> str:
    """What an ingestion's result depends on: the input data, the submission's files, the ingestion
    code, the MobileNetV2 weights, the fast setting."""
    return text_digest("ingestion", files_digest(input_dir), files_digest(submission),
                       files_digest(ROOT, INGESTION_CODE), weights_digest(), str(fast))


def scoring_key(ingested: str, ref_dir: Path) -> str:
    """What a scoring depends on: the ingestion (its key), the reference split, the scoring code."""
    return text_digest("scoring", ingested, files_digest(ref_dir), files_digest(ROOT, SCORING_CODE))


# ---- running the programs -----------------------------------------------------------------------------

def hygieia(args: list, log: Path, fast: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYGIEIA_FAST", None)   # full training: these are the numbers we publish
    if fast:
        env["HYGIEIA_FAST"] = "1"
    done = subprocess.run([sys.executable, "-m", "hygieia", *map(str, args)], env=env, capture_output=True,
                          text=True)
    log.write_text(done.stdout + done.stderr)
    return done


def cached(key_path: Path, key: str, reuse: bool, done: Path) -> bool:
    return reuse and key_path.is_file() and key_path.read_text() == key and done.is_file()


def ingest(input_dir: Path, submission: Path, run_dir: Path, reuse: bool, fast: bool) -> tuple[dict, str, bool]:
    """Ingestion's report, its key and whether it was reused."""
    output, key_path = run_dir / "ingestion", run_dir / "ingestion.key"
    key = ingestion_key(input_dir, submission, fast)
    report_path = output / ds.INGESTION_REPORT
    if cached(key_path, key, reuse, report_path) and json.loads(report_path.read_text())["status"] == "ok":
        return json.loads(report_path.read_text()), key, True
    key_path.unlink(missing_ok=True)
    if output.exists():
        shutil.rmtree(output)
    done = hygieia(["ingest", input_dir, output, submission, "--time-budget", TIME_BUDGET],
                   run_dir / "ingestion.log", fast)
    if done.returncode != 0:
        raise HygieiaError(f"ingestion of {submission} on {input_dir} failed (exit {done.returncode}); "
                           f"see {run_dir / 'ingestion.log'}:\n{done.stderr[-2000:]}")
    key_path.write_text(key)
    return json.loads(report_path.read_text()), key, False


def score(ref_dir: Path, run_dir: Path, ingested: str, reuse: bool) -> tuple[dict, bool]:
    """The per-image detailed results of one split and whether they were reused."""
    split = ref_dir.name
    out, key_path = run_dir / split, run_dir / f"{split}.key"
    key = scoring_key(ingested, ref_dir)
    detailed = out / "detailed_scores.json"
    if not cached(key_path, key, reuse, detailed):
        key_path.unlink(missing_ok=True)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        done = hygieia(["score", ref_dir, run_dir / "ingestion", out, "--per-image"], run_dir / f"score_{split}.log")
        if done.returncode != 0:
            raise HygieiaError(f"scoring {run_dir / 'ingestion'} against {ref_dir} failed "
                               f"(exit {done.returncode}):\n{done.stderr[-2000:]}")
        key_path.write_text(key)
        return json.loads(detailed.read_text()), False
    return json.loads(detailed.read_text()), True


def unmatched_gap(ref_dir: Path, res_dir: Path) -> dict:
    """For comparison with the leaderboard's view-matched gap: the gap with every probe compared with
    all normal films (what the leaderboard computed before 2026-12-03), and the AP share of probes and
    of normals. A rule that reads only the view scores there the difference of the two AP shares."""
    labels = ds.read_table(ref_dir / ds.LABELS, ds.REFERENCE_LABEL_COLUMNS).set_index("id")
    view = ds.read_table(ref_dir / ds.META, ds.META_COLUMNS).set_index("id").loc[labels.index, "view_position"]
    called = ds.read_table(res_dir / "predictions.csv", ["id", "proba", "label"]).set_index("id").loc[labels.index]
    probes, normal = labels["probe"].to_numpy() == 1, (labels["label"].to_numpy() == 0)
    gap = shortcut.shortcut_gap(labels["label"].to_numpy(), called["label"].to_numpy(), probes)
    ap = (view == "AP").to_numpy()
    return {"unmatched_gap": gap["raw"],
            "probe_ap_share": float(ap[probes].mean()) if probes.any() else None,
            "normal_ap_share": float(ap[normal & ~probes].mean())}


def dataset_names(data_dirs: list[Path]) -> list[str]:
    names = [d.resolve().name for d in data_dirs]
    if len(set(names)) != len(names):
        raise HygieiaError(f"the datasets' folder names must differ (they name OUT_DIR's folders): {names}")
    return names


def dataset_info(data_dir: Path) -> dict:
    """The dataset's seed (from prepare's manifest) and split sizes, for the tables."""
    manifest = data_dir / "manifest.json"
    arguments = json.loads(manifest.read_text()).get("arguments", {}) if manifest.is_file() else {}
    sizes = {split: len(ds.read_table(data_dir / ds.REFERENCE_DIR / split / ds.LABELS, ["id"]))
             for split in ds.SCORED_SPLITS}
    return {"seed": arguments.get("seed"), "train": arguments.get("train"), "n_items": sizes}


def row_of(results: dict, report: dict) -> dict:
    """What the tables show of one model on one split (aggregates only: no id)."""
    return {"scores": results["scores"], "ci": results["ci"], "chance": results["chance"],
            "worst_group": results["worst_group"]["group"], "n_scored": results["n_scored"],
            "n_probes": results["n_probes"], "explanation_method": results["explanation"]["method"],
            "n_true_positives": results["explanation"]["n_true_positives"],
            "durations": report["durations"], "device": report.get("device")}


def run_dataset(data_dir: Path, name: str, models: list[ModelSpec], out_dir: Path, reuse: bool, fast: bool,
                progress: tqdm) -> tuple[list[dict], dict]:
    """Ingest and score every model on one dataset: the rows and {(model, split): Answers}."""
    rows, answers = [], {}
    for spec in models:
        root = data_dir / spec.data
        if not (root / ds.INPUT_DIR).is_dir():
            raise HygieiaError(f"{root / ds.INPUT_DIR}: missing (prepare with --full-size 128 for {FULL}/)")
        run_dir = out_dir / name / spec.key
        run_dir.mkdir(parents=True, exist_ok=True)
        progress.set_description(f"{name}: {spec.key}")
        submission = (spec.submission(data_dir, run_dir / "submission") if callable(spec.submission)
                      else spec.submission)
        started = time.perf_counter()
        report, key, reused = ingest(root / ds.INPUT_DIR, submission, run_dir, reuse, fast)
        for split in ds.SCORED_SPLITS:
            ref_dir = root / ds.REFERENCE_DIR / split
            results, scored_reused = score(ref_dir, run_dir, key, reuse)
            answer = paired.Answers.of(ref_dir, run_dir / "ingestion", results)
            paired.check_own_scores(answer, f"{name}/{spec.key}/{split}")
            answers[spec.key, split] = answer
            rows.append({"dataset": name, "model": spec.key, "title": spec.title, "split": split,
                         "data": spec.data, "reused": {"ingestion": reused, "scoring": scored_reused},
                         **row_of(results, report), **unmatched_gap(ref_dir, run_dir / "ingestion")})
        rows[-1]["step_s"] = rows[-2]["step_s"] = round(time.perf_counter() - started, 1)
        progress.update()
    return rows, answers


def paired_rows(name: str, answers: dict, models: list[ModelSpec], reference: str) -> list[dict]:
    return [{"dataset": name, "model": spec.key, "title": spec.title, "split": split, "reference": reference,
             "columns": paired.paired_columns(answers[reference, split], answers[spec.key, split])}
            for spec in models if spec.key != reference for split in ds.SCORED_SPLITS]


def run_all(data_dirs: list[Path], out_dir: Path, models: list[ModelSpec], reference: str, reuse: bool,
            fast: bool = False) -> dict:
    """Every model on every dataset: the rows, the paired differences, the summaries."""
    if reference not in [m.key for m in models]:
        raise HygieiaError(f"the reference model {reference!r} is not among the models run "
                           f"({', '.join(m.key for m in models)})")
    names = dataset_names(data_dirs)
    started = time.perf_counter()
    rows, pairs = [], []
    with tqdm(total=len(models) * len(data_dirs), unit="run", file=sys.stderr) as progress:
        for data_dir, name in zip(data_dirs, names):
            dataset_rows, answers = run_dataset(data_dir, name, models, out_dir, reuse, fast, progress)
            rows += dataset_rows
            pairs += paired_rows(name, answers, models, reference)
    return {"datasets": {name: {"path": str(d), **dataset_info(d)} for d, name in zip(data_dirs, names)},
            "models": [{"key": m.key, "title": m.title, "data": m.data} for m in models],
            "reference": reference, "columns": [m.key for m in mt.METRICS], "rows": rows, "paired": pairs,
            "summary": summary(rows), "paired_summary": paired_summary(pairs),
            "bootstrap": {"paired_resamples": paired.N_RESAMPLES, "paired_seed": paired.SEED, "level": 0.95},
            "fast": fast, "seconds": round(time.perf_counter() - started, 1)}


# ---- over datasets ------------------------------------------------------------------------------------

def spread(values: list) -> dict | None:
    """Mean and range of the measured values (None where none is measured)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "n": len(values)}


def summary(rows: list[dict]) -> list[dict]:
    """Each model and split: every column's mean and range over the datasets."""
    table = pd.DataFrame(rows)
    return [{"model": model, "split": split,
             "columns": {key: spread([r[key] for r in group["scores"]]) for key in (m.key for m in mt.METRICS)},
             "ingestion_s": spread([r.get("total") for r in group["durations"]]),
             "maps": bool(group["explanation_method"].notna().any())}
            for (model, split), group in table.groupby(["model", "split"], sort=False)]


def paired_summary(pairs: list[dict]) -> list[dict]:
    """Each model and split: every paired difference's mean and range over the datasets, and in how
    many datasets its interval lies above 0 and below 0."""
    if not pairs:
        return []
    table = pd.DataFrame(pairs)
    out = []
    for (model, split), group in table.groupby(["model", "split"], sort=False):
        columns = {}
        for key in (m.key for m in mt.METRICS):
            cells = [c[key] for c in group["columns"]]
            measured = [c for c in cells if c["difference"] is not None]
            columns[key] = {**(spread([c["difference"] for c in measured]) or {"n": 0}),
                            "above_0": sum(c["ci"] is not None and c["ci"][0] > 0 for c in measured),
                            "below_0": sum(c["ci"] is not None and c["ci"][1] < 0 for c in measured)}
        out.append({"model": model, "split": split, "columns": columns})
    return out


# ---- markdown and figure ------------------------------------------------------------------------------

def number(value, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def with_interval(value, ci, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    text = number(value, signed)
    return f"{text} [{number(ci[0], signed)}, {number(ci[1], signed)}]" if ci else text


def needs_maps(metric: mt.Metric) -> bool:
    """A column measured on the submitted maps (the map columns, map faithfulness)."""
    return "heatmaps" in metric.needs


def header(first: list[str], columns: list[str]) -> list[str]:
    return ["| " + " | ".join(first + columns) + " |", "|" + "---|" * (len(first) + len(columns))]


def titles(metrics: list) -> list[str]:
    return [f"{m.title} (`{m.key}`)" for m in metrics]


def scores_table(result: dict, metrics: list) -> str:
    lines = header(["model", "data", "split"], titles(metrics) + ["worst group", "true positives"])
    for r in result["rows"]:
        cells = []
        for m in metrics:
            if needs_maps(m) and r["explanation_method"] is None:
                cells.append("no maps")
            else:
                cells.append(with_interval(r["scores"][m.key], r["ci"][m.key]))
        lines.append(f"| {r['title']} | {r['dataset']} | {r['split']} | " + " | ".join(cells)
                     + f" | {r['worst_group']} | {r['n_true_positives']} |")
    return "\n".join(lines) + "\n"


def paired_cell(cell: dict, per_image: bool) -> str:
    if cell["difference"] is None:
        return "n/a"
    text = with_interval(cell["difference"], cell["ci"], signed=True)
    return f"{text} (n={cell['n']})" if per_image else text


def per_image_keys() -> set[str]:
    return {m.key for m in mt.METRICS if not isinstance(m, (mt.CountMetric, mt.RankMetric))
            and m.key not in ("worst_group_accuracy", "shortcut_gap")}


def paired_table(result: dict, metrics: list) -> str:
    lines = header(["model", "data", "split"], [f"Δ {t}" for t in titles(metrics)])
    keys = per_image_keys()
    for p in result["paired"]:
        lines.append(f"| {p['title']} | {p['dataset']} | {p['split']} | "
                     + " | ".join(paired_cell(p["columns"][m.key], m.key in keys) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def title_of(result: dict, key: str) -> str:
    return next(m["title"] for m in result["models"] if m["key"] == key)


def spread_text(cell: dict | None, signed: bool = False) -> str:
    if not cell or cell.get("mean") is None:
        return "n/a"
    return f"{number(cell['mean'], signed)} ({number(cell['min'], signed)} to {number(cell['max'], signed)})"


def seconds_text(cell: dict | None) -> str:
    return "n/a" if not cell else f"{cell['mean']:.0f} ({cell['min']:.0f} to {cell['max']:.0f})"


def summary_table(result: dict, metrics: list) -> str:
    lines = header(["model", "split"], titles(metrics) + ["ingestion s"])
    for s in result["summary"]:
        cells = ["no maps" if needs_maps(m) and not s["maps"] else spread_text(s["columns"][m.key])
                 for m in metrics]
        lines.append(f"| {title_of(result, s['model'])} | {s['split']} | " + " | ".join(cells)
                     + f" | {seconds_text(s['ingestion_s'])} |")
    return "\n".join(lines) + "\n"


def paired_summary_table(result: dict, metrics: list) -> str:
    lines = header(["model", "split"], [f"Δ {t}" for t in titles(metrics)])
    for s in result["paired_summary"]:
        cells = []
        for m in metrics:
            c = s["columns"][m.key]
            cells.append("n/a" if not c["n"] else
                         f"{spread_text(c, signed=True)}; ↑{c['above_0']} ↓{c['below_0']} of {c['n']}")
        lines.append(f"| {title_of(result, s['model'])} | {s['split']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def time_table(result: dict) -> str:
    names = list(result["datasets"])
    lines = header(["model"], [f"{n}: total (fit / predict / explain / evidence)" for n in names])
    for model in result["models"]:
        cells = []
        for name in names:
            row = next(r for r in result["rows"] if r["model"] == model["key"] and r["dataset"] == name)
            d = row["durations"]
            cells.append(f"{d.get('total', 0):.0f} s ({d.get('fit', 0):.0f} / {d.get('predict', 0):.0f} / "
                         f"{d.get('explain', 0):.0f} / {d.get('evidence', 0):.0f})")
        lines.append(f"| {model['title']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


HEADLINE_KEYS = ("accuracy", "worst_group_accuracy", "shortcut_gap", mt.HEADLINE_EXPLANATION_KEY, "faithfulness",
                 "activation_over_prior")
HEADLINE_PAIRED = (mt.HEADLINE_EXPLANATION_KEY, "worst_group_accuracy", "accuracy")


def split_pair(cells: dict, text) -> str:
    """``valid / test`` of one model and dataset."""
    return " / ".join(text(cells[split]) if split in cells else "n/a" for split in ds.SCORED_SPLITS)


def headline_table(result: dict, keys=HEADLINE_KEYS, paired_keys=HEADLINE_PAIRED) -> str:
    """One line per model and dataset, valid / test in each cell: the columns ``keys`` with their
    intervals, the paired differences ``paired_keys`` against the reference, the ingestion time."""
    by_metric = {m.key: m for m in mt.METRICS}
    reference = result["reference"]
    lines = header(["model", "data"], [f"`{k}` [95% CI]" for k in keys]
                   + [f"Δ `{k}` vs {reference} [paired 95% CI]" for k in paired_keys] + ["ingestion s"])
    for model in result["models"]:
        for name in result["datasets"]:
            rows = {r["split"]: r for r in result["rows"] if r["model"] == model["key"] and r["dataset"] == name}
            if not rows:
                continue
            pairs = {p["split"]: p for p in result["paired"] if p["model"] == model["key"] and p["dataset"] == name}
            cells = []
            for key in keys:
                def text(r, key=key):
                    if needs_maps(by_metric[key]) and r["explanation_method"] is None:
                        return "no maps"
                    return with_interval(r["scores"][key], r["ci"][key], signed=key in SIGNED_KEYS)
                cells.append(split_pair(rows, text))
            for key in paired_keys:
                cells.append("(reference)" if model["key"] == reference else
                             split_pair(pairs, lambda p, key=key: paired_cell(p["columns"][key], False)))
            seconds = rows[ds.SCORED_SPLITS[0]]["durations"].get("total")
            cells.append("n/a" if seconds is None else f"{seconds:.0f}")
            lines.append(f"| {model['title']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


SIGNED_KEYS = {"box_reliance", "faithfulness", "activation_over_prior"}


def seed_text(dataset: dict) -> str:
    """A preparation's seed where it took one (prepare draws from its secret since 2026-12-05)."""
    return "" if dataset.get("seed") is None else f"seed {dataset['seed']}, "


def markdown(result: dict, columns: list[str] | None = None) -> str:
    """The tables, with the columns ``columns`` (default: every column of the metric table)."""
    metrics = [m for m in mt.METRICS if not columns or m.key in columns]
    datasets = ", ".join(f"{name} ({seed_text(d)}valid/test {d['n_items']['valid']}/{d['n_items']['test']} "
                         "items)" for name, d in result["datasets"].items())
    reference = title_of(result, result["reference"])
    ran = {step: sum(not r["reused"][step] for r in result["rows"]) for step in ("ingestion", "scoring")}
    ran["ingestion"] //= len(ds.SCORED_SPLITS)   # one ingestion, one row per split
    ingested = sum(r["durations"].get("total", 0) for r in result["rows"] if r["split"] == ds.SCORED_SPLITS[0])
    return "\n".join([
        f"Datasets: {datasets}. Training: {'HYGIEIA_FAST=1 (fast)' if result['fast'] else 'full'}. "
        f"Ingestion, every model and dataset: {ingested:.0f} s (ingestion.json). This invocation: "
        f"{result['seconds']:.0f} s, {ran['ingestion']} ingestion(s) and {ran['scoring']} scoring(s) run, the "
        "others reused.\n",
        "### Headline: valid / test in each cell (95% bootstrap intervals of the scoring program; paired "
        "differences against the reference on the same images)\n",
        headline_table(result),
        "### Every column, per dataset and split (95% bootstrap intervals of the scoring program)\n",
        scores_table(result, metrics),
        f"### Paired differences against {reference} (model − reference, same images; paired bootstrap, "
        f"{result['bootstrap']['paired_resamples']} resamples, seed {result['bootstrap']['paired_seed']}; "
        "n: images both explained or measured)\n",
        paired_table(result, metrics),
        f"### Mean (range) over the {len(result['datasets'])} datasets\n",
        summary_table(result, metrics),
        f"### Paired differences against {reference}: mean (range) over the datasets; ↑/↓: datasets whose "
        "interval lies above / below 0\n",
        paired_summary_table(result, metrics),
        "### Ingestion time (s) at this size, from ingestion.json\n",
        time_table(result)])


def draw_figure(result: dict, path: Path) -> None:
    """The paired differences against the reference with their intervals: one panel per column, one
    row per model, one mark per dataset and split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [m.key for m in mt.METRICS]
    models = [m for m in result["models"] if m["key"] != result["reference"]]
    names = list(result["datasets"])
    marks = [(name, split) for name in names for split in ds.SCORED_SPLITS]
    columns = 4
    rows = -(-len(keys) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 0.35 * len(models) * rows + 1.5 * rows),
                                sharey=True, squeeze=False)
    colors = {"valid": "#2e86c1", "test": "#c0392b"}
    for axis, key in zip(axes.flat, keys):
        for y, model in enumerate(models):
            for k, (name, split) in enumerate(marks):
                cell = next((p["columns"][key] for p in result["paired"] if p["model"] == model["key"]
                             and p["dataset"] == name and p["split"] == split), None)
                if cell is None or cell["difference"] is None:
                    continue
                offset = y + (k - (len(marks) - 1) / 2) * 0.7 / max(len(marks), 1)
                low, high = cell["ci"] or (cell["difference"], cell["difference"])
                axis.plot([low, high], [offset, offset], color=colors[split], linewidth=1.2)
                axis.plot(cell["difference"], offset, "o", color=colors[split], markersize=3)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_title(key, fontsize=9)
        axis.tick_params(labelsize=7)
    for axis in axes.flat[len(keys):]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_yticks(range(len(models)), [m["title"] for m in models], fontsize=7)
        axis.invert_yaxis()
    handles = [plt.Line2D([], [], color=c, marker="o", label=s) for s, c in colors.items()]
    figure.legend(handles=handles, loc="upper right", fontsize=8,
                  title=f"per split; datasets top to bottom: {', '.join(names)}", title_fontsize=7)
    figure.suptitle(f"Paired differences against {title_of(result, result['reference'])} "
                    "(95% paired bootstrap intervals)", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(figure)


def write_outputs(result: dict, out_dir: Path, markdown_path: Path | None, json_path: Path | None,
                  columns: list[str] | None = None) -> str:
    """OUT_DIR's tables hold every column; ``markdown_path`` and the returned text the ``columns``."""
    (out_dir / "real_radiographs.md").write_text(markdown(result))
    text = markdown(result, columns)
    if markdown_path:
        markdown_path.write_text(text)
    for path in (out_dir / "real_radiographs.json", json_path):
        if path:
            path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    draw_figure(result, out_dir / "paired_differences.png")
    return text


def select_models(only: list[str] | None, extra: list[ModelSpec]) -> list[ModelSpec]:
    models = [m for m in MODELS if not only or m.key in only] + list(extra)
    keys = [m.key for m in models]
    if len(set(keys)) != len(keys):
        raise HygieiaError(f"two models share a key: {keys}")
    return models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="DATA_DIR [DATA_DIR ...] OUT_DIR",
                        help="`hygieia prepare` outputs (--full-size 128), then the folder for the runs and tables")
    parser.add_argument("--reuse", action="store_true",
                        help="skip an ingestion or a scoring whose inputs did not change since OUT_DIR's run")
    parser.add_argument("--only", nargs="+", choices=[m.key for m in MODELS], help="run only these built-in models")
    parser.add_argument("--model", action="append", type=parse_model, default=[], metavar="KEY=TITLE=PATH[=SUB]",
                        help="add a submission folder (SUB: the folder of DATA_DIR it runs on, `.` or full_128)")
    parser.add_argument("--reference", default=REFERENCE, help=f"the model paired against (default {REFERENCE})")
    parser.add_argument("--fast", action="store_true", help="HYGIEIA_FAST=1 for the ingestions (tests, demos)")
    parser.add_argument("--columns", nargs="+", choices=[m.key for m in mt.METRICS],
                        help="only these columns in the printed and --markdown tables (OUT_DIR's tables, the JSON "
                        "and the figure keep all)")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("give at least one DATA_DIR and the OUT_DIR")
    *data_dirs, out_dir = args.paths
    try:
        models = select_models(args.only, args.model)
        out_dir.mkdir(parents=True, exist_ok=True)
        result = run_all(data_dirs, out_dir, models, args.reference, args.reuse, args.fast)
    except HygieiaError as err:
        sys.exit(f"real_radiographs: {err}")
    print(write_outputs(result, out_dir, args.markdown, args.json, args.columns))


if __name__ == "__main__":
    main()
