"""Small, format-exact datasets written directly (no phantom, no prepare) for fast unit tests.

Positives carry a bright textured blob inside their box, so a model can learn them; the blob is
where the box is, so explanation metrics have a right answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hygieia import dataset as ds
from hygieia.files import write_csv, write_npy


def fake_split(n: int, rng: np.random.Generator, prefix: str, size: int = 100):
    labels = (np.arange(n) % 5 < 2).astype(np.int64)  # 3:2 normal:opacity
    rng.shuffle(labels)
    ids = [f"{prefix}-{i:05d}" for i in range(n)]
    images = rng.normal(90, 20, (n, size, size)).clip(0, 255)
    boxes = []
    for i in np.flatnonzero(labels):
        w, h = rng.uniform(0.25, 0.5, 2) * size
        x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
        yy, xx = np.mgrid[0:size, 0:size]
        inside = (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)
        images[i][inside] += 70 + rng.normal(0, 15, inside.sum())
        boxes.append((ids[i], round(x, 2), round(y, 2), round(w, 2), round(h, 2)))
    meta = pd.DataFrame({"id": ids, "age": rng.integers(18, 90, n),
                         "sex": rng.choice(["M", "F"], n), "view_position": rng.choice(["AP", "PA"], n)})
    return {"ids": ids, "labels": labels, "images": images.clip(0, 255).astype(np.uint8),
            "features": rng.normal(0, 1, (n, ds.N_FEATURES)).astype(np.float32) + labels[:, None] * 0.5,
            "meta": meta, "boxes": pd.DataFrame(boxes, columns=ds.BOX_COLUMNS)}


def write_fake_dataset(root: str | Path, sizes=(60, 20, 20), seed: int = 0, size: int = 100) -> Path:
    """Write ``input_data/`` and ``reference_data/`` under ``root`` in the competition's format."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in zip(ds.SPLITS, sizes):
        data = fake_split(n, rng, split, size)
        public = root / ds.INPUT_DIR / split
        write_npy(public / ds.IMAGES, data["images"])
        write_npy(public / ds.FEATURES, data["features"])
        write_csv(public / ds.META, data["meta"])
        label_table = pd.DataFrame({"id": data["ids"], "label": data["labels"]})
        if split == "train":
            write_csv(public / ds.LABELS, label_table)
            write_csv(public / ds.BOXES, data["boxes"])
        else:
            ref = root / ds.REFERENCE_DIR / split
            write_csv(ref / ds.LABELS, label_table)
            write_csv(ref / ds.BOXES, data["boxes"])
            write_csv(ref / ds.META, data["meta"])
            write_npy(ref / ds.IMAGES, data["images"])
    return root
