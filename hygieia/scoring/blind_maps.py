"""Box-blind heatmaps, the explanation columns' chance references.

A box-blind map is drawn without looking at the image: the same map for every image (uniform, a
Gaussian at the crop's centre, the training boxes' mean mask, all of it on that mask's peak), or one
per image predicted from the metadata by a regressor trained on the training boxes' positions. Each
explanation column's chance reference is the best fixed map's score on the split's positives, computed
by the column's own batched form (``hygieia.scoring.metrics``, ``ScoredSplit.box_blind``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression

from hygieia.boxes import box_mask

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
    return np.array([box_mask(box, shape) for box in predicted], dtype=np.float64)
