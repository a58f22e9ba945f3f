"""Draw Hygieia's logo (logo.png): two lungs, a heatmap on an opacity, its box, and the name.

    python tools/make_logo.py [OUT.png]

Deterministic: the same matplotlib version gives the same bytes (no timestamp in the PNG).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyBboxPatch, PathPatch, Rectangle  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402

BACKGROUND = "#0d2233"
LUNG = "#9fb8c8"
BOX = "#ff5a4e"
TEXT = "#f2f5f7"


def lung(side: int) -> MplPath:
    """One lung as a closed Bezier outline; side = -1 (image left) or +1 (image right)."""
    s = side
    points = [(0.06 * s, 0.80), (0.26 * s, 0.92), (0.44 * s, 0.45), (0.41 * s, 0.20),
              (0.28 * s, 0.24), (0.12 * s, 0.20), (0.05 * s, 0.30), (0.06 * s, 0.80)]
    codes = [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4,
             MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4, MplPath.CLOSEPOLY]
    return MplPath([(0.5 + x, y) for x, y in points], codes)


def heatmap(ax, centre, radius) -> None:
    """A soft warm blob (the explanation) clipped to nothing: drawn with alpha from a Gaussian."""
    n = 200
    yy, xx = np.mgrid[0:1:n * 1j, 0:1:n * 1j]
    blob = np.exp(-(((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * radius ** 2)))
    rgba = plt.get_cmap("inferno")(0.45 + 0.55 * blob)
    rgba[..., 3] = 0.9 * blob
    ax.imshow(rgba, extent=(0, 1, 0, 1), origin="lower", zorder=3, interpolation="bilinear")


def draw(out: Path) -> None:
    fig = plt.figure(figsize=(4, 4), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.add_patch(FancyBboxPatch((0.02, 0.02), 0.96, 0.96, boxstyle="round,pad=0,rounding_size=0.08",
                                facecolor=BACKGROUND, edgecolor="none", zorder=0))
    for side in (-1, 1):
        ax.add_patch(PathPatch(lung(side), facecolor=LUNG, edgecolor="white", linewidth=1.5,
                               alpha=0.85, zorder=1))
    ax.plot([0.5, 0.5], [0.60, 0.88], color=LUNG, linewidth=7, solid_capstyle="round", zorder=1)  # trachea
    for side in (-1, 1):  # main bronchi
        ax.plot([0.5, 0.5 + 0.09 * side], [0.61, 0.53], color=LUNG, linewidth=6,
                solid_capstyle="round", zorder=1)
    heatmap(ax, centre=(0.70, 0.42), radius=0.07)
    ax.add_patch(Rectangle((0.59, 0.31), 0.22, 0.23, fill=False, edgecolor=BOX, linewidth=2.5,
                           linestyle=(0, (4, 2)), zorder=4))
    ax.text(0.5, 0.085, "HYGIEIA", color=TEXT, ha="center", va="center", fontsize=30,
            fontweight="bold", family="DejaVu Sans", zorder=5)
    fig.savefig(out, dpi=100, transparent=True, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "logo.png"
    draw(target)
    print(f"wrote {target}")
