"""One scored split as the metrics read it: the reference split, and a submission's run or a blind rule
in its place.

Off-box probes are left out of every metric but the shortcut gap: the ``scored_*`` arrays and the
explained true positives hold the other images only. What several metrics share (the confusion
counts, the bootstrap resamples, the explained maps) is computed once per split. The blind versions
of a split give the chance references: ``label_blind`` replaces the predictions by a constant rule,
``box_blind`` finds every positive and explains each with the same box-blind map.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import numpy as np

from hygieia import dataset as ds
from hygieia.scoring import blind_maps, groups
from hygieia.scoring import classification as cls
from hygieia.scoring.evidence import Evidence
from hygieia.scoring.explanation import Maps

LABEL_BLIND_RULES = {"everything normal": 0, "everything positive": 1}


@dataclasses.dataclass(frozen=True, eq=False)
class ScoredSplit:
    """``ref``: ``hygieia.dataset.load_reference_split``'s mapping; ``proba`` and ``predicted``: every
    item of the split, in the reference's order (probes included); ``heatmaps``: {id: (H, W) map} of
    the predicted positives, None when the submission offers no explanation; ``blind_map``: one map
    that explains every image instead (a box-blind rule); ``run``: what scoring read of ingestion's
    output ({} for a blind rule)."""

    ref: dict
    proba: np.ndarray
    predicted: np.ndarray
    heatmaps: Mapping[str, np.ndarray] | None = None
    blind_map: np.ndarray | None = None
    run: Mapping = dataclasses.field(default_factory=dict)
    progress: bool = False  # progress bars on stderr for the per-map work

    @classmethod
    def of_run(cls, ref: dict, run: dict, progress: bool = False) -> ScoredSplit:
        """The split as a submission's run (``hygieia.scoring.ingestion_output``) answers it."""
        predictions = run["predictions"]
        return cls(ref, predictions["proba"].to_numpy(), predictions["label"].to_numpy(),
                   run["heatmaps"] if run["method"] is not None else None, run=run, progress=progress)

    @functools.cached_property
    def scored(self) -> np.ndarray:
        """Which items the metrics score: every one but the off-box probes."""
        return self.ref["probes"] == 0

    @functools.cached_property
    def truth(self) -> np.ndarray:
        return self.ref["labels"][self.scored]

    @functools.cached_property
    def scored_proba(self) -> np.ndarray:
        return self.proba[self.scored]

    @functools.cached_property
    def scored_predicted(self) -> np.ndarray:
        return self.predicted[self.scored]

    @functools.cached_property
    def view(self) -> np.ndarray:
        """Every item's view position (probes included), as group names."""
        return groups.column_values(self.ref["meta"].loc[self.ref["ids"]], groups.WORST_GROUP_COLUMN)

    @functools.cached_property
    def class_view(self) -> np.ndarray:
        """The scored items' groups class × view position."""
        return groups.class_by(self.truth, self.view[self.scored])

    @functools.cached_property
    def counts(self) -> cls.Counts:
        return cls.Counts.of(self.truth, self.scored_predicted)

    @functools.cached_property
    def weights(self) -> np.ndarray:
        """(B, N): how often each scored image is drawn in each bootstrap resample."""
        return cls.bootstrap_counts(len(self.truth)).astype(np.float64)

    @functools.cached_property
    def resampled(self) -> cls.Counts:
        """The confusion counts of every bootstrap resample: arrays (B,)."""
        return cls.Counts.of(self.truth, self.scored_predicted, self.weights)

    @functools.cached_property
    def boxes(self) -> dict[str, np.ndarray]:
        return ds.boxes_by_id(self.ref["boxes"])

    @functools.cached_property
    def positive_ids(self) -> list[str]:
        """The scored positives (every one has a box)."""
        return [i for i, y, s in zip(self.ref["ids"], self.ref["labels"], self.scored) if y == 1 and s]

    @functools.cached_property
    def true_positive_ids(self) -> list[str]:
        return [i for i, y, p, s in zip(self.ref["ids"], self.ref["labels"], self.predicted, self.scored)
                if y == 1 and p == 1 and s]

    @functools.cached_property
    def maps(self) -> Maps | None:
        """The explained true positives' maps and boxes; None when there is no map to assess (no
        explanation, or no true positive)."""
        ids = self.true_positive_ids
        if self.blind_map is not None:
            return Maps(self.blind_map, [self.boxes[i] for i in ids], self.ref["box_prior"])
        if self.heatmaps is None or not ids:
            return None
        return Maps(np.stack([self.heatmaps[i] for i in ids]), [self.boxes[i] for i in ids], self.ref["box_prior"],
                    self.progress)

    @functools.cached_property
    def evidence(self) -> Evidence | None:
        """What ingestion measured through the model on the split's scored opacity images; None for a blind
        rule (it measured nothing: a rule that ignores the pixels loses nothing anywhere)."""
        if "evidence" not in self.run:
            return None
        return Evidence.of(self.run["evidence"], self.positive_ids, self.boxes, self.ref["images"].shape[1:])

    @functools.cached_property
    def zero_map(self) -> Maps:
        """An all-zero map on one positive: what a missing map scores."""
        return Maps(np.zeros(self.ref["images"].shape[1:]), [self.boxes[self.positive_ids[0]]], self.ref["box_prior"])

    def measured(self, metric) -> dict:
        """``metric.measure(self)``, computed once: {"value": ..., "ci": ..., and the metric's details}."""
        if metric.key not in self._measured:
            self._measured[metric.key] = metric.measure(self)
        return self._measured[metric.key]

    @functools.cached_property
    def _measured(self) -> dict:
        return {}

    @functools.cached_property
    def label_blind(self) -> dict[str, ScoredSplit]:
        """The split answered by each constant rule (probability and label), which ignores the images."""
        return {name: dataclasses.replace(self, proba=np.full(len(self.proba), float(label)),
                                          predicted=np.full(len(self.predicted), label), heatmaps=None, run={})
                for name, label in LABEL_BLIND_RULES.items()}

    @functools.cached_property
    def box_blind(self) -> dict[str, ScoredSplit]:
        """The split answered with every positive found and explained by the same box-blind map
        (``blind_maps.fixed_maps``)."""
        return {name: dataclasses.replace(self, predicted=self.ref["labels"].copy(), heatmaps=None,
                                          blind_map=heatmap, run={})
                for name, heatmap in blind_maps.fixed_maps(self.ref["box_prior"]).items()}
