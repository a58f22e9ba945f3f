"""Phantom generation speed: anatomy synthesis vs JPEG/DICOM writing, 1 and 2 workers.

    python benchmarks/bench_phantom.py [--patients 48] [--figure docs/figures/phantom_examples.png]

Prints images/s and the extrapolated time for the 25,300 patients that 14,000 samples need; with
--figure, also saves a montage of four phantom radiographs with their boxes (and a marker).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from hygieia.rsna.dicom import dicom_bytes, read_dicom
from hygieia.rsna.phantom import (CLASS_INFO_CSV, IMAGES_DIR, LABELS_CSV, MARKERS_CSV, NORMAL, NOT_NORMAL,
                                  OPACITY, generate_phantom, render_patient, sample_patients)

FULL_PATIENTS = 25_300


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:6.1f} images/s ({1000 * seconds / count:6.1f} ms/image)"


def bench_parts(patients: int) -> None:
    """Wall and CPU time of the two halves of the work, in this process (CPU time is what a
    machine not shared with other work would see)."""
    table = sample_patients(patients, seed=0)
    render_patient(table[0])  # builds the shared textures once, as every worker does
    wall, cpu = time.perf_counter(), time.process_time()
    images = [render_patient(p) for p in table]
    anatomy = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    for patient, pixels in zip(table, images):
        dicom_bytes(pixels, patient.header())
    write = time.perf_counter() - wall, time.process_time() - cpu
    for name, (w, c) in (("anatomy synthesis    ", anatomy), ("JPEG + DICOM encoding", write)):
        print(f"{name}: wall {_rate(patients, w)}; CPU {_rate(patients, c)}")
    print(f"JPEG + DICOM share of the CPU time: {write[1] / (anatomy[1] + write[1]):.0%}; one core "
          f"(CPU time): {patients / (anatomy[1] + write[1]):.1f} images/s, {FULL_PATIENTS:,} patients ≈ "
          f"{FULL_PATIENTS * (anatomy[1] + write[1]) / patients / 60:.0f} min")


def bench_generate(patients: int, workers: int, out: Path) -> float:
    start = time.perf_counter()
    generate_phantom(out, patients, seed=0, confounder="marker", progress=False, workers=workers)
    seconds = time.perf_counter() - start
    print(f"generate_phantom, {workers} worker(s): {_rate(patients, seconds)}; "
          f"{FULL_PATIENTS:,} patients ≈ {FULL_PATIENTS * seconds / patients / 60:.0f} min")
    return seconds


def save_figure(phantom: Path, png: Path) -> None:
    """Four examples (two Lung Opacity, one Not Normal, one Normal) with boxes and markers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    labels = pd.read_csv(phantom / LABELS_CSV)
    classes = pd.read_csv(phantom / CLASS_INFO_CSV).drop_duplicates("patientId").set_index("patientId")["class"]
    markers = pd.read_csv(phantom / MARKERS_CSV).set_index("patientId")
    picks = []
    for label, count in ((OPACITY, 2), (NOT_NORMAL, 1), (NORMAL, 1)):
        ids = classes.index[classes == label]
        marked = [i for i in ids if markers.has_marker[i]]
        picks += (marked[:1] + [i for i in ids if i not in marked[:1]])[:count]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, patient_id in zip(axes, picks):
        pixels, header = read_dicom(phantom / IMAGES_DIR / f"{patient_id}.dcm")
        ax.imshow(pixels, cmap="gray", vmin=0, vmax=255)
        for box in labels[(labels.patientId == patient_id) & (labels.Target == 1)].itertuples():
            ax.add_patch(Rectangle((box.x, box.y), box.width, box.height, fill=False, color="red", lw=2))
        ax.set_title(f"{classes[patient_id]}\n{header['view_position']}, {header['sex']}, {header['age']} y",
                     fontsize=10)
        ax.axis("off")
    fig.suptitle("RSNA-format phantom (seed 0, marker confounder): red = RSNA-style opacity boxes")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    print(f"saved {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=48)
    parser.add_argument("--figure", type=Path, help="save the example montage here")
    args = parser.parse_args()
    bench_parts(args.patients)
    with tempfile.TemporaryDirectory() as tmp:
        one = bench_generate(args.patients, 1, Path(tmp) / "w1")
        two = bench_generate(args.patients, 2, Path(tmp) / "w2")
        print(f"speed-up with 2 workers: {one / two:.2f}x (on a machine shared with other work)")
        if args.figure:
            save_figure(Path(tmp) / "w1", args.figure)


if __name__ == "__main__":
    main()
