"""The cost of each sandbox of ``hygieia run``: docker, bubblewrap, none.

Two measures: starting a bare step (``python3 -S -c pass``) in each, median of ``--starts``; and the
tabular sample through both programs on the tests' fake bundle (60/20/20), ``--runs`` times each,
alternating. Docker runs in the tests' small offline image (tests/docker_image.py; built on first use,
its build time printed). Prints seconds and the ratios to no sandbox.

    python benchmarks/bench_sandbox.py [--runs 2] [--starts 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bundle_helpers import build_fake_bundle, extract  # noqa: E402
from docker_image import docker_problem, ensure_image  # noqa: E402
from hygieia.bundle.sandbox import Step, bwrap_argv, docker_argv, step_env  # noqa: E402
from hygieia.bundle.worker import run_submission  # noqa: E402


def timed(argv: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - start


def bare_starts(image: str | None, tmp: Path, count: int) -> dict[str, float]:
    (tmp / "program").mkdir(exist_ok=True)
    step = Step("bench", {"/app/program": tmp / "program"}, {"/app/program"}, "python3 -S -c pass", 60)
    commands = {"none": [sys.executable, "-S", "-c", "pass"],
                "bwrap": bwrap_argv(step, step_env("/app/program", {}, sandboxed=True)) + [sys.executable, "-S",
                                                                                          "-c", "pass"]}
    medians = {}
    for kind in list(commands) + (["docker"] if image else []):
        runs = []
        for index in range(count):
            if kind == "docker":  # a fresh name each time, removed as the worker does
                name = f"hygieia-bench-{os.getpid()}-{index}"
                runs.append(timed(docker_argv(step, image, name, {})) + timed(["docker", "rm", "--force", name]))
            else:
                runs.append(timed(commands[kind]))
        medians[kind] = statistics.median(runs)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    problem = docker_problem()
    image = None
    if problem:
        print(f"docker: not measured ({problem})")
    else:
        image, seconds = ensure_image()
        print(f"docker test image {image}: " + ("present" if seconds is None else f"built in {seconds:.1f} s"))
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        starts = bare_starts(image, tmp, args.starts)
        print(f"\nbare step (python3 -S -c pass), median of {args.starts}:")
        for kind, seconds in starts.items():
            print(f"  {kind:<6} {seconds:6.3f} s")
        bundle = extract(build_fake_bundle(tmp, with_card=False), tmp / "bundle")
        kinds = ["none", "bwrap"] + (["docker"] if image else [])
        totals: dict[str, list[float]] = {kind: [] for kind in kinds}
        steps: dict[str, list[str]] = {kind: [] for kind in kinds}
        for index in range(args.runs):
            for kind in kinds:
                start = time.monotonic()
                result = run_submission(ROOT / "sample_submission_tabular", bundle, out_dir=tmp / f"{kind}{index}",
                                        echo=False, sandbox=kind, docker_image=image)
                totals[kind].append(time.monotonic() - start)
                assert result.status == "Finished", result.report()
                steps[kind].append(" + ".join(f"{step.elapsed:.1f}" for step in result.steps))
        print(f"\nthe tabular sample, ingestion + scoring (s), {args.runs} run(s) each:")
        base = statistics.median(totals["none"])
        for kind in kinds:
            median = statistics.median(totals[kind])
            print(f"  {kind:<6} total {', '.join(f'{t:.1f}' for t in totals[kind])} s "
                  f"(steps {'; '.join(steps[kind])}); median x{median / base:.2f} of none")


if __name__ == "__main__":
    main()
