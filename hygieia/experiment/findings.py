"""The shortcut experiment's findings: the results table's lookups, and every claim of the report
written from the numbers (each a rule applied to the results, with its threshold stated), with the
tables that show them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hygieia.scoring.metrics import BY_KEY, EXPLANATION_KEYS, METRICS

# A model "uses the marker" when pasting it onto negatives flips this many more predictions than it
# flips for the clean-trained model of the same data version.
RELIANCE = 0.05
# A change in an explanation score smaller than this is reported as "did not drop".
EXPLANATION_DROP = 0.05
# MobileNetV2's last block has output stride 32; the baseline resizes every image to 128 px.
GRADCAM_GRID = 128 // 32
VERSION_TITLES = {"crops": "crops", "whole": "whole images", "features": "1280 features"}


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
            f"{fmt(control, True)}). The model "
            f"{'**uses the marker**' if uses else 'does not measurably use the marker'}.")


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
        grid = (f" The marker is about {side:.0f} px a side on average, {relation} one cell of the "
                f"{GRADCAM_GRID}×{GRADCAM_GRID} Grad-CAM grid ({cell:.0f} px): the upsampled map cannot be "
                "sharper than a cell, so mass on the marker spreads over its neighbourhood.")
    mass_text = (f"Of the heatmap mass of the {explained:.0f} explained images (predicted positives) of the "
                 f"confounded test that show the marker, {fmt(mass, True)} falls on the marker box; the marker covers "
                 f"{fmt(area, True)} of the images that show it (about what a uniform map would put there)."
                 if explained > 0 else
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
        verdict = ("**carry the edge marker** into a model trained on them" if uses
                   else "did not let the model pick up the edge marker")
        lines.append(f"The tabular features, computed from whole radiographs, {verdict} "
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
    keep = np.isfinite(values)
    uses, values = np.asarray(uses, bool)[keep], np.asarray(values, np.float64)[keep]
    if uses.all() or not uses.any():
        return float("nan")
    return BY_KEY["auroc"].score(uses.astype(int), -values if sorting == "desc" else values)


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
                         "acc clean": fmt(get("clean", "accuracy")),
                         "acc confounded": fmt(get("confounded", "accuracy")),
                         "acc counterfactual": fmt(get("counterfactual", "accuracy")),
                         "F-beta2 clean": fmt(get("clean", "fbeta2")),
                         "F-beta2 confounded": fmt(get("confounded", "fbeta2")),
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
