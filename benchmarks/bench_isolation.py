"""What the submission's isolation costs ingestion: a small run, timed, per mechanism.

A tiny numpy model (fit does nothing, predict_proba is a constant rule) on a fake dataset
(``tests/fakes.py``, 200 / 50 / 50 images by default), so that what is measured is ingestion's own
work around the submission: starting its process, ending every process, checking and writing the
outputs. Each variant runs ``--runs`` times in a fresh interpreter (``run_ingestion`` in-process, as
``hygieia ingest`` does); the median wall time and the CPU seconds of ingestion and of all its
children are printed, with each variant's ratio to the first.

Variants: ``namespaces`` (the default where the machine allows it) and ``session`` (no namespace,
``HYGIEIA_NO_NAMESPACES=1``); with ``--before DIR``, the same run with the ``hygieia`` package of
another checkout first (``git archive main | tar -x -C DIR`` gives the code before the isolation).

    python benchmarks/bench_isolation.py [--sizes 200 50 50] [--runs 7] [--before DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

MODEL = """\
import numpy as np


class Model:
    def fit(self, X, y):
        pass

    def predict_proba(self, X):
        return np.full(len(X["ids"]), 0.3)
"""

# One run, in a fresh interpreter whose hygieia is the variant's: prints wall and CPU seconds.
ONE_RUN = """\
import json, os, resource, sys, time
from hygieia.submission.ingestion import run_ingestion
start = time.perf_counter()
report = run_ingestion(sys.argv[1], sys.argv[2], sys.argv[3], 600, "benchmark")
wall = time.perf_counter() - start
own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
print(json.dumps({"status": report["status"], "wall": wall, "cpu": cpu,
                  "isolation": (report.get("isolation") or {}).get("mechanism", "none (before)")}))
"""


def run_variant(source: Path, env_extra: dict, input_dir: Path, submission: Path, runs: int, work: Path) -> dict:
    walls, cpus, mechanism = [], [], None
    env = {**os.environ, "PYTHONPATH": str(source), **env_extra}
    for i in range(runs):
        output = work / f"out-{len(list(work.iterdir()))}-{i}"
        done = subprocess.run([sys.executable, "-c", ONE_RUN, str(input_dir), str(output), str(submission)],
                              capture_output=True, text=True, env=env, cwd=work, timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"bench_isolation: a run failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if result["status"] != "ok":
            raise SystemExit(f"bench_isolation: ingestion failed: {output / 'ingestion.json'}")
        walls.append(result["wall"])
        cpus.append(result["cpu"])
        mechanism = result["isolation"]
    return {"mechanism": mechanism, "wall": statistics.median(walls), "cpu": statistics.median(cpus),
            "walls": walls}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=3, default=[200, 50, 50], metavar=("TRAIN", "VALID", "TEST"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--before", type=Path, default=None, metavar="DIR",
                        help="root of another checkout whose hygieia is run first, as the baseline")
    args = parser.parse_args()
    from fakes import write_fake_dataset
    from hygieia import dataset as ds

    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
        work = Path(tmp)
        input_dir = write_fake_dataset(work / "data", sizes=tuple(args.sizes)) / ds.INPUT_DIR
        submission = work / "submission"
        submission.mkdir()
        (submission / "model.py").write_text(MODEL)
        runs = work / "runs"
        runs.mkdir()
        variants = [("namespaces", ROOT, {}), ("session", ROOT, {"HYGIEIA_NO_NAMESPACES": "1"})]
        if args.before:
            variants.insert(0, ("before", args.before.resolve(), {}))
        results = {name: run_variant(source, extra, input_dir, submission, args.runs, runs)
                   for name, source, extra in variants}
    first = next(iter(results.values()))
    print(f"ingestion of a constant model on {args.sizes[0]}/{args.sizes[1]}/{args.sizes[2]} fake images, "
          f"median of {args.runs} runs (CPU: ingestion and all its children)")
    for name, result in results.items():
        print(f"  {name:<11} ({result['mechanism']:<13}) wall {result['wall']:6.3f} s "
              f"(x{result['wall'] / first['wall']:.2f})   CPU {result['cpu']:6.3f} s "
              f"(x{result['cpu'] / first['cpu']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
