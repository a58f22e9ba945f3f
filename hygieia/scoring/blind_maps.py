"""Box-blind heatmaps, the explanation columns' chance references.

A box-blind map is drawn without looking at the image: the same map for every image (uniform, a
Gaussian at the crop's centre, the training boxes' mean mask, all of it on that mask's peak), or one
per image predicted from the metadata by a regressor trained on the training boxes' positions. Each
explanation column's chance reference is the best fixed map's score on the split's positives.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression

from hygieia.scoring import explanation as xp

CENTRE_SIGMA = 1 / 6   # of the image side


def fixed_maps(prior: np.ndarray) -> dict[str, np.ndarray]:
    """The fixed box-blind maps for images of the prior's shape."""
    height, width = prior.shape
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    sigma = CENTRE_SIGMA * min(height, width)
    peak = np.zeros(prior.shape)
    peak[np.unravel_index(np.argmax(prior), prior.shape)] = 1.0
    return {"uniform": np.ones(prior.shape),
            "centre Gaussian": np.exp(-((xx - width / 2) ** 2 + (yy - height / 2) ** 2) / (2 * sigma ** 2)),
            "box prior (mean mask)": prior.astype(np.float64),
            "box prior's peak": peak}


def fixed_map_scores(heatmap: np.ndarray, boxes: list[np.ndarray], prior: np.ndarray,
                     masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every explanation metric of one map used for every image with the given boxes, per image
    (the map's rectangle and components are found once; ``masks`` (N, H*W) may be given)."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if masks is None:
        masks = box_masks(boxes, heatmap.shape)
    rectangle = xp.rectangle_95(heatmap)
    flat = heatmap.ravel()
    inside = masks @ flat / flat.sum()
    return {"activation_in_box": inside,
            "activation_over_prior": inside - xp.prior_reference(prior),
            "iou_95": fixed_iou_95(rectangle, boxes),
            "cc_map": fixed_cc_map(heatmap, boxes),
            "pointing_game": masks[:, flat == flat.max()].mean(axis=1)}


def box_masks(boxes: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    return np.array([xp.box_mask(b, shape) for b in boxes], dtype=np.float64).reshape(len(boxes), -1)


def fixed_iou_95(rectangle, boxes: list[np.ndarray]) -> np.ndarray:
    """iou_95 of one 95% rectangle against each image's boxes (best-matching box per image)."""
    if rectangle is None or not boxes:
        return np.zeros(len(boxes))
    ious = xp.box_iou(xp.rectangle_to_box(rectangle), np.concatenate(boxes))[0]
    return np.maximum.reduceat(ious, np.cumsum([0] + [len(b) for b in boxes[:-1]]))


def fixed_cc_map(heatmap: np.ndarray, boxes: list[np.ndarray]) -> np.ndarray:
    """cc_map of one map against each image's boxes: images with the same number of boxes at once."""
    predicted, confidences, valid = xp.component_boxes_by_tau(heatmap)
    taus = len(predicted)
    result = np.zeros(len(boxes))
    counts = np.array([len(b) for b in boxes])
    for count in np.unique(counts):
        where = np.flatnonzero(counts == count)
        truth = np.repeat(np.stack([boxes[i] for i in where]), taus, axis=0)   # image-major, then tau
        scores = xp.rsna_scores(np.tile(predicted, (len(where), 1, 1)), np.tile(confidences, (len(where), 1)),
                                np.tile(valid, (len(where), 1)), truth)
        result[where] = scores.reshape(len(where), taus).mean(axis=1)
    return result


def blind_map_means(prior: np.ndarray, boxes: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """{map name: {metric: mean over the images with these boxes}} for every fixed box-blind map."""
    masks = box_masks(boxes, prior.shape)
    return {name: {k: float(v.mean()) if len(v) else 0.0
                   for k, v in fixed_map_scores(m, boxes, prior, masks).items()}
            for name, m in fixed_maps(prior).items()}


def best_blind_scores(means: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each metric's best score over the box-blind maps (``blind_map_means``)."""
    keys = next(iter(means.values())).keys()
    return {k: max(scores[k] for scores in means.values()) for k in keys}


def meta_features(meta: pd.DataFrame) -> np.ndarray:
    """Age and one-hot sex and view position: what a regressor may use without the image."""
    return np.column_stack([pd.to_numeric(meta["age"], errors="coerce").fillna(50).to_numpy() / 100,
                            meta["sex"].astype(str).eq("M"), meta["view_position"].astype(str).eq("AP")])


def box_regressor_maps(train_meta: pd.DataFrame, train_boxes: pd.DataFrame, meta: pd.DataFrame,
                       shape: tuple[int, int]) -> np.ndarray:
    """Per image, the mask of the box that a linear regressor from the metadata predicts, trained on
    the training boxes' positions (x, y, width, height): box-blind maps that differ per image."""
    features = meta_features(train_meta.loc[train_boxes["id"]])
    model = LinearRegression().fit(features, train_boxes[["x", "y", "width", "height"]].to_numpy())
    predicted = model.predict(meta_features(meta))
    predicted[:, 2:] = np.maximum(predicted[:, 2:], 1.0)
    return np.array([xp.box_mask(box, shape) for box in predicted], dtype=np.float64)
