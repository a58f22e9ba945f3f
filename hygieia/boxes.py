"""Box geometry in image pixels, shared by prepare, scoring and the experiment.

Conventions. Boxes are (K, 4) float arrays of x, y, width, height (x to the right, y down, origin at the
top-left corner of the top-left pixel). Pixel (i, j) covers [j, j+1) x [i, i+1); it is inside a box when
its centre (j+0.5, i+0.5) lies in [x, x+width) x [y, y+height). Rectangles found on a map are (top, left,
bottom, right) pixel indices, bottom and right exclusive, i.e. the box [left, right) x [top, bottom).
Windows are squares (x0, y0, side) with integer corners.
"""

from __future__ import annotations

import numpy as np


def as_boxes(boxes) -> np.ndarray:
    """``boxes`` as a (K, 4) float64 array."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def box_masks(boxes_per_image, shape: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool: for each image, the union mask of its boxes, the pixels whose centre lies inside
    at least one of them."""
    height, width = shape
    boxes = [as_boxes(b) for b in boxes_per_image]
    counts = np.array([len(b) for b in boxes], dtype=int)
    masks = np.zeros((len(boxes), height, width), dtype=bool)
    if not counts.sum():
        return masks
    x, y, w, h = np.concatenate(boxes).T[:, :, None]
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    rows, cols = (ys >= y) & (ys < y + h), (xs >= x) & (xs < x + w)          # (K, H), (K, W)
    owner = np.repeat(np.arange(len(boxes)), counts)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)  # a box's place in its image
    for r in range(counts.max()):  # each image at most once per pass
        pick = rank == r
        masks[owner[pick]] |= rows[pick, :, None] & cols[pick, None, :]
    return masks


def box_mask(boxes, shape: tuple[int, int]) -> np.ndarray:
    """Union mask (H, W) of one image's boxes (``box_masks``)."""
    return box_masks([boxes], shape)[0]


def mass_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's total mass that lies in its mask, Σ A·M / Σ A, over the last two axes
    (maps and masks broadcast; one (H, W) map against (N, H, W) masks is one matrix product); 0 for an
    all-zero map."""
    maps = np.asarray(maps, dtype=np.float64)
    total = maps.sum(axis=(-2, -1))
    if maps.ndim == 2 and np.ndim(masks) == 3:
        inside = np.reshape(masks, (len(masks), -1)) @ maps.ravel()
    else:
        inside = (maps * masks).sum(axis=(-2, -1))
    return np.divide(inside, total, out=np.zeros(np.shape(inside)), where=total > 0)


def rectangle_to_box(rectangle: tuple[int, int, int, int]) -> np.ndarray:
    """A (top, left, bottom, right) pixel rectangle as an (x, y, width, height) box."""
    top, left, bottom, right = rectangle
    return np.array([left, top, right - left, bottom - top], dtype=np.float64)


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """Pairwise intersection over union of two sets of boxes: (len(a), len(b))."""
    return broadcast_iou(as_boxes(boxes_a)[:, None, :], as_boxes(boxes_b)[None, :, :])


def broadcast_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of (x, y, width, height) boxes along the last axis, broadcast."""
    overlap_w = np.clip(np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2])
                        - np.maximum(a[..., 0], b[..., 0]), 0, None)
    overlap_h = np.clip(np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3])
                        - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = overlap_w * overlap_h
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def boxes_in_window(boxes, window: tuple[int, int, int], size: int) -> np.ndarray:
    """The boxes (K, 4) that overlap ``window``, clipped to it and mapped to the pixels of its
    ``size``×``size`` resized crop. Returns (M, 4) float64, M <= K."""
    boxes = as_boxes(boxes)
    x0, y0, side = window
    left = np.clip(boxes[:, 0], x0, x0 + side)
    top = np.clip(boxes[:, 1], y0, y0 + side)
    right = np.clip(boxes[:, 0] + boxes[:, 2], x0, x0 + side)
    bottom = np.clip(boxes[:, 1] + boxes[:, 3], y0, y0 + side)
    keep = (right > left) & (bottom > top)
    scale = size / side
    return np.stack([(left - x0) * scale, (top - y0) * scale,
                     (right - left) * scale, (bottom - top) * scale], axis=1)[keep]


def scale_boxes(boxes, image_shape: tuple[int, int], size: int) -> np.ndarray:
    """Boxes of an (H, W) image mapped to the same image resized to ``size``×``size``."""
    height, width = image_shape
    return as_boxes(boxes) * np.array([size / width, size / height, size / width, size / height])
