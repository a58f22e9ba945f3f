"""Speed of ``prepare``'s two heavy steps on real RSNA radiographs.

    python benchmarks/bench_prepare.py [--rsna ../shared/data/rsna_real_mini] [--images 64]
                                       [--weights PATH] [--device cpu|cuda]

Prints: DICOM decode + crop + resizes (images/s), MobileNetV2 feature extraction at 224 (images/s),
the fraction of the machine's float32 matmul rate that MobileNetV2 achieves (0.30 G multiply-adds =
0.60 GFLOP per image), and the extrapolated time for 14,000 images (decoding and the network run one
after the other with --workers 0; side by side with --workers >= 1). Wall and CPU seconds are both
shown: on a shared machine the CPU rate is what an idle machine would approach.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from hygieia.prepare.crops import crop_image, make_window, resize_image
from hygieia.prepare.features import FeatureExtractor, feature_input
from hygieia.rsna.dicom import read_dicom
from hygieia.rsna.tables import IMAGES_DIR

MOBILENET_V2_GMAC = 0.30  # multiply-adds per 224x224 image (torchvision's figure: 0.30 GFLOPS as MACs)
TOTAL = 14_000
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsna_real_mini"


def timed(work):
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_decode(paths: list[Path]) -> tuple[np.ndarray, float, float]:
    rng = np.random.default_rng(0)

    def work():
        inputs = []
        for path in paths:
            pixels, _ = read_dicom(path)
            crop_image(pixels, make_window((300, 300, 200, 300), rng), 100)
            resize_image(pixels, 256)
            inputs.append(feature_input(pixels))
        return np.stack(inputs)

    return timed(work)


def bench_features(inputs: np.ndarray, weights, device, batch: int = 32) -> tuple[float, float, str]:
    extractor = FeatureExtractor(weights, device=device)
    extractor(inputs[:batch])  # warm-up

    def work():
        for start in range(0, len(inputs), batch):
            extractor(inputs[start:start + batch])
        if extractor.device.type == "cuda":
            extractor.torch.cuda.synchronize()

    _, wall, cpu = timed(work)
    return wall, cpu, str(extractor.device)


def matmul_gflops(device: str, n: int = 2048, repeats: int = 10) -> float:
    """The float32 matmul rate (GFLOP/s, 2 n^3 per product): the machine's practical ceiling."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rsna", type=Path, default=SHARED)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    paths = sorted((args.rsna / IMAGES_DIR).glob("*.dcm"))[:args.images]
    print(f"{len(paths)} radiographs from {args.rsna}; torch threads {torch.get_num_threads()}, "
          f"os.cpu_count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    inputs, wall, cpu = bench_decode(paths)
    decode_rate, decode_cpu_rate = len(paths) / wall, len(paths) / cpu
    print(f"decode + crop + resizes: {decode_rate:7.1f} images/s wall, {decode_cpu_rate:7.1f} images per CPU-second")

    wall, cpu, device = bench_features(inputs, args.weights, args.device)
    feature_rate, feature_cpu_rate = len(inputs) / wall, len(inputs) / cpu
    print(f"MobileNetV2 features ({device}): {feature_rate:7.1f} images/s wall, "
          f"{feature_cpu_rate:7.1f} images per CPU-second")

    peak = matmul_gflops(args.device)
    achieved = feature_rate * 2 * MOBILENET_V2_GMAC
    print(f"float32 matmul ceiling: {peak:8.1f} GFLOP/s; MobileNetV2 achieves {achieved:7.1f} GFLOP/s "
          f"= {100 * achieved / peak:5.1f}% of it")

    serial = TOTAL / decode_rate + TOTAL / feature_rate
    overlapped = TOTAL / min(decode_rate, feature_rate)
    print(f"extrapolated for {TOTAL} images: {serial / 60:6.1f} min with --workers 0, "
          f"about {overlapped / 60:6.1f} min when decoding overlaps the network (--workers >= 1, spare cores)")


if __name__ == "__main__":
    main()
