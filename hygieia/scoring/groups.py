"""Metrics within groups of images: the bias tables (by sex, by view position, by class × view)
and worst-group accuracy, each with bootstrap intervals.

Worst-group accuracy (Sagawa et al. 2020; the WILDS benchmark) is the lowest accuracy over the groups
class × view position. Within a group of one class accuracy is that class's hit rate, so a rule that
reads only the view (or a constant rule) gets some group entirely wrong and scores 0.
"""

from __future__ import annotations

import numpy as np

from hygieia.scoring import classification as cls

SMALL_GROUP = 20       # groups with fewer images are flagged: their numbers are noise
BIAS_COLUMNS = ("sex", "view_position")
WORST_GROUP_COLUMN = "view_position"
CLASS_NAMES = {0: "normal", 1: "opacity"}


def column_values(meta, column: str) -> np.ndarray:
    """A metadata column as group names; an empty field (NaN, never equal to itself) is "missing"."""
    return meta[column].astype(object).fillna("missing").astype(str).to_numpy()


def class_by(truth: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Group names class × value, e.g. "opacity / AP"."""
    return np.array([f"{CLASS_NAMES[int(y)]} / {v}" for y, v in zip(truth, values)])


def worst_group_accuracy(truth: np.ndarray, predicted: np.ndarray, group: np.ndarray) -> dict:
    """The lowest accuracy over the groups, its 95% bootstrap interval (resampling images; a group
    absent from a resample is skipped there), the worst group and each group's accuracy."""
    names = sorted(set(group))
    member = np.array([group == name for name in names], dtype=np.float64)   # (G, N)
    correct = (np.asarray(truth) == np.asarray(predicted)).astype(np.float64)
    accuracy = (member @ correct) / member.sum(axis=1)
    counts = cls.bootstrap_counts(len(truth)).astype(np.float64)               # (B, N)
    sizes = counts @ member.T
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = np.where(sizes > 0, (counts @ (member * correct).T) / sizes, np.nan)
    worst = int(np.argmin(accuracy))
    return {"value": float(accuracy[worst]), "ci": cls.percentile_interval(np.nanmin(resampled, axis=1)),
            "group": names[worst], "groups": dict(zip(names, accuracy.tolist()))}


def group_rows(truth: np.ndarray, proba: np.ndarray, predicted: np.ndarray, values: np.ndarray,
               inside: dict[int, float] | None = None) -> list[dict]:
    """One row per group: counts, the classification metrics with 95% bootstrap intervals (AUROC
    None in a one-class group), the small-group flag and, given ``inside`` {row index:
    activation_in_box}, the mean activation_in_box of the group's explained true positives and its
    interval."""
    rows = []
    for name in sorted(set(values)):
        where = np.flatnonzero(values == name)
        t, p, y = truth[where], proba[where], predicted[where]
        point = {k: float(v) for k, v in cls.rates(cls.Counts.of(t, y)).items()}
        both = 0 < t.sum() < len(t)
        point["auroc"] = float(cls.weighted_auroc(t, p, np.ones(len(t)))[0]) if both else None
        explained = [inside[i] for i in where if inside and i in inside]
        rows.append({"group": str(name), "n": len(t), "n_positive": int(t.sum()), **point,
                     "ci": cls.bootstrap_classification(t, p, y), "small": len(t) < SMALL_GROUP,
                     "n_true_positives_explained": len(explained),
                     "activation_in_box": float(np.mean(explained)) if explained else None,
                     "activation_in_box_ci": cls.bootstrap_mean(np.array(explained))})
    return rows
