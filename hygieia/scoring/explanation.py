"""Explanation metrics: how well heatmaps point at the opacity boxes of their images.

Every metric is computed in one batched form, on ``Maps``: heatmaps with the boxes of the N images they
explain, one map per image (a submission's maps of its true positives) or one map for every image (a
box-blind map, the chance reference; its rectangle and components are then found once). Each returns
one value per image; the metric table (``hygieia.scoring.metrics``) averages them.

Conventions. A heatmap ``A`` is an (H, W) array of non-negative numbers at any positive scale; every
metric is invariant to multiplying it by a positive constant, and an all-zero map scores 0. Boxes,
masks and pixel rectangles follow ``hygieia.boxes``.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from hygieia.boxes import as_boxes, box_masks, broadcast_iou, mass_share, rectangle_to_box

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


class Maps:
    """Heatmaps and the boxes of the N images they explain: ``maps`` (N, H, W), one per image, or one
    (H, W) map for every image; ``boxes`` N arrays (K, 4); ``prior`` the box prior, for the metrics
    that need it. What several metrics share (masks, 95% rectangles, components) is found once, with a
    progress bar on stderr when ``progress``."""

    def __init__(self, maps, boxes, prior: np.ndarray | None = None, progress: bool = False):
        maps = np.asarray(maps, dtype=np.float64)
        self.maps = maps[None] if maps.ndim == 2 else maps
        self.boxes = [as_boxes(b) for b in boxes]
        if self.maps.ndim != 3 or len(self.maps) not in (1, len(self.boxes)):
            raise ValueError(f"Maps: maps of shape {maps.shape} for {len(self.boxes)} images; expected one "
                             "(H, W) map for all, or (N, H, W)")
        self.prior, self.progress = prior, progress
        self.shape = self.maps.shape[1:]
        # which map explains each image
        self.owner = np.arange(len(self.boxes)) if len(self.maps) == len(self.boxes) else np.zeros(len(self.boxes), int)
        self._scores = {}

    def __len__(self) -> int:
        return len(self.boxes)

    def score(self, measure) -> np.ndarray:
        """``measure(self)``, one value per image, computed once."""
        if measure not in self._scores:
            self._scores[measure] = measure(self)
        return self._scores[measure]

    @functools.cached_property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool: each image's box mask."""
        return box_masks(self.boxes, self.shape)

    @functools.cached_property
    def rectangles(self) -> list:
        """Each map's 95% rectangle (``rectangle_95``), or None for an all-zero map."""
        return [rectangle_95(m) for m in self._each("95% rectangles")]

    @functools.cached_property
    def components(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each map's component boxes by tau (``component_boxes_by_tau``), stacked: (M, T, 4, 4),
        (M, T, 4), (M, T, 4)."""
        found = [component_boxes_by_tau(m) for m in self._each("connected components")]
        return tuple(np.stack(parts) for parts in zip(*found))

    def _each(self, what: str):
        return tqdm(self.maps, desc=what, unit="map", disable=not self.progress or len(self.maps) < 2,
                    file=sys.stderr)


def activation_in_box(maps: Maps) -> np.ndarray:
    """Share of each map's total activation that falls inside its image's boxes, Σ A·M / Σ A
    (Arras et al. 2022's relevance mass accuracy)."""
    return mass_share(maps.maps[0] if len(maps.maps) == 1 else maps.maps, maps.masks)


def prior_reference(prior: np.ndarray) -> float:
    """The best fixed map's expected activation_in_box: the box prior's peak value.

    For a map A fixed in advance, the mean of activation_in_box over images is Σ A·P / Σ A with P
    the mean box mask, at most max P (all of A on P's peak); the mean mask itself scores less."""
    return float(np.max(prior))


def activation_over_prior(maps: Maps) -> np.ndarray:
    """activation_in_box minus what the best box-blind fixed map scores on average
    (``prior_reference``): above 0 only for maps that use the image. NaN without a prior."""
    if maps.prior is None:
        return np.full(len(maps), np.nan)
    return maps.score(activation_in_box) - prior_reference(maps.prior)


def pointing_game(maps: Maps) -> np.ndarray:
    """The share of each map's maximal pixels that lie inside its image's boxes (Zhang et al. 2018).

    With one maximum this is 1 or 0; ties share the credit, so a uniform map scores the mask's share
    of the image instead of 1."""
    peak = maps.maps.max(axis=(1, 2), keepdims=True)
    at_peak = maps.maps == peak
    hits = (maps.masks & at_peak).sum(axis=(1, 2))
    return np.where(peak[:, 0, 0] > 0, hits / at_peak.sum(axis=(1, 2)), 0.0)


def iou_95(maps: Maps) -> np.ndarray:
    """IoU of each map's 95% rectangle (as a box) with the best-matching box of its image (Chen et al.
    2019's protocol); 0 for an all-zero map."""
    result = np.zeros(len(maps))
    counts = np.array([len(b) for b in maps.boxes], dtype=int)
    where = [i for i, k in enumerate(maps.owner) if maps.rectangles[k] is not None and counts[i]]
    if not where:
        return result
    rectangles = np.array([rectangle_to_box(maps.rectangles[maps.owner[i]]) for i in where])
    ious = broadcast_iou(np.repeat(rectangles, counts[where], axis=0), np.concatenate([maps.boxes[i] for i in where]))
    result[where] = np.maximum.reduceat(ious, np.cumsum(counts[where]) - counts[where])
    return result


def cc_map_by_tau(maps: Maps) -> np.ndarray:
    """(N, T): the RSNA challenge's per-image score of each map's connected-component boxes against
    its image's boxes, for each threshold tau; images with the same number of boxes at once."""
    predicted, confidences, valid = maps.components
    taus, slots = valid.shape[1:]
    result = np.zeros((len(maps), taus))
    counts = np.array([len(b) for b in maps.boxes])
    for count in np.unique(counts):
        where = np.flatnonzero(counts == count)
        owner = maps.owner[where]
        truth = np.repeat(np.stack([maps.boxes[i] for i in where]), taus, axis=0)  # image-major, then tau
        scores = rsna_scores(predicted[owner].reshape(-1, slots, 4), confidences[owner].reshape(-1, slots),
                             valid[owner].reshape(-1, slots), truth)
        result[where] = scores.reshape(len(where), taus)
    return result


def cc_map(maps: Maps) -> np.ndarray:
    """``cc_map_by_tau`` averaged over the thresholds tau."""
    return maps.score(cc_map_by_tau).mean(axis=1)


def details(maps: Maps) -> dict[str, list]:
    """What the report draws and counts for each image, besides the metrics: the share of the image its
    boxes cover, the enrichment (activation_in_box / that share), the 95% rectangle, whether the map
    is all zero, and cc_map per tau."""
    share = maps.masks.mean(axis=(1, 2))
    inside = maps.score(activation_in_box)
    return {"box_share": share.tolist(),
            "enrichment": [float(a / s) if s > 0 else None for a, s in zip(inside, share)],
            "rectangle_95": [None if maps.rectangles[k] is None else list(maps.rectangles[k]) for k in maps.owner],
            "all_zero": [not maps.maps[k].max() > 0 for k in maps.owner],
            "cc_map_by_tau": maps.score(cc_map_by_tau).tolist()}


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

    predicted (P, K, 4), confidences (P, K), valid (P, K) (which slots hold a box), truth (P, G, 4):
    the ground truth of each set.
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
    truth = as_boxes(truth)[None]
    return float(rsna_scores(predicted, np.reshape(confidences, valid.shape), valid, truth, thresholds)[0])
