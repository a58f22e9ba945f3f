"""Scores of submissions that ignore the pixels, on a prepared dataset: box-blind heatmaps on every
explanation column, and a view-only rule on accuracy and worst-group accuracy.

    python tools/blind_baselines.py DATA_DIR [--json OUT.json] [--figure OUT.png]

DATA_DIR is a ``hygieia prepare`` output. The box prior is the reference's ``box_prior.npy`` when
prepare wrote one, else the training boxes' mean mask computed here. For each scored split it prints
the mean score of each box-blind map (uniform, centre Gaussian, the mean mask, the mask's peak, a
per-image box regressor on the metadata) on the split's positives, the prior-relative column with its
95% bootstrap interval, the ratio of the best fixed map's activation_in_box to the mean box share,
and the view-only rule ("positive if AP", from the reference metadata).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hygieia import dataset as ds  # noqa: E402
from hygieia.boxes import box_mask  # noqa: E402
from hygieia.errors import DataError  # noqa: E402
from hygieia.scoring import blind_maps, groups  # noqa: E402
from hygieia.scoring import classification as cls  # noqa: E402
from hygieia.scoring import explanation as xp  # noqa: E402
from hygieia.scoring.metrics import BY_KEY, EXPLANATION_KEYS, MAP_METRICS, image_rows  # noqa: E402


def training_prior(data_dir: Path, shape: tuple[int, int]) -> np.ndarray:
    boxes = ds.read_table(data_dir / ds.INPUT_DIR / "train" / ds.BOXES, ds.BOX_COLUMNS)
    return np.mean([box_mask(b, shape) for b in ds.boxes_by_id(boxes).values()], axis=0).astype(np.float32)


def training_meta(data_dir: Path) -> pd.DataFrame:
    """The training split's metadata with its view position, which models do not get: the organizers'
    ``private/samples.csv`` has it (the box regressor may use it, as a model could infer it)."""
    meta = ds.read_table(data_dir / ds.INPUT_DIR / "train" / ds.META, ds.INPUT_META_COLUMNS).set_index("id")
    samples = data_dir / "private" / "samples.csv"
    if not samples.is_file():
        raise DataError(f"{samples}: missing; the training films' view position comes from prepare's private "
                        "samples table")
    views = ds.read_table(samples, ["id", "view"]).set_index("id")["view"]
    return meta.assign(view_position=views.reindex(meta.index).to_numpy())


def reference(data_dir: Path, split: str) -> dict:
    """The reference split's labels (probes left out when the column exists), boxes, meta, shape."""
    folder = data_dir / ds.REFERENCE_DIR / split
    labels = ds.read_table(folder / ds.LABELS, ds.LABEL_COLUMNS + (["probe"] if "probe" in
                           (folder / ds.LABELS).read_text().splitlines()[0] else []))
    if "probe" in labels:
        labels = labels[labels["probe"] == 0]
    meta = ds.read_table(folder / ds.META, ds.META_COLUMNS).set_index("id").loc[labels["id"]]
    shape = np.load(folder / ds.IMAGES, mmap_mode="r").shape[1:]
    prior_path = folder / ds.BOX_PRIOR
    return {"folder": folder, "labels": labels["label"].to_numpy(), "ids": labels["id"].tolist(), "meta": meta,
            "boxes": ds.boxes_by_id(ds.read_table(folder / ds.BOXES, ds.BOX_COLUMNS)), "shape": shape,
            "prior": np.load(prior_path) if prior_path.is_file() else None}


def split_report(data_dir: Path, split: str) -> dict:
    ref = reference(data_dir, split)
    prior = ref["prior"] if ref["prior"] is not None else training_prior(data_dir, ref["shape"])
    positives = [i for i, y in zip(ref["ids"], ref["labels"]) if y == 1]
    boxes = [ref["boxes"][i] for i in positives]
    share = float(np.mean([box_mask(b, ref["shape"]).mean() for b in boxes]))
    maps = {}
    for name, heatmap in blind_maps.fixed_maps(prior).items():  # one map for every positive: the batched form
        scores = {m.key: m.per_image(xp.Maps(heatmap, boxes, prior)) for m in MAP_METRICS}
        maps[name] = {k: float(v.mean()) for k, v in scores.items()}
        maps[name]["activation_over_prior_ci"] = cls.bootstrap_mean(scores["activation_over_prior"])
    train = data_dir / ds.INPUT_DIR / "train"
    train_meta = training_meta(data_dir)
    train_boxes = ds.read_table(train / ds.BOXES, ds.BOX_COLUMNS)
    regressed = blind_maps.box_regressor_maps(train_meta, train_boxes, ref["meta"].loc[positives], ref["shape"])
    rows = image_rows(xp.Maps(regressed, boxes, prior), positives)
    maps["box regressor (metadata)"] = {k: float(np.mean([r[k] for r in rows])) for k in EXPLANATION_KEYS}
    maps["box regressor (metadata)"]["activation_over_prior_ci"] = cls.bootstrap_mean(
        np.array([r["activation_over_prior"] for r in rows]))
    view = ref["meta"]["view_position"].astype(str).to_numpy()
    rule = (view == "AP").astype(int)
    worst = groups.worst_group_accuracy(ref["labels"], rule, groups.class_by(ref["labels"], view))
    best_fixed = max(m["activation_in_box"] for name, m in maps.items() if "regressor" not in name)
    return {"split": split, "n": len(ref["ids"]), "n_positive": len(positives), "prior_source":
            "box_prior.npy" if ref["prior"] is not None else "training boxes (computed here)",
            "prior_peak": float(prior.max()), "mean_box_share": share,
            "best_fixed_activation_over_box_share": best_fixed / share, "maps": maps,
            "view_only_rule": {"accuracy": float(BY_KEY["accuracy"].rate(cls.Counts.of(ref["labels"], rule))),
                               "worst_group_accuracy": worst["value"], "worst_group_ci": worst["ci"],
                               "worst_group": worst["group"]}}


def print_report(report: dict) -> None:
    print(f"\n## {report['split']}: {report['n']} images, {report['n_positive']} positives; prior from "
          f"{report['prior_source']}, peak {report['prior_peak']:.4f}; mean box share "
          f"{report['mean_box_share']:.4f}; best fixed map / box share "
          f"{report['best_fixed_activation_over_box_share']:.2f}")
    print("| map | " + " | ".join(EXPLANATION_KEYS) + " | activation_over_prior 95% CI |")
    print("|---" * (len(EXPLANATION_KEYS) + 2) + "|")
    for name, scores in report["maps"].items():
        low, high = scores["activation_over_prior_ci"]
        print(f"| {name} | " + " | ".join(f"{scores[k]:.4f}" for k in EXPLANATION_KEYS)
              + f" | [{low:.4f}, {high:.4f}] |")
    rule = report["view_only_rule"]
    print(f"view-only rule (positive if AP): accuracy {rule['accuracy']:.4f}, worst-group accuracy "
          f"{rule['worst_group_accuracy']:.4f} {rule['worst_group_ci']} in group {rule['worst_group']}")


def draw_figure(data_dir: Path, report: dict, path: Path) -> None:
    """The prior-relative score explained: the box prior, and activation in box of each box-blind map
    against the prior's peak (the line activation_over_prior measures from)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = reference(data_dir, report["split"])
    prior = ref["prior"] if ref["prior"] is not None else training_prior(data_dir, ref["shape"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1, 1.8]})
    shown = left.imshow(prior, cmap="magma", vmin=0, vmax=1)
    peak = np.unravel_index(np.argmax(prior), prior.shape)
    left.plot(peak[1], peak[0], marker="+", color="cyan", markersize=12, mew=2)
    left.set_title("box prior P (training boxes' mean mask)\n+: its peak, the best fixed map", fontsize=9)
    left.set(xticks=[], yticks=[])
    figure.colorbar(shown, ax=left, fraction=0.046)
    names = list(report["maps"])
    values = [report["maps"][n]["activation_in_box"] for n in names]
    names.append("the box itself (a perfect map)")
    values.append(1.0)
    colors = ["#7f8c8d"] * (len(names) - 1) + ["#27ae60"]
    right.barh(names, values, color=colors)
    right.axvline(report["prior_peak"], color="#c0392b", linestyle="--",
                  label=f"prior's peak {report['prior_peak']:.2f} = activation_over_prior 0")
    right.axvline(report["mean_box_share"], color="#2e86c1", linestyle=":",
                  label=f"mean box share {report['mean_box_share']:.2f}")
    right.set(xlim=(0, 1), xlabel=f"activation in box, mean over the {report['split']} positives")
    right.set_title("activation_over_prior = activation in box − max P", fontsize=10)
    right.invert_yaxis()
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, metadata={"Software": None})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--figure", type=Path, help="draw the prior-relative figure (valid split) here")
    args = parser.parse_args()
    reports = [split_report(args.data_dir, split) for split in ds.SCORED_SPLITS]
    for report in reports:
        print_report(report)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")
    if args.figure:
        draw_figure(args.data_dir, reports[0], args.figure)


if __name__ == "__main__":
    main()
