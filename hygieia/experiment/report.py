"""The shortcut experiment's report: Markdown and self-contained HTML, plots, and findings written
from the numbers (every claim is a rule applied to the results table, with its threshold stated)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from hygieia import dataset as ds
from hygieia.files import write_csv, write_text
from hygieia.scoring.metrics import BY_KEY, EXPLANATION_KEYS, METRICS

# A model "uses the marker" when pasting it onto negatives flips this many more predictions than it
# flips for the clean-trained model of the same data version.
RELIANCE = 0.05
# A change in an explanation score smaller than this is reported as "did not drop".
EXPLANATION_DROP = 0.05
# MobileNetV2's last block has output stride 32; the baseline resizes every image to 128 px.
GRADCAM_GRID = 128 // 32
VERSION_TITLES = {"crops": "crops", "whole": "whole images", "features": "1280 features"}
EXAMPLES_PER_ROW = 4
EXAMPLES_DPI = 65  # heatmap overlays compress poorly; this keeps the figure near half a megabyte


# ------------------------------------------------------------------------------------- lookups

class Results:
    """The results table with lookups by (version, training variant, evaluation set)."""

    def __init__(self, table: pd.DataFrame, image_size: dict[str, int] | None = None):
        self.table = table
        self.image_size = {"crops": 100, "whole": 128, **(image_size or {})}
        self.versions = [v for v in VERSION_TITLES if v in set(table["version"])]
        corner = table[(table["position"] == "corner") & table["strength"].notna()]
        self.strengths = sorted(set(corner["strength"]))
        self.lung_strengths = sorted(set(table.loc[table["position"] == "lung", "strength"].dropna()))
        self.stress = max(self.lung_strengths) if self.lung_strengths else None  # the strongest lung marker

    def get(self, version: str, train: str, eval_set: str, key: str) -> float:
        row = self.table[(self.table["version"] == version) & (self.table["train"] == train)
                         & (self.table["eval"] == eval_set)]
        if row.empty or key not in row or pd.isna(row[key].iloc[0]):
            return float("nan")
        return float(row[key].iloc[0])

    def flip(self, version: str, train: str) -> float:
        return self.get(version, train, "counterfactual", "flip_rate")


def corner(strength: float) -> str:
    return f"corner-{strength:g}"


def lung(strength: float) -> str:
    return f"lung-{strength:g}"


def fmt(value: float, percent: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.1%}" if percent else f"{value:.3f}"


# ------------------------------------------------------------------------------------ findings

def reliance(results: Results, version: str, train: str) -> float:
    """How many more predictions the marker flips for this model than for the clean-trained one."""
    return results.flip(version, train) - results.flip(version, "clean")


def describe_model(results: Results, version: str, train: str, label: str) -> str:
    acc_clean = results.get(version, train, "clean", "accuracy")
    acc_conf = results.get(version, train, "confounded", "accuracy")
    flip, control = results.flip(version, train), results.flip(version, "clean")
    uses = reliance(results, version, train) > RELIANCE
    return (f"**{VERSION_TITLES[version]}**, trained with {label}: accuracy {fmt(acc_conf)} on the confounded "
            f"test and {fmt(acc_clean)} on the clean test ({acc_conf - acc_clean:+.3f}); pasting the marker onto "
            f"the negatives flips {fmt(flip, True)} of the test predictions (clean-trained control: "
            f"{fmt(control, True)}). The model {'**uses the marker**' if uses else 'does not measurably use the marker'}.")


def cropping_finding(results: Results, strength: float) -> str | None:
    if not {"crops", "whole"} <= set(results.versions):
        return None
    crops, whole = reliance(results, "crops", corner(strength)), reliance(results, "whole", corner(strength))
    numbers = (f"(at P = {strength:g}, the marker flips {fmt(results.flip('crops', corner(strength)), True)} of "
               f"crop predictions and {fmt(results.flip('whole', corner(strength)), True)} of whole-image ones)")
    if whole > RELIANCE and crops <= RELIANCE:
        return f"Cropping **removes** the shortcut of a marker at the film's edge {numbers}."
    if whole > RELIANCE and crops > RELIANCE:
        degree = "reduces but does **not remove**" if crops < whole / 2 else "does **not remove**"
        return f"Cropping {degree} the shortcut of a marker at the film's edge {numbers}."
    if whole <= RELIANCE and crops <= RELIANCE:
        return (f"Neither the crop nor the whole-image model learned the edge marker {numbers}, so this run "
                "cannot show what cropping removes; try more patients or a higher strength.")
    return f"The crop model relies on the edge marker more than the whole-image model {numbers}."


def explanation_finding(results: Results, version: str, train: str, label: str) -> str:
    """Does the explanation score drop for this model, and how much heatmap mass lies on the marker?"""
    control = results.get(version, "clean", "clean", "activation_in_box")
    score = results.get(version, train, "confounded", "activation_in_box")
    pointing_control = results.get(version, "clean", "clean", "pointing_game")
    pointing = results.get(version, train, "confounded", "pointing_game")
    mass = results.get(version, train, "confounded", "marker_mass")
    area = results.get(version, train, "confounded", "marker_area")
    change = score - control
    explained = results.get(version, train, "confounded", "marker_images")
    verdict = (f"dropped by {-change:.3f}" if change < -EXPLANATION_DROP else
               f"did **not** drop (change {change:+.3f}, threshold {EXPLANATION_DROP})")
    size = results.image_size[version]
    cell = size / GRADCAM_GRID
    side = np.sqrt(area) * size if np.isfinite(area) else float("nan")
    grid = ""
    if np.isfinite(side) and explained > 0:
        relation = "smaller than" if side < cell else "at least as large as"
        grid = (f" The marker is about {side:.0f} px a side on average, {relation} one cell of the {GRADCAM_GRID}×{GRADCAM_GRID} Grad-CAM grid ({cell:.0f} px): the "
                "upsampled map cannot be sharper than a cell, so mass on the marker spreads over its neighbourhood.")
    mass_text = (f"Of the heatmap mass of the {explained:.0f} explained images (predicted positives) of the "
                 f"confounded test that show the marker, {fmt(mass, True)} falls on the marker box; the marker covers "
                 f"{fmt(area, True)} of the images that show it (about what a uniform map would put there)." if explained > 0 else
                 "None of the explained images (predicted positives) of the confounded test shows the marker.")
    return (f"**{VERSION_TITLES[version]}**, {label}: activation_in_box on the confounded test is {fmt(score)} vs "
            f"{fmt(control)} for the clean-trained model on the clean test — it {verdict}; the pointing game is "
            f"{fmt(pointing)} vs {fmt(pointing_control)}. " + mass_text + grid)


def findings(results: Results) -> list[str]:
    top = max(results.strengths)
    lines = [describe_model(results, v, corner(top), f"the edge marker at P = {top:g}") for v in results.versions]
    if results.stress is not None:
        lines += [describe_model(results, v, lung(results.stress),
                                 f"the marker inside the lung region at P = {results.stress:g}")
                  for v in results.versions]
    crop_line = cropping_finding(results, top)
    if crop_line:
        lines.append(crop_line)
    if results.stress is not None and "crops" in results.versions:
        flip = fmt(results.flip("crops", lung(results.stress)), True)
        if reliance(results, "crops", lung(results.stress)) > RELIANCE:
            lines.append(f"With the marker inside the lung region, the crop model **uses it** (flip rate {flip}): "
                         "cropping protects only against markers outside the crop window.")
        else:
            lines.append(f"Even with the marker inside the lung region, the crop model does not measurably use it "
                         f"(flip rate {flip}).")
    if "features" in results.versions:
        uses = reliance(results, "features", corner(top)) > RELIANCE
        lines.append(f"The tabular features, computed from whole radiographs, "
                     f"{'**carry the edge marker** into a model trained on them' if uses else 'did not let the model pick up the edge marker'} "
                     f"(flip rate {fmt(results.flip('features', corner(top)), True)} vs "
                     f"{fmt(results.flip('features', 'clean'), True)} for the clean-trained model).")
    for version in [v for v in results.versions if v != "features"]:
        lines.append(explanation_finding(results, version, corner(top), f"edge marker at P = {top:g}"))
        if results.stress is not None:
            lines.append(explanation_finding(results, version, lung(results.stress),
                                             f"marker in the lung region at P = {results.stress:g}"))
    lines += caught_findings(results)
    return lines


def caught_findings(results: Results) -> list[str]:
    """For every image model that uses the marker: does activation_in_box tell it from the clean model?"""
    lines = []
    trains = results.table[["version", "train"]].drop_duplicates().itertuples(index=False)
    for version, train in trains:
        if version == "features" or train == "clean" or reliance(results, version, train) <= RELIANCE:
            continue
        change = (results.get(version, train, "confounded", "activation_in_box")
                  - results.get(version, "clean", "clean", "activation_in_box"))
        verdict = ("**catches**" if change < -EXPLANATION_DROP else "**misses**")
        lines.append(f"The explanation score {verdict} the marker-reliant {VERSION_TITLES[version]} model trained on "
                     f"{train} (flip rate {fmt(results.flip(version, train), True)}; activation_in_box "
                     f"{change:+.3f} against the clean-trained model).")
    return lines


# ------------------------------------------------------------------- which scores catch the marker

# The trust scores shown per model (every metric of the scoring program enters the separation table).
TRUST_KEYS = ("worst_group_accuracy", "shortcut_gap", "activation_over_prior", "activation_in_box", "iou_95",
              "cc_map", "pointing_game")
# The tabular sample submission offers no heatmap: its explanation columns are constants, not scores.
NO_HEATMAPS = {"features"}
# A separation at least this good (with the Grad-CAM score near 0.5) is the experiment's goal.
GOAL_AUROC = 0.9
GRAD_CAM_BLIND = 0.65  # an activation_in_box AUROC at or below this does not separate them


def model_scores(results: Results) -> pd.DataFrame:
    """One row per trained model (data version × training variant): every score of the scoring program
    on the model's own test distribution (the confounded set; the clean set for the clean-trained
    control), its flip rate, its reliance (flip rate − the clean control's) and whether it uses the
    marker (reliance above ``RELIANCE``). Scores a model cannot have are NaN: explanation scores of a
    model without heatmaps, the shortcut gap of a set without probes (whole images)."""
    rows = []
    for version, train in results.table[["version", "train"]].drop_duplicates().itertuples(index=False):
        own = "clean" if train == "clean" else "confounded"
        row = {"version": version, "train": train, "flip_rate": results.flip(version, train),
               "reliance": reliance(results, version, train)}
        for metric in METRICS:
            defined = not (metric.key in EXPLANATION_KEYS and version in NO_HEATMAPS)
            row[metric.key] = results.get(version, train, own, metric.key) if defined else float("nan")
        row["probes_showing_marker"] = results.get(version, train, own, "probes_showing_marker")
        row["n_probes"] = results.get(version, train, own, "n_probes")
        row["uses_marker"] = bool(row["reliance"] > RELIANCE)
        rows.append(row)
    return pd.DataFrame(rows)


def separation_auroc(uses: np.ndarray, values: np.ndarray, sorting: str) -> float:
    """AUROC of a score as a detector of marker use: a model that uses the marker should score worse,
    so the suspicion is −value for a higher-is-better score (``desc``), +value otherwise. NaN when the
    models measured are all of one kind."""
    from sklearn.metrics import roc_auc_score

    keep = np.isfinite(values)
    uses, values = np.asarray(uses, bool)[keep], np.asarray(values, np.float64)[keep]
    if uses.all() or not uses.any():
        return float("nan")
    return float(roc_auc_score(uses, -values if sorting == "desc" else values))


def separation(models: pd.DataFrame) -> pd.DataFrame:
    """Per metric of the scoring program: how well it separates the marker users from the other models,
    over every model that has the score and within each data version, with the counts."""
    versions = [v for v in VERSION_TITLES if v in set(models["version"])]
    rows = []
    for metric in METRICS:
        measured = models[np.isfinite(models[metric.key].to_numpy(np.float64))]
        row = {"key": metric.key, "worse when": "lower" if metric.sorting == "desc" else "higher",
               "users": int(measured["uses_marker"].sum()), "non-users": int((~measured["uses_marker"]).sum()),
               "auroc": separation_auroc(measured["uses_marker"], measured[metric.key].to_numpy(np.float64),
                                         metric.sorting)}
        for version in versions:
            mine = measured[measured["version"] == version]
            row[f"auroc {version}"] = separation_auroc(mine["uses_marker"], mine[metric.key].to_numpy(np.float64),
                                                       metric.sorting)
        rows.append(row)
    return pd.DataFrame(rows)


def separation_findings(models: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """Which scores catch the marker users, by the AUROC rule, with the counts."""
    users, others = int(models["uses_marker"].sum()), int((~models["uses_marker"]).sum())
    lines = [f"Of the {len(models)} models, {users} use the marker (flip rate more than {RELIANCE:.0%} above the "
             f"clean-trained model of their data version) and {others} do not."]
    ranked = table[np.isfinite(table["auroc"])].sort_values("auroc", ascending=False)
    if ranked.empty:
        return lines + ["No score can be judged: the models are all of one kind."]
    versions = [c for c in table.columns if c.startswith("auroc ")]
    for _, row in ranked.iterrows():
        per_version = ", ".join(f"{c.split(' ', 1)[1]} {fmt(row[c])}" for c in versions)
        lines.append(f"`{row['key']}` ({BY_KEY[row['key']].title}, worse when {row['worse when']}) separates them "
                     f"with AUROC **{fmt(row['auroc'])}** over {row['users']} users and {row['non-users']} non-users "
                     f"(within a data version: {per_version}).")
    grad_cam = table.set_index("key").loc["activation_in_box", "auroc"]
    best = ranked.iloc[0]
    met = best["auroc"] >= GOAL_AUROC and np.isfinite(grad_cam) and grad_cam <= GRAD_CAM_BLIND
    lines.append(f"Goal (a score with AUROC ≥ {GOAL_AUROC} where Grad-CAM's activation_in_box does not separate "
                 f"them, AUROC ≤ {GRAD_CAM_BLIND}): "
                 f"{'**met**' if met else '**not met**'} — the best score is `{best['key']}` at {fmt(best['auroc'])}, "
                 f"activation_in_box is at {fmt(grad_cam)}.")
    return lines


def model_table(models: pd.DataFrame) -> pd.DataFrame:
    """The scores × models table of the report."""
    table = models[["version", "train"]].rename(columns={"train": "trained on"})
    table["flip rate (control)"] = [f"{fmt(f, True)} ({fmt(f - r, True)})" for f, r in
                                    zip(models["flip_rate"], models["reliance"])]
    table["uses marker"] = np.where(models["uses_marker"], "**yes**", "no")
    for key in ("accuracy", *TRUST_KEYS):
        table[key] = [fmt(v) for v in models[key]]
    table["probes (showing marker)"] = [f"{_count(n)} ({fmt(s, True)})" for n, s in
                                        zip(models["n_probes"], models["probes_showing_marker"])]
    return table


def separation_table(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.copy()
    for column in [c for c in shown.columns if c.startswith("auroc")]:
        shown[column] = [fmt(v) for v in shown[column]]
    return shown


# -------------------------------------------------------------------------------------- tables

def classification_table(results: Results) -> pd.DataFrame:
    rows = []
    for version in results.versions:
        for train in results.table.loc[results.table["version"] == version, "train"].drop_duplicates():
            get = lambda s, k: results.get(version, train, s, k)  # noqa: E731
            rows.append({"version": version, "trained on": train,
                         "acc clean": fmt(get("clean", "accuracy")), "acc confounded": fmt(get("confounded", "accuracy")),
                         "acc counterfactual": fmt(get("counterfactual", "accuracy")),
                         "F-beta2 clean": fmt(get("clean", "fbeta2")), "F-beta2 confounded": fmt(get("confounded", "fbeta2")),
                         "AUROC clean": fmt(get("clean", "auroc")), "AUROC confounded": fmt(get("confounded", "auroc")),
                         "flip rate": fmt(results.flip(version, train), True),
                         "flips of negatives": fmt(get("counterfactual", "flip_rate_negatives"), True)})
    return pd.DataFrame(rows)


def explanation_table(results: Results) -> pd.DataFrame:
    rows = []
    for version in [v for v in results.versions if v != "features"]:
        for train in results.table.loc[results.table["version"] == version, "train"].drop_duplicates():
            get = lambda s, k: results.get(version, train, s, k)  # noqa: E731
            rows.append({"version": version, "trained on": train,
                         "act. in box clean": fmt(get("clean", "activation_in_box")),
                         "act. in box confounded": fmt(get("confounded", "activation_in_box")),
                         "iou_95 confounded": fmt(get("confounded", "iou_95")),
                         "cc_map confounded": fmt(get("confounded", "cc_map")),
                         "pointing confounded": fmt(get("confounded", "pointing_game")),
                         "marker mass confounded": fmt(get("confounded", "marker_mass"), True),
                         "marker mass counterfactual": fmt(get("counterfactual", "marker_mass"), True),
                         "images (conf. / counterf.)": f"{_count(get('confounded', 'marker_images'))} / "
                                                       f"{_count(get('counterfactual', 'marker_images'))}",
                         "marker area (uniform)": fmt(get("counterfactual", "marker_area"), True)})
    return pd.DataFrame(rows)


def _count(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{value:.0f}"


# -------------------------------------------------------------------------------------- figures

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


# ------------------------------------------------------------------------------------ rendering

def _markdown_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def _bold_html(text: str) -> str:
    """Markdown's **bold** and `code` as HTML; everything else escaped."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if k % 2 else p for k, p in enumerate(parts))
    return "".join(f"<code>{p}</code>" if k % 2 else p for k, p in enumerate(text.split("`")))


def render(blocks: list[tuple], folder: Path) -> tuple[str, str]:
    """Markdown and self-contained HTML of blocks ("h1"/"h2"/"p", text), ("list", [text]),
    ("table", DataFrame), ("figure", path, caption)."""
    md, body = [], []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            md.append(("# " if kind == "h1" else "## ") + block[1])
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            md.append(block[1])
            body.append(f"<p>{_bold_html(block[1])}</p>")
        elif kind == "list":
            md.append("\n".join(f"- {item}" for item in block[1]))
            body.append("<ul>" + "".join(f"<li>{_bold_html(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            md.append(_markdown_table(block[1]))
            body.append(block[1].to_html(index=False, border=0, classes="results"))
        elif kind == "figure":
            path, caption = block[1], block[2]
            md.append(f"![{caption}]({path.relative_to(folder).as_posix()})\n\n*{caption}*")
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
             "table.results{border-collapse:collapse;font-size:13px}"
             "table.results td,table.results th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "img{max-width:100%}figcaption{font-style:italic;font-size:13px}")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Hygieia shortcut experiment</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return "\n\n".join(md) + "\n", page


def command_line(config) -> str:
    """The command that reproduces this run (the weights path aside)."""
    lung_strengths = ",".join(f"{p:g}" for p in config.lung_strengths) or "none"
    return (f"hygieia experiment shortcut --patients {config.patients} "
            f"--strengths {','.join(f'{p:g}' for p in config.strengths)} --lung-strengths {lung_strengths} "
            f"--probe-share {config.probe_share:g} --seed {config.seed}" + (" --fast" if config.fast else ""))


def setup_text(config, results: Results) -> list[str]:
    sizes = config.sizes
    return [f"Reproduce with `{command_line(config)}` (phantoms and prepared data are cached in OUT/cache, "
            "trained runs in OUT/runs).",
            f"Phantom: {config.patients} patients, seed {config.seed}; prepared at 3:2 normal:opacity into "
            f"{sizes.get('train')} train / {sizes.get('valid')} valid / {sizes.get('test')} test samples, the "
            f"same patients and ids in every variant.",
            f"Marker strengths P (share of opacity images carrying it; 1−P of the normals carry it): "
            f"{', '.join(f'{p:g}' for p in results.strengths)} at the film's edge"
            + (f"; {', '.join(f'{p:g}' for p in results.lung_strengths)} inside a lung field, where crop windows "
               "and off-box probes can show it." if results.lung_strengths else "."),
            f"Off-box probes (windows cut from opacity films away from every box, served as ordinary test "
            f"items, marked only in the reference data): {config.probe_share:g} per test opacity, in the crops "
            "and features test sets. A probe of a marked opacity film whose window holds the marker shows the "
            "marker without the opacity. Whole images hold no probe (a whole film shows its boxes). The "
            "features of a probe are those of its whole film (opacity included), so the features' shortcut "
            "gap measures the opacity as well as any shortcut.",
            f"Data versions: **crops** ({config.crop}×{config.crop} around the lung region, the competition's data), "
            f"**whole images** (the radiograph at {config.full_size}×{config.full_size}, the original design's Table 2 "
            "setting) and **features** (the 1280 MobileNetV2 features, computed from the whole radiograph).",
            "Each model is the sample submission (frozen ImageNet MobileNetV2 + linear layer at 128 px, Grad-CAM on "
            "its last block; the features version: the tabular sample), trained by the real ingestion program and "
            f"scored by the real scoring program{' (HYGIEIA_FAST=1: quick training)' if config.fast else ''}.",
            "Test sets, the same patients: **clean** (no marker), **confounded** (the training strength), "
            "**counterfactual** (P = 0: the marker on every negative, on no positive). Flip rate: share of test "
            "predictions that differ between clean and counterfactual, where only the negatives differ, by the marker.",
            f"Thresholds: a model *uses the marker* when its flip rate exceeds the clean-trained model's by more "
            f"than {RELIANCE:.0%}; an explanation score *drops* when it falls by more than {EXPLANATION_DROP}. "
            f"With {sizes.get('test')} test images, one flipped prediction is "
            f"{1 / sizes['test'] if sizes.get('test') else float('nan'):.1%} of them."]


def write_report(config, table: pd.DataFrame) -> Path:
    """OUT/report/: report.md, report.html (self-contained), results.csv, figures/*.png."""
    folder = Path(config.out) / "report"
    figures = folder / "figures"
    results = Results(table, {"crops": config.crop, "whole": config.full_size})
    write_csv(folder / "results.csv", table)
    models = model_scores(results)
    separated = separation(models)
    write_csv(folder / "models.csv", models)
    write_csv(folder / "separation.csv", separated)
    blocks = [("h1", "Hygieia shortcut experiment: does cropping remove a marker shortcut, and which scores "
                     "catch it?"),
              ("h2", "Setup"), ("list", setup_text(config, results)),
              ("h2", "Which scores catch the marker"), ("list", separation_findings(models, separated)),
              ("p", "Every score below is the scoring program's (scores.json), on the model's own test "
                    "distribution: the confounded test, or the clean test for the clean-trained control. "
                    "Flip rate: predictions changed by pasting the marker onto the negatives (in brackets, the "
                    "clean-trained control's). Probes: off-box probes in that test set, and the share of them "
                    "whose window shows the marker. — : the model cannot have the score (no heatmaps for the "
                    "features; no probes in whole images)."),
              ("table", model_table(models)),
              ("p", "Separation: AUROC of each score as a detector of the marker users (the score's direction "
                    "from the metric table: a user should score worse), over every model that has the score "
                    "and within each data version; users and non-users are the models counted."),
              ("table", separation_table(separated)),
              ("figure", plot_separation(models, figures / "separation.png"),
               "Each trust score of every model: marker users (right) against the others (left)"),
              ("h2", "What the numbers show"), ("list", findings(results)),
              ("h2", "Classification"), ("table", classification_table(results)),
              ("figure", plot_accuracy(results, figures / "accuracy.png"),
               "Accuracy against the marker's strength, per data version"),
              ("figure", plot_flips(results, figures / "flip_rate.png"),
               "Flip rate: predictions changed by pasting the marker onto the negatives")]
    if any(v != "features" for v in results.versions):
        blocks += [("h2", "Explanations"), ("table", explanation_table(results)),
                   ("figure", plot_explanations(results, figures / "explanations.png"),
                    "Explanation scores and heatmap mass on the marker (confounded test unless marked) against "
                    "the marker's strength; dashed: the clean-trained model on the clean test")]
        examples = plot_examples(results, Path(config.out) / "runs", figures / "examples.png")
        if examples:
            blocks.append(("figure", examples, "Grad-CAM of predicted positives that show the marker (cyan: marker "
                                               "box, red: opacity box), for the strongest edge marker and the lung "
                                               "stress case"))
    markdown, page = render(blocks, folder)
    write_text(folder / "report.md", markdown)
    write_text(folder / "report.html", page)
    return folder
