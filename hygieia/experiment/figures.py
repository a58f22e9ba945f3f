"""The shortcut experiment's figures (matplotlib, PNG): scores against the marker's strength, the
separation of the marker users, and example heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hygieia import dataset as ds
from hygieia.experiment.findings import TRUST_KEYS, VERSION_TITLES, Results, corner, lung

EXAMPLES_PER_ROW = 4
EXAMPLES_DPI = 65  # heatmap overlays compress poorly; this keeps the figure near half a megabyte


def _plot_lines(ax, results: Results, version: str, series: list[tuple[str, str, str]]) -> None:
    """Lines against the edge marker's strength; stars for the lung stress case; dashed controls."""
    for eval_set, key, label in series:
        ys = [results.get(version, corner(p), eval_set, key) for p in results.strengths]
        line, = ax.plot(results.strengths, ys, marker="o", label=label)
        if results.stress is not None:
            ax.plot([results.stress], [results.get(version, lung(results.stress), eval_set, key)], marker="*",
                    markersize=12, linestyle="none", color=line.get_color())
        control = results.get(version, "clean", "clean" if eval_set == "confounded" else eval_set, key)
        if np.isfinite(control):
            ax.axhline(control, linestyle="--", color=line.get_color(), alpha=0.5)
    ax.set_title(VERSION_TITLES[version])
    ax.set_xlabel("confounder strength P (★ = marker in the lung region)")
    ax.grid(alpha=0.3)


def plot_accuracy(results: Results, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results.versions), figsize=(4.5 * len(results.versions), 3.8), squeeze=False)
    for ax, version in zip(axes[0], results.versions):
        _plot_lines(ax, results, version, [("clean", "accuracy", "clean test"),
                                           ("confounded", "accuracy", "confounded test"),
                                           ("counterfactual", "accuracy", "counterfactual test")])
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("accuracy (dashed: clean-trained model)")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def plot_flips(results: Results, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for version in results.versions:
        ys = [results.flip(version, corner(p)) for p in results.strengths]
        line, = ax.plot(results.strengths, ys, marker="o", label=VERSION_TITLES[version])
        if results.stress is not None:
            ax.plot([results.stress], [results.flip(version, lung(results.stress))], marker="*", markersize=12,
                    linestyle="none", color=line.get_color())
        ax.axhline(results.flip(version, "clean"), linestyle="--", color=line.get_color(), alpha=0.5)
    ax.set_xlabel("confounder strength P (★ = marker in the lung region)")
    ax.set_ylabel("flip rate (dashed: clean-trained)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_explanations(results: Results, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    versions = [v for v in results.versions if v != "features"]
    if not versions:
        return None
    fig, axes = plt.subplots(1, len(versions), figsize=(5 * len(versions), 3.8), squeeze=False)
    for ax, version in zip(axes[0], versions):
        _plot_lines(ax, results, version, [("confounded", "activation_in_box", "activation in box"),
                                           ("confounded", "pointing_game", "pointing game"),
                                           ("confounded", "marker_mass", "mass on marker"),
                                           ("counterfactual", "marker_mass", "mass on marker (counterf.)")])
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("score (dashed: clean-trained model)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def plot_separation(models: pd.DataFrame, path: Path) -> Path:
    """Each trust score of every model, marker users against the others, coloured by data version."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TRUST_KEYS), figsize=(2.3 * len(TRUST_KEYS), 3.4), squeeze=False)
    colours = dict(zip(VERSION_TITLES, ("tab:blue", "tab:orange", "tab:green")))
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(models))
    for ax, key in zip(axes[0], TRUST_KEYS):
        for version, colour in colours.items():
            mine = (models["version"] == version).to_numpy()
            ax.scatter(models["uses_marker"].to_numpy(int)[mine] + jitter[mine], models[key].to_numpy()[mine],
                       s=18, color=colour, label=VERSION_TITLES[version])
        ax.set_xticks([0, 1], ["no", "yes"])
        ax.set_xlim(-0.5, 1.5)
        ax.set_xlabel("uses the marker")
        ax.set_title(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def plot_separation_by_seed(by_seed: pd.DataFrame, path: Path, goal: float) -> Path:
    """Each score's separation AUROC per seed (points) and its mean over seeds (bar), over all models, over
    the image models and over the image models as changes from their clean-trained controls."""
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(by_seed["key"]))
    seeds = sorted(set(by_seed["seed"]))
    views = [(column, title) for column, title in (
        ("auroc", "all models that have the score"), ("auroc image", "image models"),
        ("auroc image vs control", "image models, change from their clean-trained control"))
        if column in by_seed.columns]
    fig, axes = plt.subplots(len(views), 1, figsize=(0.55 * len(keys) + 2.5, 3.4 * len(views)), squeeze=False,
                             sharex=True)
    axes = axes.T
    offsets = np.linspace(-0.2, 0.2, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    for ax, (column, title) in zip(axes[0], views):
        table = by_seed.pivot(index="key", columns="seed", values=column).reindex(keys)
        means = table.mean(axis=1, skipna=True).to_numpy()
        x = np.arange(len(keys))
        defined = np.isfinite(means)
        ax.bar(x[defined], means[defined], width=0.6, color="lightgrey", edgecolor="grey", label="mean")
        for k in np.flatnonzero(~defined):
            ax.text(k, 0.02, "not defined", rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
        for offset, seed in zip(offsets, seeds):
            ax.scatter(x + offset, table[seed].to_numpy(), s=22, zorder=3, label=f"seed {seed}")
        ax.axhline(0.5, linestyle="--", color="black", alpha=0.5)
        ax.axhline(goal, linestyle="--", color="tab:green", alpha=0.7)
        ax.set_xticks(x, keys, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("separation AUROC\n(users score worse)", fontsize=8)
        ax.set_xlim(-0.6, len(keys) - 0.4)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def example_rows(results: Results, runs: Path) -> list[tuple[str, Path, str]]:
    """(title, run folder, evaluation set) for the example figure: the strongest edge marker and the
    lung stress case, confounded positives and counterfactual negatives."""
    rows = []
    top = max(results.strengths)
    for version in [v for v in results.versions if v != "features"]:
        for train in [corner(top)] + ([lung(results.stress)] if results.stress is not None else []):
            for eval_set in ("confounded", "counterfactual"):
                rows.append((f"{version}, {train}, {eval_set}", runs / version / train, eval_set))
    return rows


def _examples(run_dir: Path, eval_set: str, limit: int):
    """Up to ``limit`` explained images of the set that show the marker: (image, heatmap, opacity
    boxes, marker boxes, label), negatives first for the counterfactual set."""
    ref = ds.load_reference_split(run_dir / "ref" / eval_set)
    markers = ds.boxes_by_id(pd.read_csv(run_dir / "marker_boxes.csv", dtype={"id": str}))
    opacity = ds.boxes_by_id(ref["boxes"])
    with np.load(run_dir / "ingestion" / "heatmaps.npz", allow_pickle=False) as archive:
        maps = dict(zip(archive["ids"].tolist(), archive["maps"]))
    index = {i: k for k, i in enumerate(ref["ids"])}
    order = sorted((i for i in ref["ids"] if i in maps and i in markers),
                   key=lambda i: (ref["labels"][index[i]] if eval_set == "counterfactual" else 0, i))
    return [(ref["images"][index[i]], maps[i].astype(np.float32), opacity.get(i, np.zeros((0, 4))),
             markers[i], int(ref["labels"][index[i]])) for i in order[:limit]]


def plot_examples(results: Results, runs: Path, path: Path) -> Path | None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = [(title, _examples(run_dir, eval_set, EXAMPLES_PER_ROW)) for title, run_dir, eval_set
            in example_rows(results, runs) if (run_dir / "marker_boxes.csv").is_file()]
    rows = [(title, items) for title, items in rows if items]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), EXAMPLES_PER_ROW, figsize=(2.0 * EXAMPLES_PER_ROW, 2.2 * len(rows)),
                             squeeze=False)
    for (title, items), ax_row in zip(rows, axes):
        for k, ax in enumerate(ax_row):
            ax.axis("off")
            if k >= len(items):
                continue
            image, heatmap, boxes, marker, label = items[k]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.imshow(heatmap, cmap="jet", alpha=0.4)
            for (x, y, w, h), colour in [(b, "red") for b in boxes] + [(b, "cyan") for b in marker]:
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=colour, linewidth=1.2))
            ax.set_title(f"{title}, label {label}" if k == 0 else f"label {label}", fontsize=7)
    return _save(fig, path, dpi=EXAMPLES_DPI)


def _save(fig, path: Path, dpi: int = 90) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return path
