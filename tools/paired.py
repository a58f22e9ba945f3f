"""Paired bootstrap differences between two submissions' scores on the same images.

For a leaderboard column with per-image values, the images both submissions answered are resampled
with replacement (``N_RESAMPLES`` times, ``SEED`` fixed) and both are scored on the same resample;
the 95% interval of the difference (model − reference) comes from those paired resamples. Scores of
two models on the same images move together, so a paired interval is much narrower than the two
models' own intervals side by side.

Each kind of column of the metric table (``hygieia.scoring.metrics``) is resampled over the images it
is computed on, with the table's own computation in its weighted form:

- counts (accuracy, recall, ...) and AUROC: the scored images (probes left out), ``rate`` and
  ``resampled`` of the metric;
- worst-group accuracy: the scored images; each group's accuracy in the resample, the lowest taken
  for each model (a group absent from a resample is skipped there, for both);
- shortcut gap: the off-box probes and the normal films of the strata (views) that have both;
- map columns: the images that are explained true positives of *both* submissions (their per-image
  values, from ``hygieia score --per-image``);
- any other column whose per-image values the scoring program returns (``ids`` and ``images`` under
  ``results["evidence"][key]`` or ``results[key]``): the images both submissions have values for.

``Answers.of`` reads one submission's answers on one split; ``paired_columns`` compares two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from hygieia import dataset as ds
from hygieia.errors import DataError
from hygieia.scoring import classification as cls
from hygieia.scoring import groups
from hygieia.scoring import metrics as mt
from hygieia.scoring.shortcut import weighted_gap

N_RESAMPLES = 2000
SEED = 0


@dataclasses.dataclass(frozen=True)
class Answers:
    """One submission's answers on one split. ``items``: DataFrame indexed by id, every item of the
    split (probes included) in the reference's order, columns truth, probe (bool), view, proba,
    predicted; ``per_image``: {column key: Series id -> value} for the columns measured on a subset
    of images (the explained true positives' maps, the evidence's sampled images); ``scores``: the
    scoring program's values of every column."""

    items: pd.DataFrame
    per_image: dict[str, pd.Series]
    scores: dict

    @classmethod
    def of(cls, ref_dir: Path, res_dir: Path, results: dict) -> Answers:
        """From the reference split, ingestion's predictions.csv and the scoring program's detailed
        results (``hygieia score --per-image``'s detailed_scores.json)."""
        labels = ds.read_table(ref_dir / ds.LABELS, ds.REFERENCE_LABEL_COLUMNS).set_index("id")
        meta = ds.read_table(ref_dir / ds.META, ds.META_COLUMNS).set_index("id")
        missing_meta = labels.index.difference(meta.index)
        if len(missing_meta):
            raise DataError(f"{ref_dir / ds.META}: no row for {len(missing_meta)} labelled id(s)")
        predictions = ds.read_table(res_dir / ds.PREDICTIONS, ds.PREDICTION_COLUMNS).set_index("id")
        missing = labels.index.difference(predictions.index)
        if len(missing):
            raise DataError(f"{res_dir / ds.PREDICTIONS}: no prediction for {len(missing)} id(s) of {ref_dir}")
        predictions = predictions.loc[labels.index]
        items = pd.DataFrame({"truth": labels["label"].to_numpy().astype(int),
                              "probe": labels["probe"].to_numpy() == 1,
                              "view": groups.column_values(meta.loc[labels.index], groups.WORST_GROUP_COLUMN),
                              "proba": predictions["proba"].to_numpy(dtype=np.float64),
                              "predicted": predictions["label"].to_numpy().astype(int)}, index=labels.index)
        return cls(items, per_image_values(results), dict(results["scores"]))


def per_image_values(results: dict) -> dict[str, pd.Series]:
    """{key: Series id -> value} of every column the detailed results give per image: the map columns
    (``explanation.images``, one row per explained true positive) and any column whose details hold
    ``ids`` and ``images``. Images whose value is missing (None) are left out."""
    if not results.get("per_image"):
        raise DataError("the detailed results hold no per-image values: score with `hygieia score --per-image`")
    values = {}
    rows = results["explanation"]["images"]
    for metric in mt.MAP_METRICS:
        values[metric.key] = pd.Series({row["id"]: row[metric.key] for row in rows}, dtype=np.float64)
    for metric in mt.METRICS:
        details = detail_of(results, metric.key)
        if details is not None:
            if len(details["ids"]) != len(details["images"]):
                raise DataError(f"detailed results of {metric.key}: {len(details['ids'])} ids for "
                                f"{len(details['images'])} per-image values")
            values[metric.key] = pd.Series(details["images"], index=list(details["ids"]), dtype=np.float64)
    return {key: series.dropna() for key, series in values.items()}


def detail_of(results: dict, key: str) -> dict | None:
    """A column's measured details that name their images: ``results["evidence"][key]`` or
    ``results[key]`` holding ``ids`` and ``images``; None otherwise."""
    for place in (results.get("evidence") or {}, results):
        details = place.get(key)
        if isinstance(details, dict) and "ids" in details and "images" in details:
            return details
    return None


def resamples(n: int) -> np.ndarray:
    """(N_RESAMPLES, n): how often each of n images is drawn in each paired resample."""
    return cls.bootstrap_counts(n, N_RESAMPLES, SEED).astype(np.float64)


def compare(statistic: Callable[[pd.DataFrame, np.ndarray], np.ndarray], reference: pd.DataFrame,
            model: pd.DataFrame, basis: str) -> dict:
    """``statistic(items, weights)`` -> one value per row of weights, of both submissions' aligned
    items on the same resamples: the values, the difference and its paired 95% interval."""
    n = len(reference)
    if n == 0:
        return not_paired(f"no {basis}")
    ones = np.ones((1, n))
    ref_value, model_value = float(statistic(reference, ones)[0]), float(statistic(model, ones)[0])
    weights = resamples(n)
    differences = statistic(model, weights) - statistic(reference, weights)
    return {"basis": basis, "n": n, "reference": ref_value, "model": model_value,
            "difference": model_value - ref_value, "ci": cls.percentile_interval(differences), "reason": None}


def not_paired(reason: str) -> dict:
    return {"basis": None, "n": 0, "reference": None, "model": None, "difference": None, "ci": None,
            "reason": reason}


def counts_statistic(metric: mt.CountMetric):
    def statistic(items: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
        return metric.rate(cls.Counts.of(items["truth"].to_numpy(), items["predicted"].to_numpy(), weights))
    return statistic


def rank_statistic(metric: mt.RankMetric):
    def statistic(items: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
        return metric.resampled(items["truth"].to_numpy(), items["proba"].to_numpy(), weights)
    return statistic


def worst_group_statistic(items: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
    """The lowest accuracy over the groups class × view of each weighted sample."""
    group = groups.class_by(items["truth"].to_numpy(), items["view"].to_numpy())
    member = np.array([group == name for name in sorted(set(group))], dtype=np.float64)   # (G, n)
    correct = (items["truth"].to_numpy() == items["predicted"].to_numpy()).astype(np.float64)
    sizes = weights @ member.T
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(sizes > 0, (weights @ (member * correct).T) / sizes, np.nan)
    return np.nanmin(accuracy, axis=1)


def gap_statistic(items: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
    """The view-matched shortcut gap of each weighted sample of probes and normal films, floored at 0 as the
    leaderboard's column (``hygieia.scoring.shortcut.weighted_gap``)."""
    views, probe = items["view"].to_numpy(), items["probe"].to_numpy().astype(bool)
    masks = [(probe & (views == view), ~probe & (views == view)) for view in sorted(set(views))]
    return np.maximum(weighted_gap(weights, items["predicted"].to_numpy(), masks), 0.0)


def gap_items(items: pd.DataFrame) -> pd.DataFrame:
    """The probes and normal films that the shortcut gap compares: those of the views holding both."""
    normal = (items["truth"] == 0) & ~items["probe"]
    used = items[items["probe"] | normal]
    matched = [view for view in set(used["view"])
               if used["probe"][used["view"] == view].any() and (~used["probe"][used["view"] == view]).any()]
    return used[used["view"].isin(matched)]


def mean_statistic(items: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
    return weights @ items["value"].to_numpy() / weights.sum(axis=1)


SPLIT_STATISTICS = {"worst_group_accuracy": worst_group_statistic}


def own_statistic(metric: mt.Metric):
    """The weighted computation of a column on the scored images, or None for columns measured on
    other images (the shortcut gap, per-image columns)."""
    if isinstance(metric, mt.CountMetric):
        return counts_statistic(metric)
    if isinstance(metric, mt.RankMetric):
        return rank_statistic(metric)
    return SPLIT_STATISTICS.get(metric.key)


def paired_column(metric: mt.Metric, reference: Answers, model: Answers) -> dict:
    """One column's paired difference (model − reference) on the images both answered."""
    common = reference.items.index.intersection(model.items.index, sort=False)
    if metric.key == "shortcut_gap":
        used = gap_items(reference.items.loc[common])
        if not used["probe"].any():
            return not_paired("no off-box probe that both submissions answered")
        return compare(gap_statistic, used, model.items.loc[used.index], "probes and normal films")
    statistic = own_statistic(metric)
    if statistic is not None:
        scored = common[~reference.items.loc[common, "probe"].to_numpy()]
        return compare(statistic, reference.items.loc[scored], model.items.loc[scored], "scored images")
    if metric.key in reference.per_image and metric.key in model.per_image:
        a, b = reference.per_image[metric.key], model.per_image[metric.key]
        ids = a.index.intersection(b.index, sort=False)
        basis = ("explained true positives of both" if isinstance(metric, mt.MapMetric)
                 else "images both have per-image values for")
        return compare(mean_statistic, pd.DataFrame({"value": a.loc[ids]}), pd.DataFrame({"value": b.loc[ids]}),
                       basis)
    return not_paired("the detailed results give no per-image values of this column")


def paired_columns(reference: Answers, model: Answers) -> dict[str, dict]:
    """{key: paired difference} for every column of the metric table."""
    return {metric.key: paired_column(metric, reference, model) for metric in mt.METRICS}


def check_own_scores(answers: Answers, where: str) -> None:
    """The weighted computations here, unweighted on every scored item, give the scoring program's
    values: a guard against this module and the metric table drifting apart."""
    items = answers.items
    checks = {m.key: own_statistic(m) for m in mt.METRICS if own_statistic(m) is not None}
    values = {key: statistic(items[~items["probe"]], np.ones((1, int((~items["probe"]).sum()))))[0]
              for key, statistic in checks.items()}
    used = gap_items(items)
    if used["probe"].any():
        values["shortcut_gap"] = gap_statistic(used, np.ones((1, len(used))))[0]
    for key, value in values.items():
        scored = answers.scores.get(key)
        if scored is None or not abs(float(value) - scored) <= 1e-5:
            raise DataError(f"{where}: {key} recomputed here is {value}, the scoring program gave {scored}")
