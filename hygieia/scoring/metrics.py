"""Every metric Hygieia reports: declared once, and computed by its declaration.

``METRICS`` is the one table. Each entry is one metric object: its key (scores.json, scores.txt, the
leaderboard), title, sorting (``desc``: higher is better), range, what it needs, its definition, the
work it comes from, the blind rules its chance reference is the best of, and its computation on a
``ScoredSplit`` (``hygieia.scoring.split``):

- ``measure(split)`` gives {"value", "ci" (95% bootstrap interval), and the metric's details};
- ``chance_reference(split)`` runs the same computation on the split's blind versions (the constant
  rules for what reads labels, the box-blind maps for what reads heatmaps) and keeps the best score.

The kinds of metric:

- ``CountMetric``: a function of the confusion counts, one function for the value and every
  bootstrap resample (``classification.Counts``);
- ``RankMetric``: a function of the probabilities (AUROC) and its resampled form;
- ``SplitMetric``: a function of the whole split that returns its value, interval and details
  (worst-group accuracy, the shortcut gap). A metric that needs new inputs (an array that ingestion
  writes, read into ``split.run``) is one entry of this kind, with ``blind="box"`` when its chance
  reference is the box-blind maps';
- ``MapMetric``: a measure of each explained true positive's map, in the batched form of
  ``explanation.Maps``; the column is its mean, and its chance reference runs the same measure on the
  box-blind maps.

``keys.py`` (leaderboard columns), the scoring run (scores, intervals, the chance row, the detailed
results), the evaluation page (``metric_table_markdown``) and the experiment loop over the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from hygieia.scoring import classification as cls
from hygieia.scoring import explanation as xp
from hygieia.scoring import groups, shortcut
from hygieia.scoring.split import ScoredSplit


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    title: str
    sorting: str                    # "desc": higher is better; "asc": lower is better
    value_range: tuple[float, float]
    needs: tuple[str, ...]
    definition: str                 # one line for the pages
    chance: str                     # which blind rule scores best (the value is computed: chance_reference)
    reference: str                  # the work the measure comes from
    _: dataclasses.KW_ONLY
    precision: int = 4
    nullable: bool = False          # None (and left out of scores.json) where the split cannot measure it
    blind: str = ""                 # "label" (constant rules) or "box" (box-blind maps); "": the kind's own
    default_blind: ClassVar[str] = "label"

    def measure(self, split: ScoredSplit) -> dict:
        """{"value": float (None where the split cannot measure it), "ci": [low, high] or None, ...}."""
        raise NotImplementedError

    def value(self, split: ScoredSplit) -> float | None:
        """The value alone (what the chance reference needs of each blind version)."""
        return split.measured(self)["value"]

    def blind_versions(self, split: ScoredSplit) -> dict[str, ScoredSplit]:
        """The split answered without looking at the images: by the constant rules (``label``), or with
        every positive explained by the same box-blind map (``box``)."""
        return {"label": split.label_blind, "box": split.box_blind}[self.blind or self.default_blind]

    def chance_reference(self, split: ScoredSplit) -> float | None:
        """The best score of the blind versions of the split (None where none is measured)."""
        values = [self.value(blind) for blind in self.blind_versions(split).values()]
        values = [value for value in values if value is not None]
        if not values:
            return None
        return float(max(values) if self.sorting == "desc" else min(values))


@dataclasses.dataclass(frozen=True)
class CountMetric(Metric):
    """A function of the confusion counts of the scored images (``rate``)."""
    rate: Callable[[cls.Counts], np.ndarray]

    def measure(self, split: ScoredSplit) -> dict:
        return {"value": self.value(split), "ci": cls.percentile_interval(self.rate(split.resampled))}

    def value(self, split: ScoredSplit) -> float:
        return float(self.rate(split.counts))


@dataclasses.dataclass(frozen=True)
class RankMetric(Metric):
    """A function of the scored images' probabilities (``score(truth, proba)``), with its value in each
    bootstrap resample (``resampled(truth, proba, weights)``)."""
    score: Callable[[np.ndarray, np.ndarray], float]
    resampled: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

    def measure(self, split: ScoredSplit) -> dict:
        return {"value": self.value(split),
                "ci": cls.percentile_interval(self.resampled(split.truth, split.scored_proba, split.weights))}

    def value(self, split: ScoredSplit) -> float:
        return self.score(split.truth, split.scored_proba)


@dataclasses.dataclass(frozen=True)
class SplitMetric(Metric):
    """Computed on the whole split: ``compute(split)`` returns {"value", "ci", and its details}."""
    compute: Callable[[ScoredSplit], dict]

    def measure(self, split: ScoredSplit) -> dict:
        return self.compute(split)


@dataclasses.dataclass(frozen=True)
class MapMetric(Metric):
    """The mean of ``per_image(maps)`` over the explained true positives (probes left out); what an
    all-zero map scores where there is no map to assess. Chance: the best box-blind map."""
    per_image: Callable[[xp.Maps], np.ndarray]
    default_blind: ClassVar[str] = "box"

    def measure(self, split: ScoredSplit) -> dict:
        values = np.zeros(0) if split.maps is None else split.maps.score(self.per_image)
        return {"value": self.value(split), "ci": cls.bootstrap_mean(values), "images": values}

    def value(self, split: ScoredSplit) -> float:
        return self.missing(split) if split.maps is None else float(split.maps.score(self.per_image).mean())

    def missing(self, split: ScoredSplit) -> float:
        """What an all-zero map (or a missing one) scores on this split."""
        return float(split.zero_map.score(self.per_image)[0])


def worst_group(split: ScoredSplit) -> dict:
    return groups.worst_group_accuracy(split.truth, split.scored_predicted, split.class_view)


def shortcut_gap(split: ScoredSplit) -> dict:
    """Every item takes part (probes are what it measures), each probe matched on view."""
    return shortcut.shortcut_gap(split.ref["labels"], split.predicted, split.ref["probes"], split.view)


def box_reliance(split: ScoredSplit) -> dict:
    """Mean box reliance of the sampled opacity images; 0 (what a model that loses nothing anywhere scores)
    when none was measured."""
    evidence = split.evidence
    values = evidence.reliance() if evidence is not None else np.zeros(0)
    return {"value": float(values.mean()) if len(values) else 0.0, "ci": cls.bootstrap_mean(values),
            "n_images": len(values), "ids": evidence.ids if evidence is not None else [], "images": values}


def faithfulness(split: ScoredSplit) -> dict:
    """Mean faithfulness of the maps of the sampled explained true positives; 0 without such a map."""
    evidence = split.evidence
    ids, values = evidence.faithfulness(split.heatmaps or {}) if evidence is not None else ([], np.zeros(0))
    return {"value": float(values.mean()) if len(values) else 0.0, "ci": cls.bootstrap_mean(values),
            "n_images": len(values), "ids": ids, "images": values}


LABELS = ("predicted labels", "labels")
MAPS = ("heatmaps", "boxes")
EVIDENCE = ("predict_proba on altered copies", "boxes")
BOX_BLIND = "the best box-blind map on this split"
COUNTS_PAPER = "Sokolova & Lapalme 2009, *A systematic analysis of performance measures for classification tasks*"

METRICS = (
    CountMetric(
        key="accuracy", title="Accuracy", sorting="desc", value_range=(0, 1), needs=LABELS,
        definition="(TP + TN) / N", rate=cls.accuracy, reference=COUNTS_PAPER,
        chance="the best constant rule: the majority class's share"),
    SplitMetric(
        key="worst_group_accuracy", title="Worst-group accuracy", sorting="desc", value_range=(0, 1),
        needs=(*LABELS, "groups"), definition="lowest accuracy over the groups class × view position",
        compute=worst_group, reference="Sagawa et al. 2020, *Distributionally robust neural networks* (ICLR)",
        chance="0: a constant rule, or one that reads only the view, gets a whole group wrong"),
    SplitMetric(
        key="shortcut_gap", title="Shortcut gap", sorting="asc", value_range=(0, 1), needs=(*LABELS, "probes"),
        definition="max(0, mean over off-box probes of (called positive − false-positive rate on normal films "
                   "of the probe's view)): below 0 is no better than 0",
        compute=shortcut_gap, nullable=True,
        reference="Geirhos et al. 2020, *Shortcut learning in deep neural networks*; Zech et al. 2018 (PLOS Med.)",
        chance="0: a constant rule calls probes and normal films positive alike"),
    CountMetric(
        key="fbeta2", title="F-beta (2)", sorting="desc", value_range=(0, 1), needs=LABELS,
        definition="5·P·R / (4·P + R)", rate=cls.fbeta, reference="van Rijsbergen 1979, *Information Retrieval*",
        chance="calling every image positive: 5p / (4p + 1) at prevalence p (0.769 at p = 0.4)"),
    CountMetric(
        key="recall", title="Recall", sorting="desc", value_range=(0, 1), needs=LABELS,
        definition="TP / (TP + FN)", rate=cls.recall, reference=COUNTS_PAPER,
        chance="1: calling every image positive"),
    CountMetric(
        key="precision", title="Precision", sorting="desc", value_range=(0, 1), needs=LABELS,
        definition="TP / (TP + FP)", rate=cls.precision, reference=COUNTS_PAPER,
        chance="the prevalence: calling every image positive"),
    RankMetric(
        key="auroc", title="AUROC", sorting="desc", value_range=(0, 1), needs=("probabilities", "labels"),
        definition="area under the ROC curve of predict_proba", score=cls.auroc, resampled=cls.weighted_auroc,
        reference="Hanley & McNeil 1982, *The meaning and use of the area under a ROC curve* (Radiology)",
        chance="0.5: a constant probability"),
    SplitMetric(
        key="box_reliance", title="Box reliance", sorting="desc", value_range=(-2, 2), needs=EVIDENCE,
        definition="mean over sampled opacity images of [mean drop in predict_proba when a cell of the box is "
                   "filled in − the same for the other cells], minus the same against the split's other boxes",
        compute=box_reliance, blind="label",
        reference="Zeiler & Fergus 2014, *Visualizing and understanding convolutional networks* (occlusion); "
                  "Rong et al. 2022, *A consistent and efficient evaluation strategy for attribution methods* "
                  "(ICML: linear imputation)",
        chance="0: a model that ignores the pixels loses nothing anywhere, and the box-blind reference takes out "
               "what lies where boxes usually are"),
    SplitMetric(
        key="faithfulness", title="Map faithfulness", sorting="desc", value_range=(-1, 1),
        needs=("heatmaps", "predict_proba on altered copies"),
        definition="mean over sampled explained true positives of the Spearman correlation between the map's "
                   "mass in each cell and the model's drop when that cell is filled in",
        compute=faithfulness, blind="label",
        reference="Bhatt et al. 2020, *Evaluating and aggregating feature-based model explanations* (IJCAI: "
                  "faithfulness correlation)",
        chance="0: a map unrelated to what the model's output depends on"),
    MapMetric(
        key="activation_over_prior", title="Activation in box over prior", sorting="desc", value_range=(-1, 1),
        needs=(*MAPS, "box prior"),
        definition="activation_in_box − the best fixed map's expected activation_in_box (the box prior's peak)",
        per_image=xp.activation_over_prior,
        reference="Hygieia: relevance mass accuracy against the best box-blind map",
        chance=f"{BOX_BLIND} (about 0: the box prior's peak scores 0 in expectation)"),
    MapMetric(
        key="activation_in_box", title="Activation in box", sorting="desc", value_range=(0, 1), needs=MAPS,
        definition="Σ A·M / Σ A", per_image=xp.activation_in_box,
        reference="Arras et al. 2022, *CLEVR-XAI* (relevance mass accuracy)",
        chance=f"{BOX_BLIND} (about the box prior's peak)"),
    MapMetric(
        key="iou_95", title="IoU of 95% rectangle", sorting="desc", value_range=(0, 1), needs=MAPS,
        definition="IoU of the smallest rectangle holding 95 % of the map with the best-matching box",
        per_image=xp.iou_95, reference="Chen et al. 2019, *This looks like that* (NeurIPS)", chance=BOX_BLIND),
    MapMetric(
        key="cc_map", title="Component mAP", sorting="desc", value_range=(0, 1), needs=MAPS,
        definition="RSNA's per-image score of the map's connected-component boxes, mean over τ",
        per_image=xp.cc_map, chance=BOX_BLIND,
        reference="Shih et al. 2019, the RSNA Pneumonia Detection Challenge (Radiology: AI)"),
    MapMetric(
        key="pointing_game", title="Pointing game", sorting="desc", value_range=(0, 1), needs=MAPS,
        definition="share of the map's maximal pixels inside the boxes", per_image=xp.pointing_game,
        reference="Zhang et al. 2018, *Top-down neural attention by excitation backprop* (IJCV)",
        chance=f"{BOX_BLIND} (about the box prior's peak)"),
)
BY_KEY = {metric.key: metric for metric in METRICS}
MAP_METRICS = tuple(m for m in METRICS if isinstance(m, MapMetric))
EVIDENCE_KEYS = ("box_reliance", "faithfulness")  # measured through the model (``split.evidence``)
HEADLINE_EXPLANATION_KEY = "box_reliance"     # the explanation column the pages lead with
EXPLANATION_KEYS = tuple(m.key for m in MAP_METRICS)
PRIMARY_KEY = "accuracy"


def image_rows(maps: xp.Maps, ids: list[str]) -> list[dict]:
    """One row per explained image: every map metric's value and what the report draws."""
    columns = {m.key: maps.score(m.per_image).tolist() for m in MAP_METRICS}
    columns.update(xp.details(maps))
    return [{"id": image_id, **{key: values[n] for key, values in columns.items()}} for n, image_id in enumerate(ids)]


def explain_image(heatmap: np.ndarray, boxes: np.ndarray, prior: np.ndarray | None = None) -> dict:
    """Every map metric of one map against its image's boxes, and the report's details; a metric that
    needs the box ``prior`` is None without it."""
    row = image_rows(xp.Maps(heatmap, [boxes], prior), [""])[0]
    del row["id"]
    return {key: None if isinstance(value, float) and np.isnan(value) else value for key, value in row.items()}


def metric_table_markdown() -> str:
    """The evaluation page's metric table (``{{metric_table}}``)."""
    lines = ["| column (key) | better | range | definition | needs | chance reference | from |",
             "|---|---|---|---|---|---|---|"]
    for m in METRICS:
        better = "higher" if m.sorting == "desc" else "lower"
        rank = ", ranks" if m.key == PRIMARY_KEY else ""
        lines.append(f"| **{m.title}** (`{m.key}`{rank}) | {better} | [{m.value_range[0]:g}, "
                     f"{m.value_range[1]:g}] | {m.definition} | {', '.join(m.needs)} | {m.chance} | {m.reference} |")
    return "\n".join(lines) + "\n"
