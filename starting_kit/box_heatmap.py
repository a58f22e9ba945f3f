"""One use of the public training boxes: a heatmap model supervised by them.

A small fully convolutional network maps a crop to one value per pixel and is fitted, with a
pixel-wise logistic loss, to the masks of the radiologists' boxes on the training opacity crops. Its
output is a heatmap that learnt from the boxes *what an opacity looks like*, which is what the
explanation scores reward. ``box_prior`` is the reference it must beat: the mean box mask, a map
that ignores the pixels and only knows where boxes usually lie in a crop.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hygieia.dataset import boxes_by_id
from hygieia.boxes import box_mask, mass_share

POOL = 4  # the network sees the crop at a quarter of its side: each output cell covers 4x4 pixels


def opacity_masks(X: dict, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The opacity crops among ``rows`` of the labelled split ``X`` and their box masks (bool)."""
    boxes = boxes_by_id(X["boxes"])
    rows = [row for row in rows if X["labels"][row] == 1 and X["ids"][row] in boxes]
    shape = X["images"].shape[1:]
    masks = np.stack([box_mask(boxes[X["ids"][row]], shape) for row in rows]) if rows else np.zeros((0, *shape), bool)
    return X["images"][rows], masks


def box_prior(masks: np.ndarray) -> np.ndarray:
    """The mean box mask: where boxes lie on average, whatever the crop shows."""
    return masks.mean(axis=0)


class BoxHeatmap:
    """A 3-layer convolutional network at a quarter of the resolution, trained on (crop, box mask)
    pairs (at most ``max_crops`` of them, drawn at random: a few minutes on a laptop's CPU)."""

    def __init__(self, epochs: int = 40, max_crops: int = 1000, seed: int = 0):
        self.epochs, self.max_crops, self.seed = epochs, max_crops, seed

    def _network(self) -> nn.Module:
        return nn.Sequential(nn.AvgPool2d(POOL),
                             nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(),
                             nn.Conv2d(8, 8, 5, padding=2), nn.ReLU(),
                             nn.Conv2d(8, 1, 5, padding=2))

    @staticmethod
    def _tensor(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)[:, None]

    def fit(self, images: np.ndarray, masks: np.ndarray) -> "BoxHeatmap":
        torch.manual_seed(self.seed)
        keep = np.sort(np.random.default_rng(self.seed).permutation(len(images))[:self.max_crops])
        images, masks = images[keep], masks[keep]
        self.network = self._network()
        x = self._tensor(images)
        target = nn.functional.avg_pool2d(torch.from_numpy(masks.astype(np.float32))[:, None], POOL)
        optimizer = torch.optim.Adam(self.network.parameters(), lr=0.01)
        for _ in range(self.epochs):  # full batch: at most max_crops crops at 25x25
            optimizer.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(self.network(x), target)
            loss.backward()
            optimizer.step()
        return self

    @torch.no_grad()
    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) non-negative heatmaps: the predicted probability that a pixel is in a box."""
        logits = self.network.eval()(self._tensor(images))
        size = tuple(images.shape[1:])
        return torch.sigmoid(nn.functional.interpolate(logits, size=size, mode="bilinear")).numpy()[:, 0]


def mean_activation_in_box(heatmaps, masks: np.ndarray) -> float:
    return float(np.mean(mass_share(heatmaps, masks)))
