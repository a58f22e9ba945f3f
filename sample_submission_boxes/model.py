"""Hygieia sample submission "right for the right reasons": a classifier whose decision is its map.

A frozen ImageNet MobileNetV2, cut after its 13th block (96 channels at stride 16: an 8 x 8 grid of
cells over the crop resized to 128 x 128), and a small head that scores every cell for opacity (a
1 x 1 convolution 96 -> 64, ReLU, 64 -> 1). The image's opacity logit is the mean logit of its four
most opaque cells, so the image is called positive because some cells are. ``explain`` returns
those four cells, upsampled bilinearly to the crop's size: the derivative of the image's logit with
respect to the cell logits (1/4 on each of the four, 0 elsewhere), i.e. exactly where the decision
was taken.

Training uses the labels and the training boxes. Each cell's target is the share of it inside the
crop's opacity boxes: the rest of every crop, the film around the boxes of an opacity crop included,
is a target "no opacity". The loss is the image's binary cross-entropy plus the cells' mean binary
cross-entropy. Every image is weighted by the inverse size of its group, class x view position
(``X["meta"]["view_position"]`` in training; the class alone when the column is absent), so that
the few AP normal films and PA opacity films weigh as much as the many others (group reweighting,
Sagawa et al. 2020). Three heads (seeds 0, 1, 2) are trained with AdamW on the cached features of
the crops (and of their mirror images, below 2,000 training crops); their cell logits are averaged.
The backbone is never trained.

Weights: ``$HYGIEIA_MOBILENET_WEIGHTS`` (a torchvision mobilenet_v2 state_dict) if set, else
``mobilenet_v2_imagenet.pth`` beside this file if present, else torchvision's ``IMAGENET1K_V1``.
``HYGIEIA_FAST=1`` trains on at most 300 images. Runs on CUDA when available.
"""

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

IMAGE_SIZE = 128
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLOCKS = 14                 # MobileNetV2 features[:14]: through block 13, 96 channels, stride 16
HIDDEN, DROPOUT = 64, 0.2
TOP_CELLS = 4               # the image logit is the mean logit of its TOP_CELLS most opaque cells
HEADS = 3
STEPS, BATCH_SIZE = 1200, 32
LEARNING_RATE, WEIGHT_DECAY = 1e-3, 1e-4
BOX_WEIGHT = 1.0
FAST_IMAGES = 300
MIRROR_BELOW = 2000         # mirror images below this many training crops (at full size they would double fit's cost)
EMBED_BATCH_SIZE = 64
SEED = 0
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "mobilenet_v2_imagenet.pth"


def load_mobilenet_v2():
    """torchvision's mobilenet_v2 with ImageNet weights (see the module docstring for where from)."""
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    path = os.environ.get("HYGIEIA_MOBILENET_WEIGHTS") or (BUNDLED_WEIGHTS if BUNDLED_WEIGHTS.is_file() else None)
    if path is None:
        try:
            return mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1)
        except (OSError, RuntimeError) as err:
            raise RuntimeError("cannot get ImageNet MobileNetV2 weights from torchvision "
                               f"({type(err).__name__}: {err}); offline, set $HYGIEIA_MOBILENET_WEIGHTS "
                               f"or put {BUNDLED_WEIGHTS.name} beside model.py") from err
    model = mobilenet_v2(weights=None)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as err:
        reason = str(err).splitlines()[0]
        raise RuntimeError(f"{path}: not a usable mobilenet_v2 state_dict ({type(err).__name__}: {reason})") from err
    return model


def fold_batchnorm(module):
    """Fold each BatchNorm2d that follows a Conv2d into the convolution (the frozen backbone's outputs
    are unchanged and about a third faster on CPU)."""
    for child in module.children():
        fold_batchnorm(child)
    children = list(module.named_children())
    for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, norm_name, nn.Identity())
    return module


class Backbone(nn.Module):
    """(N, 1, H, W) pixels / 255 -> (N, 96, 8, 8) MobileNetV2 features at stride 16."""

    def __init__(self, mobilenet):
        super().__init__()
        self.features = mobilenet.features[:BLOCKS]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, pixels):
        resized = F.interpolate(pixels, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        inputs = ((resized.expand(-1, 3, -1, -1) - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.features(inputs)


class CellHead(nn.Module):
    """Cell features (..., C) -> one opacity logit per cell (...). Dropout drops whole channels of an
    image, the same for all its cells."""

    def __init__(self, channels):
        super().__init__()
        self.hidden = nn.Linear(channels, HIDDEN)
        self.out = nn.Linear(HIDDEN, 1)

    def forward(self, cells):
        if self.training:
            keep = torch.rand(cells.shape[0], 1, 1, cells.shape[-1], device=cells.device) >= DROPOUT
            cells = cells * keep / (1 - DROPOUT)
        return self.out(F.relu(self.hidden(cells)))[..., 0]


def pool(cell_logits):
    """(N, g, g) cell logits -> (N,) image logits: the mean of each image's TOP_CELLS largest."""
    return cell_logits.flatten(1).topk(TOP_CELLS, dim=1).values.mean(1)


def contributions(cell_logits):
    """(N, g, g): d(image logit) / d(cell logit), 1 / TOP_CELLS on the cells the image logit is made of."""
    flat = cell_logits.flatten(1)
    top = flat.topk(TOP_CELLS, dim=1).indices
    return torch.zeros_like(flat).scatter(1, top, 1.0 / TOP_CELLS).view_as(cell_logits)


def box_masks(ids, boxes, shape):
    """(N, H, W) float: 1 where a pixel's centre lies in one of the image's boxes."""
    height, width = shape
    masks = np.zeros((len(ids), height, width), dtype=np.float32)
    row = {image_id: k for k, image_id in enumerate(ids)}
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    columns = ["id", "x", "y", "width", "height"]
    for image_id, x, y, w, h in boxes.loc[boxes["id"].isin(row), columns].itertuples(index=False):
        inside = ((ys >= y) & (ys < y + h))[:, None] & ((xs >= x) & (xs < x + w))[None, :]
        masks[row[image_id]] = np.maximum(masks[row[image_id]], inside)
    return masks


def cell_targets(ids, boxes, shape, grid):
    """(N, grid, grid) float: the share of each cell that lies inside the image's boxes."""
    masks = torch.from_numpy(box_masks(ids, boxes, shape))
    return F.adaptive_avg_pool2d(masks.unsqueeze(1), grid)[:, 0]


def group_weights(y, meta):
    """Per-image weights, inverse to the size of the image's group (class x view position, or class
    alone without the view), with mean 1."""
    if "view_position" in meta.columns:
        views = meta["view_position"].astype(str).to_numpy()
    else:
        print("model.py: X['meta'] has no view_position; balancing the classes only", file=sys.stderr)
        views = np.full(len(y), "all")
    groups = np.array([f"{label}/{view}" for label, view in zip(y, views)])
    names, index, counts = np.unique(groups, return_inverse=True, return_counts=True)
    weights = len(y) / (len(names) * counts[index])
    return weights / weights.mean()


class Model:
    def __init__(self):
        torch.manual_seed(SEED)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.fast = os.environ.get("HYGIEIA_FAST") == "1"
        self.backbone = Backbone(fold_batchnorm(load_mobilenet_v2().eval())).to(
            self.device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.heads = None

    def cells(self, images, flip=False):
        """(N, g, g, C) float16 backbone features of (N, H, W) uint8 images, cells last."""
        chunks = []
        with torch.inference_mode():
            starts = range(0, len(images), EMBED_BATCH_SIZE)
            for start in tqdm(starts, desc="MobileNetV2", unit="batch", disable=len(starts) < 10):
                batch = torch.from_numpy(images[start:start + EMBED_BATCH_SIZE]).to(self.device)
                pixels = batch.unsqueeze(1).float() / 255
                if flip:
                    pixels = pixels.flip(-1)
                chunks.append(self.backbone(pixels).permute(0, 2, 3, 1).half())
        return torch.cat(chunks)

    def fit(self, X, y):
        if "boxes" not in X:
            raise ValueError("X['boxes'] is missing: this model learns where the opacity is from the training "
                             "boxes (input_data/train/boxes.csv)")
        images, y, meta, ids = self.training_subset(X, np.asarray(y).astype(np.int64))
        features = self.cells(images)
        targets = cell_targets(ids, X["boxes"], images.shape[1:], features.shape[1])
        weights = group_weights(y, meta)
        if len(y) < MIRROR_BELOW:
            features = torch.cat([features, self.cells(images, flip=True)])
            targets, y, weights = torch.cat([targets, targets.flip(-1)]), np.tile(y, 2), np.tile(weights, 2)
        targets = targets.to(self.device)
        labels = torch.from_numpy(y).float().to(self.device)
        weights = torch.from_numpy(weights).float().to(self.device)
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)   # the head's steps are tiny: one thread is faster, much faster on a busy CPU
        try:
            self.heads = [self.train_head(features, labels, targets, weights, SEED + k) for k in range(HEADS)]
        finally:
            torch.set_num_threads(threads)
        return self

    def training_subset(self, X, y):
        """Images, labels, metadata rows and ids to train on: all of them, or FAST_IMAGES with HYGIEIA_FAST=1."""
        images, meta, ids = X["images"], X["meta"].loc[X["ids"]], list(X["ids"])
        if not self.fast:
            return images, y, meta, ids
        keep = np.sort(np.random.default_rng(SEED).permutation(len(y))[:FAST_IMAGES])
        return images[keep], y[keep], meta.iloc[keep], [ids[k] for k in keep]

    def train_head(self, features, labels, targets, weights, seed):
        torch.manual_seed(seed)
        head = CellHead(features.shape[-1]).to(self.device)
        optimizer = torch.optim.AdamW(head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        generator = torch.Generator().manual_seed(seed)
        order = torch.empty(0, dtype=torch.long)
        for _ in range(STEPS):
            if len(order) < BATCH_SIZE:
                order = torch.cat([order, torch.randperm(len(labels), generator=generator)])
            batch, order = order[:BATCH_SIZE].to(self.device), order[BATCH_SIZE:]
            cell_logits = head(features[batch].float())
            loss = F.binary_cross_entropy_with_logits(pool(cell_logits), labels[batch], reduction="none")
            loss = loss + BOX_WEIGHT * F.binary_cross_entropy_with_logits(
                cell_logits, targets[batch], reduction="none").mean((1, 2))
            loss = (loss * weights[batch]).sum() / weights[batch].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return head.eval()

    def cell_logits(self, images):
        """(N, g, g): the heads' mean opacity logit of every cell."""
        features = self.cells(images)
        with torch.inference_mode():
            return torch.stack([head(features.float()) for head in self.heads]).mean(0)

    def predict_proba(self, X):
        return torch.sigmoid(pool(self.cell_logits(X["images"]))).cpu().numpy()

    def explain(self, X):
        shares = contributions(self.cell_logits(X["images"]))
        maps = F.interpolate(shares.unsqueeze(1), size=X["images"].shape[1:], mode="bilinear", align_corners=False)
        return maps[:, 0].cpu().numpy()
