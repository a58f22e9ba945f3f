"""The shortcut experiment's findings: the results table's lookups, and every claim of the report
written from the numbers (each a rule applied to the results, with its threshold stated), with the
tables that show them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hygieia.scoring.metrics import BY_KEY, HEADLINE_EXPLANATION_KEY, METRICS, CountMetric, RankMetric

# A model "uses the marker" when pasting it onto negatives flips this many more predictions than it
# flips for the clean-trained model of the same data version.
RELIANCE = 0.05
# A change in an explanation score smaller than this is reported as "did not drop".
EXPLANATION_DROP = 0.05
# MobileNetV2's last block has output stride 32; the baseline resizes every image to 128 px.
GRADCAM_GRID = 128 // 32
VERSION_TITLES = {"crops": "crops", "whole": "whole images", "features": "1280 features",
                  "crops_boxes": "crops, box-supervised", "whole_boxes": "whole images, box-supervised"}
# The models whose predictions can depend on the crop's (or the film's) pixels. A features model is
# pixel-blind to any alteration of the image: a column measured by altering the image and asking the
# model again scores it exactly 0, whether or not it uses the marker.
IMAGE_VERSIONS = ("crops", "whole", "crops_boxes", "whole_boxes")


# ------------------------------------------------------------------------------------- lookups

class Results:
    """One seed's results table with lookups by (version, training variant, evaluation set)."""

    def __init__(self, table: pd.DataFrame, image_size: dict[str, int] | None = None):
        if "seed" in table and table["seed"].nunique() > 1:
            raise ValueError("Results holds one seed's results; select one seed of the table first")
        self.table = table
        self.seed = int(table["seed"].iloc[0]) if "seed" in table and len(table) else None
        self.image_size = {"crops": 100, "whole": 128, "crops_boxes": 100, "whole_boxes": 128, **(image_size or {})}
        self.versions = [v for v in VERSION_TITLES if v in set(table["version"])]
        corner = table[(table["position"] == "corner") & table["strength"].notna()]
        self.strengths = sorted(set(corner["strength"]))
        self.lung_strengths = sorted(set(table.loc[table["position"] == "lung", "strength"].dropna()))
        self.offbox_strengths = sorted(set(table.loc[table["position"] == "offbox", "strength"].dropna()))
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


def fmt(value: float, percent: bool = False, signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.1%}" if percent else f"{value:+.3f}" if signed else f"{value:.3f}"


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
    """For every image model that uses the marker: do the headline column (box reliance, measured through
    the model) and Grad-CAM's activation_in_box tell it from the clean model? A column catches it when it falls
    by more than the half-width of its own 95 % interval on the model's test set (the columns' scales differ:
    box reliance lives within a few hundredths, activation in box across the unit interval)."""
    lines = []
    trains = results.table[["version", "train"]].drop_duplicates().itertuples(index=False)
    for version, train in trains:
        if version == "features" or train == "clean" or reliance(results, version, train) <= RELIANCE:
            continue
        verdicts = []
        for key in (HEADLINE_EXPLANATION_KEY, GRAD_CAM_KEY):
            change = (results.get(version, train, "confounded", key) - results.get(version, "clean", "clean", key))
            half = results.get(version, train, "confounded", key + "_ci_half")
            caught = bool(np.isfinite(half) and change < -half)
            verdicts.append(f"`{key}` {'**catches**' if caught else '**misses**'} it "
                            f"({change:+.3f} against the clean-trained model, interval ±{fmt(half)})")
        lines.append(f"The marker-reliant {VERSION_TITLES[version]} model trained on {train} (flip rate "
                     f"{fmt(results.flip(version, train), True)}): " + "; ".join(verdicts) + ".")
    return lines


# ------------------------------------------------------------------- which scores catch the marker

# The trust scores shown per model: every column of the metric table beyond the classification
# counts and ranks (every metric enters the separation table).
TRUST_KEYS = tuple(m.key for m in METRICS if not isinstance(m, (CountMetric, RankMetric)))
# The tabular sample submission offers no heatmap: its explanation columns are constants, not scores.
NO_HEATMAPS = {"features"}
# The goal: an explanation column whose separation, averaged over seeds, is at least this good, where
# Grad-CAM's activation_in_box (averaged alike) does not separate them.
GOAL_AUROC = 0.9
GRAD_CAM_BLIND = 0.65  # an activation_in_box AUROC at or below this does not separate them
GRAD_CAM_KEY = "activation_in_box"
POOLING_LOSS = 0.05  # a pooled image-model AUROC this far below both versions' own gets a note
EXPLANATION = "explanation"


def family(metric) -> str:
    """A column's family: the metric table's own where it declares one; otherwise "explanation" for a
    column graded against the radiologists' hidden boxes or reading the submitted maps (faithfulness),
    "other" for the rest."""
    explains = {"boxes", "heatmaps"} & set(metric.needs)
    return getattr(metric, "family", "") or (EXPLANATION if explains else "other")


def model_scores(results: Results) -> pd.DataFrame:
    """One row per trained model (data version × training variant): every score of the scoring program
    on the model's own test distribution (the confounded set; the clean set for the clean-trained
    control), its flip rate, its reliance (flip rate − the clean control's) and whether it uses the
    marker (reliance above ``RELIANCE``). Scores a model cannot have are NaN: the scores of a map (the map
    columns, faithfulness) for a model without heatmaps, the shortcut gap of a set without probes (whole
    images). Box reliance is measured through every model: a features model loses nothing when a cell of
    the image is filled in (it reads the film's features), so it scores 0, user or not."""
    rows = []
    for version, train in results.table[["version", "train"]].drop_duplicates().itertuples(index=False):
        own = "clean" if train == "clean" else "confounded"
        row = {"seed": results.seed, "version": version, "train": train, "flip_rate": results.flip(version, train),
               "reliance": reliance(results, version, train)}
        for metric in METRICS:
            defined = not ("heatmaps" in metric.needs and version in NO_HEATMAPS)
            row[metric.key] = results.get(version, train, own, metric.key) if defined else float("nan")
        row["probes_showing_marker"] = results.get(version, train, own, "probes_showing_marker")
        row["marker_shares_box_cell"] = results.get(version, train, own, "marker_shares_box_cell")
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


def against_control(models: pd.DataFrame, key: str) -> pd.Series:
    """Each marker-trained model's ``key`` minus that of the clean-trained model of its seed and data version
    (the same network and data without the marker); NaN for the controls themselves."""
    keys = ["seed", "version"] if "seed" in models else ["version"]
    controls = models[models["train"] == "clean"].set_index(keys)[key]
    index = pd.MultiIndex.from_frame(models[keys]) if len(keys) > 1 else pd.Index(models["version"])
    delta = models[key].to_numpy(np.float64) - controls.reindex(index).to_numpy(np.float64)
    return pd.Series(np.where(models["train"] == "clean", np.nan, delta), index=models.index)


def separation(models: pd.DataFrame) -> pd.DataFrame:
    """Per metric of the scoring program, for one seed's models: how well it separates the marker users
    from the other models, over every model that has the score, over the image models, over the image
    models as a change from their clean-trained control (``auroc image vs control``: the architectures'
    own levels taken out) and within each data version, with the counts."""
    versions = [v for v in VERSION_TITLES if v in set(models["version"])]
    image = models["version"].isin(IMAGE_VERSIONS)
    rows = []
    for metric in METRICS:
        values = models[metric.key].to_numpy(np.float64)
        measured = np.isfinite(values)
        row = {"key": metric.key, "family": family(metric),
               "worse when": "lower" if metric.sorting == "desc" else "higher",
               "users": int(models.loc[measured, "uses_marker"].sum()),
               "non-users": int((~models.loc[measured, "uses_marker"]).sum())}
        delta = against_control(models, metric.key).to_numpy(np.float64)
        views = {"auroc": (measured, values), "auroc image": (measured & image, values),
                 "auroc image vs control": (np.isfinite(delta) & image, delta),
                 **{f"auroc {v}": (measured & (models["version"] == v).to_numpy(), values) for v in versions}}
        for column, (keep, scores) in views.items():
            row[column] = separation_auroc(models.loc[keep, "uses_marker"].to_numpy(bool), scores[keep],
                                           metric.sorting)
        rows.append(row)
    return pd.DataFrame(rows)


def separation_by_seed(models: pd.DataFrame) -> pd.DataFrame:
    """``separation`` of each seed's models, with a ``seed`` column."""
    tables = [separation(mine) for _, mine in models.groupby("seed", sort=True)]
    return pd.concat([table.assign(seed=seed)[["seed", *table.columns]]
                      for seed, table in zip(sorted(set(models["seed"])), tables)], ignore_index=True)


def auroc_views(table: pd.DataFrame) -> list[str]:
    """The separation table's AUROC columns: "auroc" (all models), "auroc image", "auroc <version>"."""
    return [c for c in table.columns if c == "auroc" or c.startswith("auroc ")]


def over_seeds(by_seed: pd.DataFrame) -> pd.DataFrame:
    """Per metric and AUROC view: the mean, min and max of the per-seed separation AUROCs, over the seeds
    where it is defined (``<view> seeds``: how many), and the users / non-users counted in each seed."""
    rows = []
    for key, mine in by_seed.groupby("key", sort=False):
        row = {"key": key, "family": mine["family"].iloc[0], "worse when": mine["worse when"].iloc[0],
               "users per seed": "/".join(str(n) for n in mine["users"]),
               "non-users per seed": "/".join(str(n) for n in mine["non-users"])}
        for view in auroc_views(by_seed):
            values = mine[view].to_numpy(np.float64)
            values = values[np.isfinite(values)]
            row[f"{view} mean"] = float(values.mean()) if len(values) else float("nan")
            row[f"{view} min"] = float(values.min()) if len(values) else float("nan")
            row[f"{view} max"] = float(values.max()) if len(values) else float("nan")
            row[f"{view} seeds"] = int(len(values))
        rows.append(row)
    return pd.DataFrame(rows)


def mean_range(row, view: str) -> str:
    """"0.812 [0.667, 1.000]" (mean [min, max] over seeds); "—" where no seed measures it."""
    if not np.isfinite(row[f"{view} mean"]):
        return "—"
    return f"{fmt(row[f'{view} mean'])} [{fmt(row[f'{view} min'])}, {fmt(row[f'{view} max'])}]"


def constant_versions(models: pd.DataFrame, key: str) -> list[str]:
    """The data versions holding users and non-users whose models all score the same on ``key`` in
    every seed (ties: the score cannot tell them apart there)."""
    out = []
    for version, mine in models.groupby("version", sort=False):
        values = mine[key].to_numpy(np.float64)
        kinds = mine.loc[np.isfinite(values), "uses_marker"]
        values = values[np.isfinite(values)]
        if kinds.any() and not kinds.all() and np.ptp(values) == 0:
            out.append(version)
    return out


def separation_findings(models: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """Which scores catch the marker users, by their separation AUROC's mean and range over seeds, over
    all models and over the image models, with the counts; and the goal."""
    seeds = sorted(set(models["seed"]))
    per_seed = models.groupby("seed")["uses_marker"].agg(["sum", "size"])
    image = models[models["version"].isin(IMAGE_VERSIONS)].groupby("seed")["uses_marker"].agg(["sum", "size"])
    counts = "; ".join(f"seed {seed}: {int(per_seed.loc[seed, 'sum'])} of {int(per_seed.loc[seed, 'size'])}"
                       + (f" ({int(image.loc[seed, 'sum'])} of the {int(image.loc[seed, 'size'])} image models)"
                          if seed in image.index else "") for seed in seeds)
    lines = [f"Over {len(seeds)} seeds ({', '.join(str(s) for s in seeds)}), each a complete replicate, the models "
             f"that use the marker (flip rate more than {RELIANCE:.0%} above the clean-trained model of their data "
             f"version) are, {counts}. Every AUROC below is the mean [min, max] of the per-seed AUROCs; one seed's "
             "figure over this handful of models is mostly noise."]
    ranked = summary[np.isfinite(summary["auroc mean"])].sort_values("auroc mean", ascending=False)
    if ranked.empty:
        return lines + ["No score can be judged: in every seed the models are all of one kind."]
    versions = [v for v in VERSION_TITLES if f"auroc {v} mean" in summary]
    for _, row in ranked.iterrows():
        per_version = ", ".join(f"{v} {mean_range(row, f'auroc {v}')}" for v in versions)
        ties = [v for v in constant_versions(models, row["key"]) if v in versions]
        tie_text = (f"; it is constant over the {' and '.join(ties)} models in every seed (ties at AUROC 0.5 there: "
                    "it cannot tell those users from non-users)" if ties else "")
        lines.append(f"`{row['key']}` ({BY_KEY[row['key']].title}, {row['family']}, worse when {row['worse when']}): "
                     f"AUROC **{mean_range(row, 'auroc')}** over all models that have it, "
                     f"**{mean_range(row, 'auroc image')}** over the image models (within a data version: "
                     f"{per_version}){tie_text}{_pooling_text(row)}.")
    return lines + [goal_finding(summary), beside_box_finding(models)]


def position(train: str) -> str:
    """The marker's position of a training variant's name ("lung-0.8" -> "lung"); "clean" for the control."""
    return train.split("-", 1)[0]


def position_findings(models: pd.DataFrame) -> list[str]:
    """Where each marker position lies for the evidence grid (the share of the marked test opacities whose
    marker shares a cell with the film's own box, per image version), and how much box reliance the marker
    users lose against their clean-trained control, per position: mean [min, max] over the users."""
    image = models[models["version"].isin(IMAGE_VERSIONS)].assign(
        position=lambda m: m["train"].map(position), change=lambda m: against_control(m, HEADLINE_EXPLANATION_KEY))
    lines = []
    for where, mine in image[image["position"] != "clean"].groupby("position", sort=False):
        shares = mine.groupby("version")["marker_shares_box_cell"].mean().dropna()
        shares = shares[[v for v in shares.index if v in ("crops", "whole")] or list(shares.index)]  # same images
        users = mine[mine["uses_marker"]]["change"].dropna()
        others = mine[~mine["uses_marker"]]["change"].dropna()
        share_text = ", ".join(f"{VERSION_TITLES[v]} {fmt(value, True)}" for v, value in shares.items())
        lines.append(
            f"`{where}` marker: it shares a cell of the evidence grid with the image's own box in "
            f"{share_text or 'no'} of the marked test opacities whose image shows it (mean over strengths and seeds). "
            f"`{HEADLINE_EXPLANATION_KEY}` minus the clean control's: its {len(users)} users "
            + (f"{fmt(users.mean(), signed=True)} [{fmt(users.min(), signed=True)}, {fmt(users.max(), signed=True)}]"
               if len(users) else "—")
            + f", its {len(others)} other models "
            + (f"{fmt(others.mean(), signed=True)} [{fmt(others.min(), signed=True)}, {fmt(others.max(), signed=True)}]"
               if len(others) else "—") + ".")
    return lines


# A marker at one of these positions lies inside the lung field, where the opacity is: it shares a cell of the
# evidence grid with the image's own box in most marked opacities (the report's position findings).
IN_BOX_POSITIONS = ("lung",)


def beside_box_finding(models: pd.DataFrame) -> str:
    """The goal again over the models whose marker lies beside the box by design (every position but
    ``IN_BOX_POSITIONS``, the clean controls kept), as changes from their controls: there, filling in the box's
    cells leaves the marker in place, which is what box reliance can see."""
    kept = models[~models["train"].map(position).isin(IN_BOX_POSITIONS)]
    if kept.empty or kept["train"].eq("clean").all():
        return "No model was trained with a marker beside the box (edge or off-box)."
    table = over_seeds(separation_by_seed(kept)).set_index("key")
    view = "auroc image vs control"
    headline, grad_cam = table.loc[HEADLINE_EXPLANATION_KEY], table.loc[GRAD_CAM_KEY]
    met = headline[f"{view} mean"] >= GOAL_AUROC and grad_cam[f"{view} mean"] <= GRAD_CAM_BLIND
    image = kept[kept["version"].isin(IMAGE_VERSIONS) & kept["train"].ne("clean")]
    users = image.groupby("seed")["uses_marker"].agg(["sum", "size"])
    counts = "/".join(f"{int(u)} of {int(n)}" for u, n in users.itertuples(index=False))
    return (f"The same goal for the markers beside the box (trained at the film's edge or `offbox`; image models "
            f"using the marker per seed: {counts}), each as a change from its clean control: "
            f"{'**met**' if met else '**not met**'}: `{HEADLINE_EXPLANATION_KEY}` at {mean_range(headline, view)}, "
            f"`{GRAD_CAM_KEY}` at {mean_range(grad_cam, view)} (pooled, the architectures' levels left in: "
            f"{mean_range(headline, 'auroc image')} and {mean_range(grad_cam, 'auroc image')}). A marker inside the "
            "lung field shares the box's cells in most images (below): there, filling in the box's cells removes the "
            "marker too, and the model's decision does rest on the box's cells.")


def _pooling_text(row) -> str:
    """A note where pooling the image versions loses what each version shows on its own."""
    within = [row.get(f"auroc {v} mean", float("nan")) for v in IMAGE_VERSIONS]
    pooled = row.get("auroc image mean", float("nan"))
    if not np.isfinite(pooled) or not all(np.isfinite(within)) or pooled >= min(within) - POOLING_LOSS:
        return ""
    return ("; pooling the image versions lowers it below each version's own: their scores lie at different "
            "levels (a box fills more of a crop than of a whole film; a box-supervised model reacts more to one cell "
            "filled in), so users of one version and non-users of another mix")


def goal_finding(summary: pd.DataFrame) -> str:
    """The goal: the headline explanation column (the metric table's, measured through the model) with
    mean AUROC ≥ GOAL_AUROC over the image models, where activation_in_box's mean is ≤ GRAD_CAM_BLIND;
    and the best explanation column where it is another."""
    table = summary.set_index("key")
    head = (f"Goal (the headline explanation column `{HEADLINE_EXPLANATION_KEY}` with mean AUROC ≥ {GOAL_AUROC} "
            f"over the image models, where Grad-CAM's `{GRAD_CAM_KEY}` is at most {GRAD_CAM_BLIND}): ")
    if HEADLINE_EXPLANATION_KEY not in table.index or not np.isfinite(table.loc[HEADLINE_EXPLANATION_KEY,
                                                                                "auroc image mean"]):
        return head + f"**not met**: `{HEADLINE_EXPLANATION_KEY}` separates the image models in no seed."
    headline = _keyed(table, HEADLINE_EXPLANATION_KEY)
    grad_cam = table.loc[GRAD_CAM_KEY, "auroc image mean"] if GRAD_CAM_KEY in table.index else float("nan")
    met = headline["auroc image mean"] >= GOAL_AUROC and np.isfinite(grad_cam) and grad_cam <= GRAD_CAM_BLIND
    grad_cam_text = mean_range(table.loc[GRAD_CAM_KEY], "auroc image") if GRAD_CAM_KEY in table.index else "—"
    text = (head + f"{'**met**' if met else '**not met**'}: `{HEADLINE_EXPLANATION_KEY}` at "
            f"{mean_range(headline, 'auroc image')} over the image models ({mean_range(headline, 'auroc')} over all "
            f"models), `{GRAD_CAM_KEY}` at {grad_cam_text}.")
    if "auroc image vs control mean" in table.columns:
        controlled = "auroc image vs control"
        text += (f" Each image model as a change from its clean-trained control (the same network and data "
                 f"without the marker; the architectures' own levels taken out): `{HEADLINE_EXPLANATION_KEY}` at "
                 f"{mean_range(headline, controlled)}, `{GRAD_CAM_KEY}` at "
                 f"{mean_range(table.loc[GRAD_CAM_KEY], controlled) if GRAD_CAM_KEY in table.index else '—'}.")
    explanation = table[(table["family"] == EXPLANATION) & np.isfinite(table["auroc image mean"])]
    best_key = explanation["auroc image mean"].idxmax()
    if best_key != HEADLINE_EXPLANATION_KEY:
        text += (f" The best explanation column over the image models is `{best_key}` at "
                 f"{mean_range(_keyed(table, best_key), 'auroc image')}.")
    return text


def _keyed(table: pd.DataFrame, key: str) -> pd.Series:
    row = table.loc[key].copy()
    row["key"] = key
    return row


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The report's table of the separation over seeds: mean [min, max] per view."""
    shown = summary[["key", "family", "worse when", "users per seed", "non-users per seed"]].copy()
    for view in [c.removesuffix(" mean") for c in summary.columns if c.endswith(" mean")]:
        title = {"auroc": "all models", "auroc image": "image models",
                 "auroc image vs control": "image models, change from control"}.get(view) or view.removeprefix("auroc ")
        shown[title] = [mean_range(row, view) for _, row in summary.iterrows()]
    return shown


# --------------------------------------------------------------- stability of the labels, precision

def label_stability(models: pd.DataFrame) -> pd.DataFrame:
    """Per model (data version × training variant): in how many seeds it uses the marker, and its flip
    rate and reliance in each seed."""
    rows = []
    for (version, train), mine in models.groupby(["version", "train"], sort=False):
        mine = mine.sort_values("seed")
        rows.append({"version": version, "trained on": train,
                     "uses marker (seeds)": f"{int(mine['uses_marker'].sum())}/{len(mine)}",
                     "flip rate per seed": ", ".join(fmt(v, True) for v in mine["flip_rate"]),
                     "reliance per seed": ", ".join(fmt(v, True) for v in mine["reliance"]),
                     "same in every seed": "yes" if mine["uses_marker"].all() or not mine["uses_marker"].any()
                     else "**no**"})
    return pd.DataFrame(rows)


def stability_findings(stability: pd.DataFrame) -> list[str]:
    same = stability["same in every seed"] == "yes"
    stable, unstable = stability[same], stability[~same]
    users = stable["uses marker (seeds)"].map(lambda t: not t.startswith("0/")).sum()
    lines = [f"{len(stable)} of the {len(stability)} models get the same label in every seed (a user in every "
             f"seed: {users}; in none: {len(stable) - users})."]
    if len(unstable):
        lines.append("The label changes across seeds for " + "; ".join(
            f"{row['version']} {row['trained on']} (a user in {row['uses marker (seeds)']} seeds; reliance "
            f"{row['reliance per seed']})" for _, row in unstable.iterrows())
            + f": their reliance lies near the {RELIANCE:.0%} threshold, where a few test images decide.")
    return lines


def interval_halfwidths(table: pd.DataFrame, ci_half: str = "_ci_half") -> pd.DataFrame:
    """Per metric: the median (and largest) half-width of its 95 % interval over every scored test set
    (clean and confounded sets of every model and seed), overall and per data version."""
    scored = table[table["eval"] != "counterfactual"]
    versions = [v for v in VERSION_TITLES if v in set(scored["version"])]
    rows = []
    for metric in METRICS:
        column = metric.key + ci_half
        if column not in scored:
            continue
        row = {"key": metric.key, "sets": int(np.isfinite(scored[column].to_numpy(np.float64)).sum()),
               "median ±": _median(scored[column])}
        for version in versions:
            row[f"median ± {version}"] = _median(scored.loc[scored["version"] == version, column])
        row["largest ±"] = float(np.nanmax(scored[column].to_numpy(np.float64))) if row["sets"] else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def precision_findings(halves: pd.DataFrame) -> list[str]:
    """The typical interval of one score on one test set, and the widest and narrowest scores."""
    measured = halves[np.isfinite(halves["median ±"])].sort_values("median ±")
    if measured.empty:
        return []
    low, high = measured.iloc[0], measured.iloc[-1]
    return [f"Over the {len(measured)} scores, the median half-width of a score's 95 % interval on one test set is "
            f"±{np.median(measured['median ±']):.3f}; from ±{low['median ±']:.3f} (`{low['key']}`) to "
            f"±{high['median ±']:.3f} (`{high['key']}`)."]


def _median(values: pd.Series) -> float:
    values = values.to_numpy(np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else float("nan")


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
                         "box reliance clean": fmt(get("clean", HEADLINE_EXPLANATION_KEY)),
                         "box reliance confounded": fmt(get("confounded", HEADLINE_EXPLANATION_KEY)),
                         "faithfulness confounded": fmt(get("confounded", "faithfulness")),
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
