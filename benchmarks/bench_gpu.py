"""Both image samples' full-size ingestion on CUDA: times by stage, the device, the ratio between them.

Data: ``tests/fakes.py``'s generator, 10,000 / 2,000 / 2,000 images by default (as
``bench_ingestion.py``). Runs ``sample_submission`` (MobileNetV2 + a linear layer, Grad-CAM) and
``sample_submission_boxes`` (cells scored for opacity, its own map) through the real ingestion, one
after the other, and prints each one's stages, the device ingestion reports, the ratio of the two
totals and how much of the phase's time budget each takes. A few minutes on one GPU.

Without a CUDA device it says so and exits with status 2 (``--allow-cpu`` runs it anyway, for a
check of the script itself; use ``bench_ingestion.py`` for CPU timings). The weights come from
``--weights``, else ``$HYGIEIA_MOBILENET_WEIGHTS``, else ``../shared/weights/mobilenet_v2_imagenet.pth``.

    python benchmarks/bench_gpu.py [--sizes 10000 2000 2000] [--out DIR] [--weights PATH] [--allow-cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

SAMPLES = ("sample_submission", "sample_submission_boxes")
STAGES = ("load", "alter", "import", "fit", "predict", "evidence", "explain", "total")
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"


def cuda_device() -> str | None:
    """The name of the first CUDA device, None without one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def weights_path(given: Path | None) -> Path:
    path = given or Path(os.environ.get("HYGIEIA_MOBILENET_WEIGHTS") or SHARED_WEIGHTS)
    if not path.is_file():
        sys.exit(f"bench_gpu: MobileNetV2 weights not found at {path}: "
                 "pass --weights or set $HYGIEIA_MOBILENET_WEIGHTS")
    return path


def ingest(data_dir: Path, output: Path, sample: str) -> dict:
    from hygieia import dataset as ds
    from hygieia.submission.ingestion import run_ingestion

    report = run_ingestion(data_dir / ds.INPUT_DIR, output, ROOT / sample, time_budget_s=3600)
    if report["status"] != "ok":
        sys.exit(f"bench_gpu: ingestion of {sample} failed: {report['error']['message']}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=3, default=(10_000, 2_000, 2_000),
                        metavar=("TRAIN", "VALID", "TEST"))
    parser.add_argument("--out", type=Path, default=None, help="folder for data and outputs (default: a temporary one)")
    parser.add_argument("--weights", type=Path, default=None, help="torchvision mobilenet_v2 state_dict")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA too (a check of the script)")
    args = parser.parse_args()

    device = cuda_device()
    if device is None and not args.allow_cpu:
        print("bench_gpu: no CUDA device (torch.cuda.is_available() is False): nothing to measure here. "
              "Run it on a machine with a GPU, or benchmarks/bench_ingestion.py for the CPU.", file=sys.stderr)
        return 2
    os.environ["HYGIEIA_MOBILENET_WEIGHTS"] = str(weights_path(args.weights))
    os.environ.pop("HYGIEIA_FAST", None)

    from fakes import write_fake_dataset
    from hygieia.submission.ingestion import read_budget

    out = args.out or Path(tempfile.mkdtemp(prefix="hygieia-bench-gpu-"))
    start = time.perf_counter()
    write_fake_dataset(out / "data", sizes=tuple(args.sizes))
    print(f"fake data {tuple(args.sizes)} written in {time.perf_counter() - start:.1f} s; CUDA device: {device}",
          flush=True)
    reports = {sample: ingest(out / "data", out / f"output_{sample}", sample) for sample in SAMPLES}

    budget, source = read_budget(ROOT / "ingestion_program")
    print(f"\n{'stage':10s}" + "".join(f"{sample:>26s}" for sample in SAMPLES))
    for stage in STAGES:
        print(f"{stage:10s}" + "".join(f"{reports[s]['durations'][stage]:>24.1f} s" for s in SAMPLES))
    for sample, report in reports.items():
        total = report["durations"]["total"]
        print(f"{sample}: device {report['device']}, total {total:.1f} s, {total / budget:.0%} of the "
              f"{budget:.0f} s budget ({source}); {report['counts']['heatmaps']} maps")
    first, second = (reports[s]["durations"]["total"] for s in SAMPLES)
    print(f"ratio {SAMPLES[1]} / {SAMPLES[0]}: {second / first:.2f}")
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
