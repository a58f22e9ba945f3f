"""Explanation metrics: how well one heatmap points at the opacity boxes of its image.

Conventions. A heatmap ``A`` is an (H, W) array of non-negative numbers at any positive scale; every
metric is invariant to multiplying it by a positive constant, and an all-zero map scores 0. Pixel
(i, j) covers [j, j+1) x [i, i+1) in image coordinates (x to the right, y down); it is inside a box
(x, y, width, height) when its centre (j+0.5, i+0.5) lies in [x, x+width) x [y, y+height). Boxes are
(K, 4) float arrays of x, y, width, height. Rectangles found on a map are (top, left, bottom, right)
pixel indices, bottom and right exclusive, i.e. the box [left, right) x [top, bottom).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

FRACTION_95 = 0.95
# Sums of many float16-derived values are rounded; "at least 95%" allows this much relative slack.
MASS_TOLERANCE = 1e-9
RECTANGLE_CHUNK = 64  # row pairs per numpy call in the 95% rectangle search
CC_TAUS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
CC_MIN_AREA = 0.01       # components smaller than this share of the image are dropped
CC_MAX_COMPONENTS = 4
RSNA_IOU_THRESHOLDS = tuple(np.round(np.arange(0.40, 0.751, 0.05), 2))
PLANES_8_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
PLANES_8_CONNECTED[1] = True  # 8-connected within a plane of a stack, never across planes


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
    """The share of the map's maximal pixels that lie inside the mask (0 for an all-zero map).

    With one maximum this is 1 or 0; ties share the credit, so a uniform map scores the mask's share
    of the image instead of 1."""
    peak = heatmap.max()
    if peak <= 0:
        return 0.0
    return float(mask[heatmap == peak].mean())


def prior_reference(prior: np.ndarray) -> float:
    """The best fixed map's expected activation_in_box: the box prior's peak value.

    For a map A fixed in advance, the mean of activation_in_box over images is Σ A·P / Σ A with P
    the mean box mask, at most max P (all of A on P's peak); the mean mask itself scores less."""
    return float(np.max(prior))


def activation_over_prior(heatmap: np.ndarray, mask: np.ndarray, prior: np.ndarray) -> float:
    """activation_in_box minus what the best box-blind fixed map scores on average
    (``prior_reference``): above 0 only for maps that use the image."""
    return activation_in_box(heatmap, mask) - prior_reference(prior)


def _narrowest_right(prefix: np.ndarray, target: float, lefts: int) -> np.ndarray:
    """For each row of prefix sums (P, W+1) with values in [0, 1] and each left column < ``lefts``,
    the smallest right column (exclusive) whose window holds ``target``; W+1 where none does.

    Shifting row k by 2k makes the whole table one sorted array, so one searchsorted answers every
    (row, left) query; a query that no window of its row satisfies lands in the next row (> W)."""
    rows, columns = prefix.shape
    shift = 2.0 * np.arange(rows)[:, None]
    found = np.searchsorted((prefix + shift).ravel(), (prefix[:, :lefts] + (target + shift)).ravel())
    return found.reshape(rows, lefts) - np.arange(rows)[:, None] * columns


@functools.lru_cache(maxsize=8)
def _row_pairs(height: int) -> tuple[np.ndarray, np.ndarray]:
    """All (top, bottom) row pairs, bottom exclusive, by increasing height then top (read-only)."""
    top, bottom = np.triu_indices(height + 1, k=1)
    order = np.lexsort((top, bottom - top))
    top, bottom = top[order], bottom[order]
    top.flags.writeable = bottom.flags.writeable = False
    return top, bottom


def rectangle_95(heatmap: np.ndarray, fraction: float = FRACTION_95) -> tuple[int, int, int, int] | None:
    """The smallest-area axis-aligned pixel rectangle holding at least ``fraction`` of the map's mass.

    Exact: for every pair of rows (top, bottom) that holds the target mass, the column sums are
    prefix-summed and, for every left column, the nearest right column reaching the target is found
    by binary search, many pairs per numpy call (O(H^2 W log W) at worst). Pairs are taken by
    increasing height and the search stops once height x (narrowest possible width) exceeds the best
    area found. Ties in area go to the larger mass, then the smaller top, left and bottom.
    None for an all-zero map.
    """
    a = np.asarray(heatmap, dtype=np.float64)
    total = a.sum()
    if total <= 0:
        return None
    a = a / total
    height, width = a.shape
    target = fraction - MASS_TOLERANCE
    row_prefix = np.concatenate([[0.0], np.cumsum(a.sum(axis=1))])
    top, bottom = _row_pairs(height)
    keep = row_prefix[bottom] - row_prefix[top] >= target
    top, bottom = top[keep], bottom[keep]
    column_prefix = np.vstack([np.zeros(width), np.cumsum(a, axis=0)])
    whole = np.concatenate([[0.0], np.cumsum(column_prefix[-1])])[None, :]
    # Left columns past ``lefts`` cannot start a rectangle: what lies right of them is under target.
    lefts = int(np.count_nonzero(1.0 - whole[0, :width] >= target))
    narrowest = int((_narrowest_right(whole, target, lefts) - np.arange(lefts)).min())
    best_area, found = height * width + 1, []
    for start in range(0, len(top), RECTANGLE_CHUNK):
        if (bottom[start] - top[start]) * narrowest > best_area:
            break  # every remaining pair is at least this tall
        chunk = slice(start, start + RECTANGLE_CHUNK)
        prefix = np.zeros((len(top[chunk]), width + 1))
        np.cumsum(column_prefix[bottom[chunk]] - column_prefix[top[chunk]], axis=1, out=prefix[:, 1:])
        right = _narrowest_right(prefix, target, lefts)
        area = np.where(right <= width, (bottom[chunk] - top[chunk])[:, None] * (right - np.arange(lefts)),
                        height * width + 1)
        if area.min() < best_area:
            best_area, found = area.min(), []
        if area.min() == best_area:
            pair, left = np.nonzero(area == best_area)
            right = right[pair, left]
            mass = np.round(prefix[pair, right] - prefix[pair, left], 9)
            found.append(np.stack([top[chunk][pair], left, bottom[chunk][pair], right, -mass]))
    candidates = np.concatenate(found, axis=1)
    best = np.lexsort((candidates[2], candidates[1], candidates[0], candidates[4]))[0]
    return tuple(int(v) for v in candidates[:4, best])


def rectangle_to_box(rectangle: tuple[int, int, int, int]) -> np.ndarray:
    """A (top, left, bottom, right) pixel rectangle as an (x, y, width, height) box."""
    top, left, bottom, right = rectangle
    return np.array([left, top, right - left, bottom - top], dtype=np.float64)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of two sets of (x, y, width, height) boxes: (len(a), len(b))."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    return broadcast_iou(a[:, None, :], b[None, :, :])


def broadcast_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of (x, y, width, height) boxes along the last axis, broadcast."""
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


def component_boxes_by_tau(heatmap: np.ndarray, taus=CC_TAUS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of the 8-connected regions where the map reaches tau x its maximum, for each tau.

    Regions under 1% of the image are dropped and at most the 4 heaviest are kept, heaviest first.
    All thresholds are labelled in one call, as planes of a stack that never connect to each other.
    Returns boxes (T, 4, 4) as x, y, width, height, masses (T, 4) and valid (T, 4): which slots hold
    a region.
    """
    taus = np.asarray(taus, dtype=np.float64)
    boxes = np.zeros((len(taus), CC_MAX_COMPONENTS, 4))
    masses = np.zeros((len(taus), CC_MAX_COMPONENTS))
    valid = np.zeros((len(taus), CC_MAX_COMPONENTS), dtype=bool)
    peak = heatmap.max()
    if peak <= 0:
        return boxes, masses, valid
    # Every region lies inside the lowest threshold's mask: label only that mask's bounding box.
    rows = np.flatnonzero((heatmap >= taus.min() * peak).any(axis=1))
    cols = np.flatnonzero((heatmap >= taus.min() * peak).any(axis=0))
    crop = heatmap[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    stack = crop[None] >= taus[:, None, None] * peak
    labels, count = ndimage.label(stack, structure=PLANES_8_CONNECTED)
    if count == 0:
        return boxes, masses, valid
    where = np.nonzero(stack)
    region = labels[where] - 1
    sizes = np.bincount(region, minlength=count)
    mass = np.bincount(region, weights=crop[where[1], where[2]], minlength=count)
    # plane, top, bottom, left, right of each region, in the whole map's pixels
    extent = np.array([[s[0].start, s[1].start, s[1].stop, s[2].start, s[2].stop]
                       for s in ndimage.find_objects(labels)]) + [0, rows[0], rows[0], cols[0], cols[0]]
    big = np.flatnonzero(sizes >= CC_MIN_AREA * heatmap.size)
    order = big[np.lexsort((big, -mass[big], extent[big, 0]))]  # by plane, then heaviest first
    plane = extent[order, 0]
    rank = np.arange(len(order)) - np.searchsorted(plane, plane)  # position within its plane
    keep = rank < CC_MAX_COMPONENTS
    order, plane, rank = order[keep], plane[keep], rank[keep]
    top, bottom, left, right = extent[order, 1:].T
    boxes[plane, rank] = np.stack([left, top, right - left, bottom - top], axis=1)
    masses[plane, rank] = mass[order]
    valid[plane, rank] = True
    return boxes, masses, valid


def component_boxes(heatmap: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """The component boxes (K, 4) and masses (K,) of one threshold tau (see component_boxes_by_tau)."""
    boxes, masses, valid = component_boxes_by_tau(heatmap, [tau])
    return boxes[0][valid[0]], masses[0][valid[0]]


def rsna_scores(predicted: np.ndarray, confidences: np.ndarray, valid: np.ndarray, truth: np.ndarray,
                thresholds=RSNA_IOU_THRESHOLDS) -> np.ndarray:
    """The RSNA Pneumonia Detection Challenge's per-image score of P sets of predicted boxes against
    one image's ground truth: for each set, the mean over IoU thresholds of TP / (TP + FP + FN),
    predictions taken in decreasing confidence, each matched to the unmatched ground-truth box of
    highest IoU when that IoU exceeds the threshold.

    predicted (P, K, 4), confidences (P, K), valid (P, K) (which slots hold a box), truth (G, 4), or
    (P, G, 4) for one ground truth per set.
    """
    truth = np.asarray(truth, dtype=np.float64)
    n_truth = truth.shape[-2]
    if n_truth == 0:
        raise ValueError("the RSNA image score needs at least one ground-truth box")
    sets, slots = valid.shape
    order = np.argsort(np.where(valid, -np.asarray(confidences, dtype=np.float64), np.inf), axis=1,
                       kind="stable")
    valid = np.take_along_axis(valid, order, axis=1)
    predicted = np.take_along_axis(np.asarray(predicted, dtype=np.float64), order[..., None], axis=1)
    if truth.ndim == 2:
        ious = box_iou(predicted.reshape(-1, 4), truth).reshape(sets, slots, n_truth)
    else:  # one ground truth per set: (P, G, 4)
        ious = broadcast_iou(predicted[:, :, None, :], truth[:, None, :, :])
    thresholds = np.asarray(thresholds, dtype=np.float64)
    matched = np.zeros((sets, len(thresholds), n_truth), dtype=bool)  # a greedy matching per threshold
    tp = np.zeros((sets, len(thresholds)))
    for slot in range(slots):
        candidates = np.where(matched, -1.0, ious[:, None, slot, :])
        best = candidates.argmax(axis=2)
        best_iou = np.take_along_axis(candidates, best[..., None], axis=2)[..., 0]
        hit = (best_iou > thresholds) & valid[:, slot, None]
        where_set, where_threshold = np.nonzero(hit)
        matched[where_set, where_threshold, best[hit]] = True
        tp += hit
    fp = valid.sum(axis=1)[:, None] - tp
    fn = n_truth - tp
    return (tp / (tp + fp + fn)).mean(axis=1)


def rsna_image_score(predicted: np.ndarray, confidences, truth: np.ndarray,
                     thresholds=RSNA_IOU_THRESHOLDS) -> float:
    """The RSNA per-image score of one set of predicted (K, 4) boxes (see rsna_scores)."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(1, -1, 4)
    valid = np.ones(predicted.shape[:2], dtype=bool)
    return float(rsna_scores(predicted, np.reshape(confidences, valid.shape), valid, truth, thresholds)[0])


def cc_map_by_tau(heatmap: np.ndarray, boxes: np.ndarray, taus=CC_TAUS) -> np.ndarray:
    """RSNA per-image score of the connected-component boxes, for each threshold tau: (len(taus),)."""
    return rsna_scores(*component_boxes_by_tau(heatmap, taus), boxes)


def explain_image(heatmap: np.ndarray, boxes: np.ndarray, prior: np.ndarray | None = None) -> dict:
    """Every explanation metric of one true-positive image, plus the shapes the report draws;
    ``activation_over_prior`` needs the box ``prior`` (None without it)."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    mask = box_mask(boxes, heatmap.shape)
    rectangle = rectangle_95(heatmap)
    by_tau = cc_map_by_tau(heatmap, boxes)
    inside = activation_in_box(heatmap, mask)
    box_share = float(mask.mean())
    return {
        "activation_in_box": inside,
        "activation_over_prior": inside - prior_reference(prior) if prior is not None else None,
        "iou_95": iou_95(heatmap, boxes, rectangle),
        "cc_map": float(by_tau.mean()),
        "pointing_game": pointing_game(heatmap, mask),
        "cc_map_by_tau": by_tau.tolist(),
        "box_share": box_share,
        "enrichment": inside / box_share if box_share > 0 else None,
        "rectangle_95": list(rectangle) if rectangle is not None else None,
        "all_zero": not heatmap.max() > 0,
    }
