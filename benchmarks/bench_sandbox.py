"""The cost of each sandbox of ``hygieia run``: docker, bubblewrap, none; and of its limits.

Three measures: starting a bare step (``python3 -S -c pass``) in each, median of ``--starts``; the
tabular sample through both programs on the tests' fake bundle (60/20/20), ``--runs`` times each,
alternating; and the demo's run (a ``--demo-patients`` phantom, the sample submission with
HYGIEIA_FAST=1, as ``hygieia demo`` runs it) under bubblewrap with the limits (a memory cgroup per
step, the folders it writes watched every 0.5 s) and without them, ``--runs`` times each, alternating.
Docker runs in the tests' small offline image (tests/docker_image.py; built on first use, its build
time printed). Prints seconds (wall, and the CPU of this process and of the children it waits for), the
steps' peak memory, the ratios, and what the limits cost by themselves (a check of each watched folder,
a step's memory cgroup).

    python benchmarks/bench_sandbox.py [--runs 2] [--starts 5] [--demo-patients 200 (0: skip)]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bundle_helpers import build_fake_bundle, extract  # noqa: E402
from docker_image import docker_problem, ensure_image  # noqa: E402
from hygieia.bundle import sandbox  # noqa: E402
from hygieia.bundle.sandbox import Step, bwrap_argv, command_argv, docker_argv, step_env  # noqa: E402
from hygieia.bundle.worker import run_submission  # noqa: E402


def timed(argv: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - start


def bare_starts(image: str | None, tmp: Path, count: int) -> dict[str, float]:
    for name in ("program", "tmp"):
        (tmp / name).mkdir(exist_ok=True)
    step = Step("bench", {"/app/program": tmp / "program", "/tmp": tmp / "tmp"}, {"/app/program"},
                "python3 -S -c pass", 60)
    commands = {"none": [sys.executable, "-S", "-c", "pass"],
                "bwrap": bwrap_argv(step, step_env("/app/program", {}, sandboxed=True)) + command_argv(step.command,
                                                                                                       None)}
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


class _Unwatched:
    def __init__(self, *args, **kwargs):
        pass

    def check(self):
        return None


@contextmanager
def limits_off():
    """The worker as it was before its limits: no memory cgroup, nothing watched."""
    saved = sandbox._memory_cgroup, sandbox.FolderWatch
    sandbox._memory_cgroup, sandbox.FolderWatch = (lambda step, limits: None), _Unwatched
    try:
        yield
    finally:
        sandbox._memory_cgroup, sandbox.FolderWatch = saved


def cpu_seconds() -> float:
    """This process's CPU seconds (the worker: its copies and its watching) and its waited children's
    (a plain process's; bubblewrap's sandboxed processes are not accounted to it)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def limit_costs(run: Path) -> None:
    """What the limits cost by themselves: one check of each folder a step writes (done every
    WATCH_SECONDS), and making and removing a step's memory cgroup."""
    from hygieia.bundle.limits import CgroupUnavailable, FolderWatch, MemoryCgroup, default_memory

    for folder in (run / "prediction" / "output", run / "scoring" / "output", run / "scoring" / "input"):
        watch = FolderWatch(folder, 1 << 30, str(folder), "--max-output")
        start = time.perf_counter()
        for _ in range(100):
            watch.check()
        each = (time.perf_counter() - start) / 100
        print(f"  one check of {folder.relative_to(run)} ({watch.entries} entries): {each * 1e3:.3f} ms, "
              f"{each / sandbox.WATCH_SECONDS:.3%} of a core at one check per {sandbox.WATCH_SECONDS} s")
    start = time.perf_counter()
    try:
        for _ in range(20):
            MemoryCgroup("bench", default_memory()).close()
        print(f"  a step's memory cgroup made and removed: {(time.perf_counter() - start) / 20 * 1e3:.2f} ms")
    except CgroupUnavailable as err:
        print(f"  no memory cgroup here: {err}")


def demo_bundle(tmp: Path, patients: int) -> tuple[Path, Path, dict[str, str]] | None:
    """The demo's bundle, sample submission and settings for a ``patients`` phantom (as hygieia demo)."""
    from hygieia.bundle.build import build_bundle
    from hygieia.bundle.demo import split_sizes
    from hygieia.prepare.pipeline import prepare
    from hygieia.rsna.phantom import generate_phantom
    from hygieia.weights import WEIGHTS_ENV, resolve_weights_path

    weights = Path(os.environ.get(WEIGHTS_ENV) or ROOT.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth")
    if not weights.is_file():
        print("demo: not measured (no MobileNetV2 weights: set $HYGIEIA_MOBILENET_WEIGHTS)")
        return None
    start = time.monotonic()
    generate_phantom(tmp / "rsna", patients=patients, seed=0)
    train, valid, test = split_sizes(patients)
    prepare(tmp / "rsna", tmp / "data", train=train, valid=valid, test=test, seed=0,
            weights=resolve_weights_path(weights))
    bundle = build_bundle(tmp / "data", tmp / "bundle.zip").path
    with zipfile.ZipFile(bundle) as archive:
        (tmp / "sample_submission.zip").write_bytes(archive.read("starting_kit/sample_submission.zip"))
    print(f"demo bundle ({patients} patients: {train}/{valid}/{test}) made in {time.monotonic() - start:.0f} s")
    return bundle, tmp / "sample_submission.zip", {"HYGIEIA_FAST": "1", WEIGHTS_ENV: str(weights.resolve())}


def demo_runs(tmp: Path, patients: int, runs: int) -> None:
    made = demo_bundle(tmp, patients)
    if made is None:
        return
    bundle, submission, settings = made
    os.environ.update(settings)   # the weights path reaches the programs as the image's own setting
    totals: dict[str, list[tuple[float, float]]] = {"limits": [], "no limits": []}
    peaks = []
    for index in range(runs):
        for kind in totals:
            start, cpu = time.monotonic(), cpu_seconds()
            if kind == "limits":
                result = run_submission(submission, bundle, out_dir=tmp / f"demo-{index}", echo=False,
                                        sandbox="bwrap", env=settings)
                peaks.append(" / ".join(f"{(s.peak_memory or 0) / 2**20:.0f}" for s in result.steps))
            else:
                with limits_off():
                    result = run_submission(submission, bundle, out_dir=tmp / f"demo-{index}-off", echo=False,
                                            sandbox="bwrap", env=settings)
            totals[kind].append((time.monotonic() - start, cpu_seconds() - cpu))
            assert result.status == "Finished", result.report()
    print(f"\nthe demo's run under bubblewrap ({patients}-patient phantom, sample submission, HYGIEIA_FAST=1), "
          f"{runs} run(s) each:")
    base = statistics.median(wall for wall, _ in totals["no limits"])
    for kind, measured in totals.items():
        median = statistics.median(wall for wall, _ in measured)
        print(f"  {kind:<9} wall {', '.join(f'{w:.1f}' for w, _ in measured)} s, "
              f"CPU {', '.join(f'{c:.1f}' for _, c in measured)} s; median x{median / base:.3f} of no limits")
    print(f"  peak memory of ingestion / scoring (MiB): {'; '.join(peaks)}")
    limit_costs(tmp / "demo-0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--demo-patients", type=int, default=200)
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
        if args.demo_patients:
            demo_runs(tmp / "demo", args.demo_patients, args.runs)


if __name__ == "__main__":
    main()
