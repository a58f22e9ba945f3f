"""Figures for the starting kit's notebook: crops with their boxes, metadata, Grad-CAM overlays."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

BOX_COLOR = "red"
RECTANGLE_COLOR = "orange"


def draw_boxes(ax, boxes: np.ndarray, color: str = BOX_COLOR) -> None:
    """Outline (x, y, width, height) boxes, in pixels of the image shown on ``ax``."""
    for x, y, width, height in np.asarray(boxes, dtype=float).reshape(-1, 4):
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), width, height, fill=False, edgecolor=color, linewidth=1.5))


def show_crops(X: dict, per_class: int = 6, seed: int = 0):
    """A row of opacity crops with their boxes over a row of normal crops, picked at random."""
    from hygieia.dataset import boxes_by_id

    rng = np.random.default_rng(seed)
    boxes = boxes_by_id(X["boxes"])
    fig, axes = plt.subplots(2, per_class, figsize=(2 * per_class, 4.8), squeeze=False)
    for row, (label, name) in enumerate([(1, "opacity"), (0, "normal")]):
        candidates = np.flatnonzero(X["labels"] == label)
        chosen = rng.choice(candidates, size=min(per_class, len(candidates)), replace=False)
        for ax in axes[row]:
            ax.axis("off")
        for ax, index in zip(axes[row], sorted(chosen)):
            key = X["ids"][index]
            ax.imshow(X["images"][index], cmap="gray", vmin=0, vmax=255)
            draw_boxes(ax, boxes.get(key, np.zeros((0, 4))))
            ax.set_title(f"{name}\n{key}", fontsize=8)
    fig.suptitle("Training crops; red: the radiologists' opacity boxes", fontsize=10)
    fig.tight_layout()
    return fig


def show_metadata(splits: dict):
    """Sex and age of every split, side by side."""
    meta = pd.concat({split: X["meta"] for split, X in splits.items()}, names=["split", "id"]).reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    shares = pd.crosstab(meta["split"], meta["sex"], normalize="index").reindex(list(splits))
    shares.plot.bar(ax=axes[0], rot=0)
    axes[0].set_ylim(0, 1.15)
    axes[0].legend(ncol=len(shares.columns), loc="upper center", fontsize=8)
    axes[0].set_ylabel("share of the split")
    axes[0].set_title("sex")
    for split in splits:
        axes[1].hist(meta.loc[meta["split"] == split, "age"], bins=range(0, 101, 5), histtype="step",
                     density=True, linewidth=1.5, label=split)
    axes[1].set_xlabel("age (years)")
    axes[1].set_title("age")
    axes[1].legend()
    fig.tight_layout()
    return fig


def show_explanations(images: np.ndarray, heatmaps: np.ndarray, boxes: list[np.ndarray],
                      results: list[dict], titles: list[str], columns: int = 6):
    """Each image with its heatmap, its true boxes (red) and its 95% rectangle (orange)."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, heatmap, truth, result, title in zip(axes.ravel(), images, heatmaps, boxes, results, titles):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.imshow(heatmap, cmap="jet", alpha=0.45)
        draw_boxes(ax, truth)
        if result["rectangle_95"] is not None:
            top, left, bottom, right = result["rectangle_95"]
            draw_boxes(ax, [[left, top, right - left, bottom - top]], RECTANGLE_COLOR)
        ax.set_title(f"{title}\nin box {result['activation_in_box']:.2f}  IoU {result['iou_95']:.2f}", fontsize=8)
    fig.suptitle("Grad-CAM of true positives; red: hidden boxes, orange: 95% rectangle", fontsize=10)
    fig.tight_layout()
    return fig


def show_metric_histograms(table: pd.DataFrame, columns: list[str]):
    """One histogram per explanation metric, over the explained images."""
    fig, axes = plt.subplots(1, len(columns), figsize=(3.4 * len(columns), 2.8), squeeze=False)
    for ax, column in zip(axes[0], columns):
        ax.hist(table[column], bins=np.linspace(0, 1, 11))
        ax.set_title(f"{column} (mean {table[column].mean():.2f})", fontsize=9)
        ax.set_xlim(0, 1)
    axes[0][0].set_ylabel("true positives")
    fig.tight_layout()
    return fig


def show_folds(results: dict[str, pd.DataFrame], columns: list[str]):
    """Cross-validation: each fold's score (dots) and the mean ± sd (bar) per model, one panel per metric."""
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.2), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for position, (name, folds) in enumerate(results.items()):
            values = folds[column].to_numpy(dtype=float)
            ax.errorbar(position, values.mean(), yerr=values.std(ddof=1) if len(values) > 1 else 0,
                        fmt="s", color="black", capsize=6, zorder=3)
            ax.scatter(np.full(len(values), position) + np.linspace(-0.15, 0.15, len(values)), values,
                       alpha=0.7, zorder=2)
        ax.set_xticks(range(len(results)), list(results), fontsize=8)
        ax.set_xlim(-0.6, len(results) - 0.4)
        ax.set_ylim(0, 1.02)
        ax.set_title(column, fontsize=9)
    fig.suptitle("Cross-validation: each fold (dots), mean ± sd (black)", fontsize=10)
    fig.tight_layout()
    return fig


def show_heatmaps(images: np.ndarray, heatmaps: np.ndarray, masks: np.ndarray, title: str):
    """Crops with a heatmap over them and the outline of their box mask (red)."""
    fig, axes = plt.subplots(1, max(1, len(images)), figsize=(2.2 * max(1, len(images)), 2.6), squeeze=False)
    for ax in axes[0]:
        ax.axis("off")
    for ax, image, heatmap, mask in zip(axes[0], images, heatmaps, masks):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.imshow(heatmap, cmap="jet", alpha=0.45)
        ax.contour(mask, levels=[0.5], colors=BOX_COLOR, linewidths=1.2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
