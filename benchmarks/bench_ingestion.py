"""Ingestion of the baseline sample submission at full competition size, on this machine's CPU.

Data: ``tests/fakes.py``'s generator (format-exact synthetic crops with bright blobs in the boxes),
10,000 / 2,000 / 2,000 images by default. Prints the total ingestion time with the breakdown
load / alter / import / fit / predict / evidence / explain, and the Grad-CAM cost per image relative to
one forward pass of the same module (targets: total < 300 s, Grad-CAM < 3x forward); what measuring the
evidence through the model costs (the stages alter and evidence; target: ingestion with them / without
them < 1.5). CPU seconds count the submission's process too. Writes a bar chart
``ingestion_benchmark.png`` and the run's outputs into ``--out``.

The cost of off-box probes: the same ingestion is run a second time on data whose valid and test
splits also hold probes (``--probe-share`` of each split's positives, 0.1 as ``hygieia prepare``
does by default), and the ratio of the two totals is printed (target: probes add < 20%). Probes add
predictions and maps, not training. The fake probes hold no blob, so the baseline calls few of them
positive and explains few; the printed upper bound prices every probe at one prediction and one map.

    python benchmarks/bench_ingestion.py [--sizes 10000 2000 2000] [--probe-share 0.1] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes import write_fake_dataset  # noqa: E402
from hygieia import dataset as ds  # noqa: E402
from hygieia.submission.gradcam import gradcam_heatmaps  # noqa: E402
from hygieia.submission.ingestion import run_ingestion  # noqa: E402
from hygieia.submission.loading import import_model_class  # noqa: E402

SAMPLE = ROOT / "sample_submission"
TARGET_TOTAL_S, TARGET_RATIO = 300.0, 3.0
TARGET_PROBE_SHARE = 0.20   # the most that probes may add to ingestion's time
TARGET_EVIDENCE_RATIO = 1.5  # ingestion with the evidence measured / without it
POSITIVE_SHARE = 0.4        # tests/fakes.py's splits are 3:2 normal:opacity
STAGES = ("load", "alter", "import", "fit", "predict", "evidence", "explain")


def forward_and_gradcam_seconds(images: np.ndarray, batch_size: int = 64) -> dict:
    """Wall and CPU seconds per image of one forward pass (no grad) and of Grad-CAM, sample's network."""
    import torch

    module, layer = import_model_class(SAMPLE)().gradcam_target()
    module.eval()
    costs = {}
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for begin in range(0, len(images), batch_size):
            module(torch.from_numpy(images[begin:begin + batch_size]).unsqueeze(1).float() / 255)
    costs["forward"] = ((time.perf_counter() - wall) / len(images), (time.process_time() - cpu) / len(images))
    wall, cpu = time.perf_counter(), time.process_time()
    gradcam_heatmaps(module, layer, images, batch_size)
    costs["gradcam"] = ((time.perf_counter() - wall) / len(images), (time.process_time() - cpu) / len(images))
    return costs


def plot(durations: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in STAGES if s in durations]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(stages[::-1], [durations[s] for s in stages[::-1]], color="#4c72b0")
    ax.axvline(TARGET_TOTAL_S, color="#c44e52", linestyle="--", label=f"target total {TARGET_TOTAL_S:.0f} s")
    ax.set_xlabel("seconds")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_seconds() -> float:
    """CPU seconds of this process and of its waited-for children (the submission's process is one)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def ingest(data_dir: Path, output: Path) -> tuple[dict, float]:
    """One ingestion of the sample submission: its report and the CPU seconds of this process tree,
    the submission's process included."""
    cpu = cpu_seconds()
    report = run_ingestion(data_dir / ds.INPUT_DIR, output, SAMPLE, time_budget_s=3600)
    if report["status"] != "ok":
        sys.exit(f"ingestion of {data_dir} failed: {report['error']['message']}")
    return report, cpu_seconds() - cpu


def evidence_cost(report: dict) -> None:
    """What measuring the evidence added: the parent's altered copies (stage alter) and the submission's
    predict_proba on them (stage evidence), against the run without those two stages."""
    durations = report["durations"]
    added = durations["alter"] + durations["evidence"]
    without = durations["total"] - added
    ratio = durations["total"] / without
    copies = report["evidence"]["copies"]
    print(f"evidence: {copies} altered copies of {sum(report['evidence']['images'].values())} images; alter "
          f"{durations['alter']:.1f} s, evidence {durations['evidence']:.1f} s "
          f"({copies / max(durations['evidence'], 1e-9):.0f} copies/s); ingestion {without:.1f} s without, "
          f"{durations['total']:.1f} s with: ratio {ratio:.3f} (target < {TARGET_EVIDENCE_RATIO}: "
          f"{'ok' if ratio < TARGET_EVIDENCE_RATIO else 'MISSED'})")


def probe_cost(plain: dict, probed: dict, n_probes: int) -> None:
    """Print what the probes added: measured, by stage, and the upper bound (every probe predicted
    and explained at the run's own per-image rates)."""
    base, more = plain["durations"], probed["durations"]
    ratio = more["total"] / base["total"]
    print(f"probes: {n_probes} per scored split ({probed['counts']['valid'] - plain['counts']['valid']} "
          f"valid items added); ingestion {base['total']:.1f} s without, {more['total']:.1f} s with: ratio "
          f"{ratio:.3f} (added {ratio - 1:+.1%}; target < {TARGET_PROBE_SHARE:.0%}: "
          f"{'ok' if ratio - 1 < TARGET_PROBE_SHARE else 'MISSED'})")
    for stage in STAGES:
        print(f"  {stage:8s} {base[stage]:7.1f} s -> {more[stage]:7.1f} s")
    counts = plain["counts"]
    per_prediction = base["predict"] / (counts["valid"] + counts["test"])
    per_map = base["explain"] / max(counts["heatmaps"], 1)
    bound = 2 * n_probes * (per_prediction + per_map) / base["total"]
    print(f"  upper bound (every probe predicted and explained): {bound:+.1%} "
          f"({per_prediction * 1e3:.1f} ms/prediction, {per_map * 1e3:.1f} ms/map)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=3, default=(10_000, 2_000, 2_000),
                        metavar=("TRAIN", "VALID", "TEST"))
    parser.add_argument("--out", type=Path, default=None, help="folder for data and outputs (default: a temporary one)")
    parser.add_argument("--ratio-images", type=int, default=256, help="images for the forward/Grad-CAM ratio")
    parser.add_argument("--probe-share", type=float, default=0.1,
                        help="probes per scored split as a share of its positives (0: skip the probe run)")
    args = parser.parse_args()
    os.environ.pop("HYGIEIA_FAST", None)
    out = args.out or Path(tempfile.mkdtemp(prefix="hygieia-bench-ingestion-"))
    load_before = os.getloadavg()

    start = time.perf_counter()
    write_fake_dataset(out / "data", sizes=tuple(args.sizes))
    print(f"fake data {args.sizes} written in {time.perf_counter() - start:.1f} s", flush=True)

    report, cpu = ingest(out / "data", out / "output")
    durations, counts = report["durations"], report["counts"]
    images = ds.load_input_split(out / "data" / ds.INPUT_DIR, "valid")["images"][:args.ratio_images]
    costs = forward_and_gradcam_seconds(images)
    load_after = os.getloadavg()
    n_probes = round(args.probe_share * POSITIVE_SHARE * args.sizes[1])
    if n_probes:
        write_fake_dataset(out / "data_probes", sizes=tuple(args.sizes), probes=n_probes)
        probed, _ = ingest(out / "data_probes", out / "output_probes")
        load_probes = os.getloadavg()

    total = durations["total"]
    print(f"device {report['device']}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} CPUs)")
    print(f"total ingestion {total:.1f} s wall, {cpu:.1f} s CPU "
          f"(target < {TARGET_TOTAL_S:.0f} s: {'ok' if total < TARGET_TOTAL_S else 'MISSED'})")
    for stage in STAGES:
        print(f"  {stage:8s} {durations[stage]:7.1f} s")
    evidence_cost(report)
    n_predicted = counts["valid"] + counts["test"]
    print(f"  fit {args.sizes[0] / durations['fit']:.0f} train images/s; predict "
          f"{n_predicted / durations['predict']:.0f} images/s; explain {counts['heatmaps']} heatmaps, "
          f"{counts['heatmaps'] / max(durations['explain'], 1e-9):.0f} images/s")
    for kind, index in (("wall", 0), ("CPU", 1)):
        forward, gradcam = costs["forward"][index], costs["gradcam"][index]
        ratio = gradcam / forward
        print(f"{kind}: forward {forward * 1e3:.2f} ms/image, Grad-CAM {gradcam * 1e3:.2f} ms/image: ratio "
              f"{ratio:.2f}x (target < {TARGET_RATIO:.0f}x: {'ok' if ratio < TARGET_RATIO else 'MISSED'})")
    if n_probes:
        print(f"load average after the probe run {load_probes[0]:.2f}")
        probe_cost(report, probed, n_probes)
    title = (f"baseline ingestion {args.sizes}: {total:.0f} s on {report['device']}, "
             f"load {load_before[0]:.1f}-{load_after[0]:.1f}")
    plot(durations, out / "ingestion_benchmark.png", title)
    print(f"chart and outputs in {out}")


if __name__ == "__main__":
    main()
