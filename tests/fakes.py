"""Small, format-exact datasets written directly (no phantom, no prepare) for fast unit tests.

Positives carry a bright textured blob inside their box, so a model can learn them; the blob is
where the box is, so explanation metrics have a right answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hygieia import dataset as ds
from hygieia.files import write_csv, write_json, write_npy


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
            "features": (rng.normal(0, 1, (n, ds.N_FEATURES)) + labels[:, None] * 0.5).astype(np.float32),
            "meta": meta, "boxes": pd.DataFrame(boxes, columns=ds.BOX_COLUMNS)}


def add_probes(data: dict, n_probes: int, rng: np.random.Generator) -> np.ndarray:
    """Append ``n_probes`` off-box probes (label 1, no box, no blob: the film around an opacity) to a
    fake split, in place; returns the probe column."""
    n, size = len(data["ids"]), data["images"].shape[1]
    data["ids"] += [f"{data['ids'][0].split('-')[0]}-{n + i:05d}" for i in range(n_probes)]
    data["labels"] = np.r_[data["labels"], np.ones(n_probes, dtype=np.int64)]
    probe_images = rng.normal(90, 20, (n_probes, size, size)).clip(0, 255).astype(np.uint8)
    data["images"] = np.concatenate([data["images"], probe_images])
    data["features"] = np.concatenate([data["features"],
                                       rng.normal(0, 1, (n_probes, ds.N_FEATURES)).astype(np.float32)])
    extra = data["meta"].sample(n_probes, replace=True, random_state=int(rng.integers(1 << 31)))
    data["meta"] = pd.concat([data["meta"], extra.assign(id=data["ids"][n:])], ignore_index=True)
    return np.r_[np.zeros(n, dtype=np.int64), np.ones(n_probes, dtype=np.int64)]


def box_prior(boxes: pd.DataFrame, size: int) -> np.ndarray:
    """The training boxes' mean mask (one mask per positive image)."""
    from hygieia.boxes import box_mask

    masks = [box_mask(b, (size, size)) for b in ds.boxes_by_id(boxes).values()]
    return np.mean(masks, axis=0).astype(np.float32)


def write_fake_dataset(root: str | Path, sizes=(60, 20, 20), seed: int = 0, size: int = 100,
                       probes: int = 0, final: bool = True) -> Path:
    """Write ``input_data/`` and ``reference_data/`` under ``root`` in the competition's format.

    Scored splits get ``probes`` extra off-box probes (ids after the ``sizes`` ordinary ones);
    ``split.json`` marks test as the Final phase's split when ``final``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    prior = None
    for split, n in zip(ds.SPLITS, sizes):
        data = fake_split(n, rng, split, size)
        probe = add_probes(data, probes, rng) if split != "train" else None
        public = root / ds.INPUT_DIR / split
        write_npy(public / ds.IMAGES, data["images"])
        write_npy(public / ds.FEATURES, data["features"])
        write_csv(public / ds.META, data["meta"])
        label_table = pd.DataFrame({"id": data["ids"], "label": data["labels"]})
        if split == "train":
            write_csv(public / ds.LABELS, label_table)
            write_csv(public / ds.BOXES, data["boxes"])
            prior = box_prior(data["boxes"], size)
        else:
            ref = root / ds.REFERENCE_DIR / split
            write_csv(ref / ds.LABELS, label_table.assign(probe=probe))
            write_npy(ref / ds.BOX_PRIOR, prior)
            write_json(ref / ds.SPLIT_INFO, {"split": split, "final": final and split == "test"})
            write_csv(ref / ds.BOXES, data["boxes"])
            write_csv(ref / ds.META, data["meta"])
            write_npy(ref / ds.IMAGES, data["images"])
    return root


def write_fake_ingestion_output(res_dir: str | Path, dataset_root: str | Path, seed: int = 0,
                                error_rate: float = 0.2, method: str | None = "gradcam",
                                reliance: float = 0.3) -> Path:
    """Ingestion's output folder for a fake dataset, as a model would leave it (for scoring tests).

    Labels are the truth with ``error_rate`` of them flipped; predicted positives get float16
    heatmaps: a Gaussian blob at the centre of the image's first box (true positives, the blob's
    width varying) or at a random place (false positives). The evidence samples images as ingestion
    does; a cell's drop is ``reliance`` times its share in the image's boxes, plus noise of 0.02.
    """
    import json

    from hygieia.files import write_npz, write_text
    from hygieia.scoring.evidence import cell_shares
    from hygieia.submission import evidence as evidence_module

    res_dir = Path(res_dir)
    rng = np.random.default_rng(seed)
    rows, ids, maps, evidence = [], [], [], {"ids": [], "base": [], "drops": []}
    for split in ds.SCORED_SPLITS:
        ref = ds.load_reference_split(Path(dataset_root) / ds.REFERENCE_DIR / split)
        boxes = ds.boxes_by_id(ref["boxes"])
        size_y, size_x = ref["images"].shape[1:]
        label = np.where(rng.random(len(ref["ids"])) < error_rate, 1 - ref["labels"], ref["labels"])
        proba = np.clip(0.5 + (label - 0.5) * rng.uniform(0.1, 1, len(label)), 0, 1)
        yy, xx = np.mgrid[0:size_y, 0:size_x] + 0.5
        for image_id, truth, predicted, p in zip(ref["ids"], ref["labels"], label, proba):
            rows.append((image_id, round(float(p), 6), int(predicted)))
            if predicted == 1 and method is not None:
                if image_id in boxes:
                    x, y, w, h = boxes[image_id][0]
                    cx, cy = x + w / 2, y + h / 2
                else:
                    cx, cy = rng.uniform(0, size_x), rng.uniform(0, size_y)
                sigma = rng.uniform(3, 20)
                maps.append(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2)))
                ids.append(image_id)
        cells = evidence_module.grid_cells((size_y, size_x))
        for k in evidence_module.sample_positions(ref["ids"]):
            image_id = ref["ids"][k]
            shares = cell_shares(cells, boxes.get(image_id, np.zeros((0, 4))), (size_y, size_x))
            evidence["ids"].append(image_id)
            evidence["base"].append(proba[k])
            evidence["drops"].append(np.clip(reliance * shares + rng.normal(0, 0.02, len(cells)), -1, 1))
    write_csv(res_dir / "predictions.csv", pd.DataFrame(rows, columns=["id", "proba", "label"]))
    stacked = np.array(maps, dtype=np.float16).reshape(len(maps), size_y, size_x)
    write_npz(res_dir / "heatmaps.npz", ids=np.array(ids, dtype=str), maps=stacked)
    write_npz(res_dir / "evidence.npz", ids=np.array(evidence["ids"], dtype=str), cells=cells,
              base=np.array(evidence["base"], np.float32), drops=np.array(evidence["drops"], np.float32))
    report = {"status": "ok", "stage": None, "error": None, "explanation": method, "durations": {},
              "counts": {"heatmaps": len(ids)}}
    write_text(res_dir / "ingestion.json", json.dumps(report, indent=2))
    return res_dir
