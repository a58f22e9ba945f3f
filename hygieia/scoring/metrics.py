"""Every metric Hygieia reports, declared once.

``METRICS`` is the one table: key (scores.json, scores.txt, competition.yaml), leaderboard title,
sorting (``desc``: higher is better), range, what it needs, what a model that ignores the pixels
scores (its chance reference, as words and as a function of the split), its definition, and the
function that computes it per image or per split. ``keys.py`` (leaderboard columns), the scoring run,
the detailed results page and the evaluation page's metric table (``metric_table_markdown``) all
read it.

Chance references are computed from the reference split (``chance_values``): label-blind rules for
the classification columns, the best box-blind map for the explanation columns (see
``blind_maps.py``), 0 for the columns built to make it 0.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

# Standard library only: ``bundle check`` reads keys.py (and so this file) in a bare interpreter.


class Metric(NamedTuple):
    key: str
    title: str
    sorting: str                 # "desc": higher is better; "asc": lower is better
    value_range: tuple
    needs: tuple
    chance: str                  # what a model that ignores the pixels scores
    definition: str              # one line for the pages
    function: str                # "module:name" of what computes it (per image for explanation metrics)
    family: str                  # "classification", "explanation", "groups" or "shortcut"
    precision: int = 4
    nullable: bool = False       # None (and left out of scores.json) when the split cannot measure it


def function_of(metric: Metric):
    """The function named by ``metric.function``."""
    module, name = metric.function.split(":")
    return getattr(importlib.import_module(module), name)


CLS = "hygieia.scoring.classification:classification_metrics"
XP = "hygieia.scoring.explanation:"


CLASSIFICATION = ("predicted labels", "labels")
EXPLANATION = ("heatmaps", "boxes")

METRICS = (
    Metric("accuracy", "Accuracy", "desc", (0, 1), CLASSIFICATION,
           "the majority class's share (a constant rule)", "(TP + TN) / N", CLS,
           "classification"),
    Metric("worst_group_accuracy", "Worst-group accuracy", "desc", (0, 1), CLASSIFICATION + ("groups",),
           "0 (a constant rule, or one that reads only the view, gets a whole group wrong)",
           "lowest accuracy over the groups class × view position", "hygieia.scoring.groups:worst_group_accuracy",
           "groups"),
    Metric("shortcut_gap", "Shortcut gap", "asc", (0, 1), CLASSIFICATION + ("probes",),
           "0 (a rule that ignores the film calls probes and normal films positive alike)",
           "max(0, mean over off-box probes of (called positive − false-positive rate on normal films of "
           "the probe's view)): below 0 is no better than 0",
           "hygieia.scoring.shortcut:shortcut_gap", "shortcut", nullable=True),
    Metric("fbeta2", "F-beta (2)", "desc", (0, 1), CLASSIFICATION,
           "the prevalence (calling positive at random at the prevalence's rate)",
           "5·P·R / (4·P + R)", CLS, "classification"),
    Metric("recall", "Recall", "desc", (0, 1), CLASSIFICATION,
           "the prevalence (calling positive at random at the prevalence's rate)", "TP / (TP + FN)",
           CLS, "classification"),
    Metric("precision", "Precision", "desc", (0, 1), CLASSIFICATION,
           "the prevalence (any rule that ignores the film)", "TP / (TP + FP)",
           CLS, "classification"),
    Metric("auroc", "AUROC", "desc", (0, 1), ("probabilities", "labels"), "0.5",
           "area under the ROC curve of predict_proba", CLS, "classification"),
    Metric("activation_over_prior", "Activation in box over prior", "desc", (-1, 1), EXPLANATION + ("box prior",),
           "0 (no box-blind map scores above it on average)",
           "activation_in_box − the best fixed map's expected activation_in_box (the box prior's peak)",
           XP + "activation_over_prior", "explanation"),
    Metric("activation_in_box", "Activation in box", "desc", (0, 1), EXPLANATION,
           "the best box-blind map on this split (about the box prior's peak)", "Σ A·M / Σ A", XP + "activation_in_box",
           "explanation"),
    Metric("iou_95", "IoU of 95% rectangle", "desc", (0, 1), EXPLANATION,
           "the best of the box-blind maps on this split", "IoU of the smallest rectangle holding 95 % of "
           "the map with the best-matching box", XP + "iou_95", "explanation"),
    Metric("cc_map", "Component mAP", "desc", (0, 1), EXPLANATION,
           "the best of the box-blind maps on this split", "RSNA's per-image score of the map's "
           "connected-component boxes, mean over τ", XP + "cc_map_by_tau", "explanation"),
    Metric("pointing_game", "Pointing game", "desc", (0, 1), EXPLANATION,
           "the best box-blind map on this split (about the box prior's peak)", "share of the map's maximal pixels inside "
           "the boxes", XP + "pointing_game", "explanation"),
)
BY_KEY = {metric.key: metric for metric in METRICS}
EXPLANATION_KEYS = tuple(m.key for m in METRICS if m.family == "explanation")
CLASSIFICATION_KEYS = tuple(m.key for m in METRICS if m.family == "classification")
PRIMARY_KEY = "accuracy"


def chance_values(prevalence: float, blind_best: dict) -> dict:
    """Each metric's chance reference on a split of the given prevalence; ``blind_best`` holds the best
    box-blind map's score per explanation key (``blind_maps.best_blind_scores``)."""
    rates = {"accuracy": max(prevalence, 1 - prevalence), "fbeta2": prevalence, "recall": prevalence,
             "precision": prevalence, "auroc": 0.5, "worst_group_accuracy": 0.0, "shortcut_gap": 0.0,
             "activation_over_prior": 0.0}
    return {m.key: rates.get(m.key, blind_best.get(m.key)) for m in METRICS}


def metric_table_markdown() -> str:
    """The evaluation page's metric table (``{{metric_table}}``)."""
    lines = ["| column (key) | better | range | definition | needs | chance reference |",
             "|---|---|---|---|---|---|"]
    for m in METRICS:
        better = "higher" if m.sorting == "desc" else "lower"
        rank = ", ranks" if m.key == PRIMARY_KEY else ""
        lines.append(f"| **{m.title}** (`{m.key}`{rank}) | {better} | [{m.value_range[0]:g}, "
                     f"{m.value_range[1]:g}] | {m.definition} | {', '.join(m.needs)} | {m.chance} |")
    return "\n".join(lines) + "\n"
