"""Benchmark of the scoring program: 2,000 predictions (+200 probes), ~800 heatmaps at 100x100 (target: < 10 s).

Prints the whole run's time (``hygieia.scoring.score.score``: reading, metrics, bootstrap, HTML
report), the time of each part, and maps/s for each explanation metric.

    python benchmarks/bench_scoring.py [--n 2000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes import write_fake_dataset, write_fake_ingestion_output  # noqa: E402

from hygieia import dataset as ds  # noqa: E402
from hygieia.scoring import classification as cls  # noqa: E402
from hygieia.scoring import groups, shortcut  # noqa: E402
from hygieia.scoring import explanation as xp  # noqa: E402
from hygieia.scoring import score as sc  # noqa: E402
from hygieia.scoring.metrics import MAP_METRICS, image_rows  # noqa: E402
from hygieia.scoring.report import render_report  # noqa: E402
from hygieia.scoring.split import ScoredSplit  # noqa: E402

TARGET_S = 10.0


def timed(label: str, func, *args, **kwargs):
    """Run ``func``; print its wall time and its process CPU time (on a shared, loaded machine the
    CPU time is close to what the wall time would be on an idle one)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    value = func(*args, **kwargs)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(f"  {label:<36s} {elapsed:7.3f} s wall {cpu:7.3f} s CPU")
    return value, elapsed


def metric_rates(ref: dict, run: dict) -> None:
    """maps/s of each explanation metric alone, in its batched form, on the true positives' maps."""
    split = ScoredSplit.of_run(ref, run)
    ids = split.true_positive_ids
    stacked = np.stack([run["heatmaps"][i] for i in ids])

    def fresh():  # nothing found by an earlier metric is reused
        return xp.Maps(stacked, [split.boxes[i] for i in ids], ref["box_prior"])

    measures = {m.key: (lambda m=m: m.per_image(fresh())) for m in MAP_METRICS}
    measures["every metric and the report's details"] = lambda: image_rows(fresh(), ids)
    print(f"explanation metrics on {len(ids)} true-positive maps:")
    for name, run_metric in measures.items():
        start, start_cpu = time.perf_counter(), time.process_time()
        run_metric()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        print(f"  {name:<36s} {len(ids) / elapsed:7.0f} maps/s wall {len(ids) / cpu:7.0f} maps/s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="scored predictions (valid split size)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_scoring_"))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min)")
    dataset = write_fake_dataset(work / "data", sizes=(200, args.n, 4), seed=0, probes=args.n // 10)
    res = write_fake_ingestion_output(work / "res", dataset, seed=0, error_rate=0.1)
    ref_dir = dataset / ds.REFERENCE_DIR / "valid"

    print("whole scoring run (score(): read, metrics, bootstrap, JSON, HTML):")
    results, total = timed("total", sc.score, ref_dir, res, work / "out", progress=False)
    counts = results["classification"]
    print(f"  {counts['n']} predictions, {counts['n_predicted_positive']} predicted positives with heatmaps, "
          f"{results['explanation']['n_true_positives']} true positives; "
          f"target < {TARGET_S:.0f} s: {'met' if total < TARGET_S else 'MISSED'} "
          f"({total / TARGET_S:.2f} of the budget)")

    print("parts:")
    (ref, run), _ = timed("read and check inputs", sc.load_inputs, ref_dir, res)
    scored = ref["probes"] == 0
    truth, proba = ref["labels"][scored], run["predictions"]["proba"].to_numpy()[scored]
    predicted = run["predictions"]["label"].to_numpy()[scored]
    timed("classification metrics", cls.classification_metrics, truth, proba, predicted)
    timed(f"bootstrap ({cls.N_RESAMPLES} resamples)", cls.bootstrap_classification, truth, proba, predicted)
    split = ScoredSplit.of_run(ref, run)
    measured, _ = timed("explanation metrics", lambda: {m.key: split.measured(m) for m in MAP_METRICS})
    explanation = sc.explanation_results(split, measured)
    timed("box-blind maps (chance references)", sc.blind_results, split)
    view = ref["meta"].loc[ref["ids"]]["view_position"].astype(str).to_numpy()[scored]
    timed("worst-group accuracy + interval", groups.worst_group_accuracy, truth, predicted,
          groups.class_by(truth, view))
    timed("shortcut gap + interval", shortcut.shortcut_gap, ref["labels"], run["predictions"]["label"].to_numpy(),
          ref["probes"])
    timed("group tables with intervals", sc.bias_results, ref, run, scored, explanation)
    results, _ = timed("compute_results (all of the above)", sc.compute_results, ref, run, ref_dir, False)
    timed("write scores + detailed_scores.json", sc.write_scores, work / "out2", results)
    page, _ = timed("render detailed_results.html", render_report, results, ref, run)
    print(f"  detailed_results.html: {len(page) / 1e6:.2f} MB")
    metric_rates(ref, run)
    print(f"machine load after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
