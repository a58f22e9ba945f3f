"""The best box-blind map: the mean box mask of the training boxes, and what it scores on hidden boxes.

If windows placed their box predictably (say, always around the centre), this fixed map would score
far above the boxes' share of the window; ``prepare`` places windows so that it does not.
"""

from __future__ import annotations

import numpy as np

from hygieia.boxes import box_mask, mass_share


def box_prior(boxes_per_image: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32: the share of images whose boxes cover each pixel (scoring's pixel-centre rule)."""
    if not boxes_per_image:
        return np.full(shape, 1.0 / (shape[0] * shape[1]), np.float32)  # no box known: uniform
    total = np.zeros(shape, np.float64)
    for boxes in boxes_per_image:
        total += box_mask(boxes, shape)
    return (total / len(boxes_per_image)).astype(np.float32)


def prior_scores(prior: np.ndarray, boxes_per_image: list[np.ndarray]) -> dict:
    """Mean activation_in_box of ``prior`` over the images, their mean box share, and the ratio."""
    if not boxes_per_image:
        return {"images": 0, "activation_in_box": None, "box_share": None, "ratio": None}
    masks = [box_mask(boxes, prior.shape) for boxes in boxes_per_image]
    inside = float(np.mean([mass_share(prior, mask) for mask in masks]))
    share = float(np.mean([mask.mean() for mask in masks]))
    return {"images": len(masks), "activation_in_box": round(inside, 4), "box_share": round(share, 4),
            "ratio": round(inside / share, 3) if share > 0 else None}
