"""Explanation metrics: how well one heatmap points at the opacity boxes of its image.

Conventions. A heatmap ``A`` is an (H, W) array of non-negative numbers at any positive scale; every
metric is invariant to multiplying it by a positive constant, and an all-zero map scores 0. Pixel
(i, j) covers [j, j+1) x [i, i+1) in image coordinates (x to the right, y down); it is inside a box
(x, y, width, height) when its centre (j+0.5, i+0.5) lies in [x, x+width) x [y, y+height). Boxes are
(K, 4) float arrays of x, y, width, height. Rectangles found on a map are (top, left, bottom, right)
pixel indices, bottom and right exclusive, i.e. the box [left, right) x [top, bottom).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FRACTION_95 = 0.95
# Sums of many float16-derived values are rounded; "at least 95%" allows this much relative slack.
MASS_TOLERANCE = 1e-9
CC_TAUS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
CC_MIN_AREA = 0.01       # components smaller than this share of the image are dropped
CC_MAX_COMPONENTS = 4
RSNA_IOU_THRESHOLDS = tuple(np.round(np.arange(0.40, 0.751, 0.05), 2))
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def box_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Union mask (H, W) of the boxes: pixels whose centre lies inside at least one box."""
    height, width = shape
    ys = np.arange(height) + 0.5
    xs = np.arange(width) + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        rows = (ys >= y) & (ys < y + h)
        cols = (xs >= x) & (xs < x + w)
        mask |= rows[:, None] & cols[None, :]
    return mask


def activation_in_box(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total activation that falls inside the boxes' mask (0 for an all-zero map)."""
    total = float(heatmap.sum())
    return float(heatmap[mask].sum()) / total if total > 0 else 0.0


def pointing_game(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """1 if a maximal pixel of the map lies inside the mask, else 0 (0 for an all-zero map)."""
    peak = heatmap.max()
    if peak <= 0:
        return 0.0
    return float(np.any(mask & (heatmap == peak)))


def rectangle_95(heatmap: np.ndarray, fraction: float = FRACTION_95) -> tuple[int, int, int, int] | None:
    """The smallest-area axis-aligned pixel rectangle holding at least ``fraction`` of the map's mass.

    Exact: for every pair of rows (top, bottom) the column sums are prefix-summed and, for every left
    column, the nearest right column reaching the target is found by binary search, all pairs at once
    (O(H^2 W log W) work in a few numpy calls). Only row pairs that hold the target mass are tried.
    Ties in area go to the larger mass, then the smaller top, left and bottom. None for an all-zero map.
    """
    a = np.asarray(heatmap, dtype=np.float64)
    total = a.sum()
    if total <= 0:
        return None
    a = a / total
    height, width = a.shape
    target = fraction - MASS_TOLERANCE
    row_prefix = np.concatenate([[0.0], np.cumsum(a.sum(axis=1))])
    top, bottom = np.triu_indices(height + 1, k=1)
    keep = row_prefix[bottom] - row_prefix[top] >= target
    top, bottom = top[keep], bottom[keep]
    column_prefix = np.vstack([np.zeros(width), np.cumsum(a, axis=0)])
    prefix = np.zeros((len(top), width + 1))
    np.cumsum(column_prefix[bottom] - column_prefix[top], axis=1, out=prefix[:, 1:])
    # Each pair's prefix row lies in [0, 1]; shifting row k by 2k makes the whole table one sorted
    # array, so one searchsorted answers every (pair, left) query; a miss lands in the next row.
    shift = 2.0 * np.arange(len(top))[:, None]
    flat = (prefix + shift).ravel()
    found = np.searchsorted(flat, (prefix[:, :width] + target + shift).ravel())
    right = found.reshape(len(top), width) - np.arange(len(top))[:, None] * (width + 1)
    pair, left = np.nonzero(right <= width)
    right = right[pair, left]
    area = (bottom[pair] - top[pair]) * (right - left)
    mass = prefix[pair, right] - prefix[pair, left]
    best = np.lexsort((bottom[pair], left, top[pair], -mass, area))[0]
    return int(top[pair[best]]), int(left[best]), int(bottom[pair[best]]), int(right[best])


def rectangle_to_box(rectangle: tuple[int, int, int, int]) -> np.ndarray:
    """A (top, left, bottom, right) pixel rectangle as an (x, y, width, height) box."""
    top, left, bottom, right = rectangle
    return np.array([left, top, right - left, bottom - top], dtype=np.float64)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of two sets of (x, y, width, height) boxes: (len(a), len(b))."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)[None, :, :]
    overlap_w = np.clip(np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2])
                        - np.maximum(a[..., 0], b[..., 0]), 0, None)
    overlap_h = np.clip(np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3])
                        - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = overlap_w * overlap_h
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def iou_95(heatmap: np.ndarray, boxes: np.ndarray,
           rectangle: tuple[int, int, int, int] | None = None) -> float:
    """IoU of the 95% rectangle (pixel rectangle as a box) with the best-matching ground-truth box."""
    if rectangle is None:
        rectangle = rectangle_95(heatmap)
    if rectangle is None or len(boxes) == 0:
        return 0.0
    return float(box_iou(rectangle_to_box(rectangle), boxes).max())


def component_boxes(heatmap: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the 8-connected regions where the map reaches ``tau`` x its maximum, and their masses.

    Regions under 1% of the image are dropped and at most the 4 heaviest are kept, heaviest first.
    Returns ((K, 4) boxes x, y, width, height; (K,) masses).
    """
    peak = heatmap.max()
    if peak <= 0:
        return np.zeros((0, 4)), np.zeros(0)
    labels, count = ndimage.label(heatmap >= tau * peak, structure=EIGHT_CONNECTED)
    if count == 0:
        return np.zeros((0, 4)), np.zeros(0)
    index = np.arange(1, count + 1)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    masses = np.bincount(labels.ravel(), weights=heatmap.ravel(), minlength=count + 1)[1:]
    kept = index[sizes >= CC_MIN_AREA * heatmap.size]
    kept = kept[np.lexsort((kept, -masses[kept - 1]))][:CC_MAX_COMPONENTS]
    slices = ndimage.find_objects(labels)
    boxes = np.array([[s[1].start, s[0].start, s[1].stop - s[1].start, s[0].stop - s[0].start]
                      for s in (slices[k - 1] for k in kept)], dtype=np.float64).reshape(-1, 4)
    return boxes, masses[kept - 1]


def rsna_image_score(predicted: np.ndarray, confidences: np.ndarray, truth: np.ndarray,
                     thresholds=RSNA_IOU_THRESHOLDS) -> float:
    """The RSNA Pneumonia Detection Challenge's per-image score: the mean over IoU thresholds of
    TP / (TP + FP + FN), predictions taken in decreasing confidence, each matched to the unmatched
    ground-truth box of highest IoU when that IoU exceeds the threshold."""
    if len(truth) == 0:
        raise ValueError("the RSNA image score needs at least one ground-truth box")
    order = np.argsort(-np.asarray(confidences), kind="stable")
    ious = box_iou(np.asarray(predicted).reshape(-1, 4)[order], truth)
    scores = []
    for threshold in thresholds:
        matched = np.zeros(len(truth), dtype=bool)
        tp = 0
        for row in ious:
            candidates = np.where(matched, -1.0, row)
            best = int(np.argmax(candidates))
            if candidates[best] > threshold:
                matched[best] = True
                tp += 1
        fp = len(ious) - tp
        fn = len(truth) - tp
        scores.append(tp / (tp + fp + fn))
    return float(np.mean(scores))


def cc_map_by_tau(heatmap: np.ndarray, boxes: np.ndarray, taus=CC_TAUS) -> np.ndarray:
    """RSNA per-image score of the connected-component boxes, for each threshold tau: (len(taus),)."""
    return np.array([rsna_image_score(*component_boxes(heatmap, tau), boxes) for tau in taus])


def explain_image(heatmap: np.ndarray, boxes: np.ndarray) -> dict:
    """Every explanation metric of one true-positive image, plus the shapes the report draws."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    mask = box_mask(boxes, heatmap.shape)
    rectangle = rectangle_95(heatmap)
    by_tau = cc_map_by_tau(heatmap, boxes)
    inside = activation_in_box(heatmap, mask)
    box_share = float(mask.mean())
    return {
        "activation_in_box": inside,
        "iou_95": iou_95(heatmap, boxes, rectangle),
        "cc_map": float(by_tau.mean()),
        "pointing_game": pointing_game(heatmap, mask),
        "cc_map_by_tau": by_tau.tolist(),
        "box_share": box_share,
        "enrichment": inside / box_share if box_share > 0 else None,
        "rectangle_95": list(rectangle) if rectangle is not None else None,
    }
