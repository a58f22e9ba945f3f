"""The scoring run: read the reference split and ingestion's output, refuse a broken run, compute the
metrics, write scores.json, scores.txt, detailed_scores.json and detailed_results.html.

Command forms (the Codabench scoring program calls ``main``):

    score.py                      /app/input/ref, /app/input/res -> /app/output
    score.py INPUT OUTPUT         INPUT/ref, INPUT/res -> OUTPUT      (legacy CodaLab, metadata.yaml)
    score.py REF_DIR RES_DIR OUT_DIR

detailed_scores.json holds everything else (intervals, chance and baseline rows, per-tau cc_map,
confusion matrix, counts, coarse histograms, the group tables): see ``compute_results``.

Once a competition is published Codabench serves every detailed result to anyone, so in both phases
every output (and the log) holds aggregates and intervals only: no id, no per-image row, no ROC point,
no picture of a hidden image. Per-image results (the ROC curve, the galleries, the per-image table)
are written only on request, where the labels are the requester's own: ``$HYGIEIA_PER_IMAGE=1`` (set
by the starting kit's ``score_locally.py`` on its hold-out of train, and by ``hygieia run
--per-image``), or ``hygieia score --per-image``. No Codabench worker sets it.

A broken run (failed ingestion, missing or malformed predictions or heatmaps) exits 1 with a message
naming the cause on stderr and in detailed_results.html; no score is written. ``metadata`` is the
worker's file and is never written here.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from hygieia import dataset as ds
from hygieia.errors import DataError, HygieiaError
from hygieia.files import write_json, write_text
from hygieia.scoring import classification as cls
from hygieia.scoring import explanation as xp
from hygieia.scoring import groups
from hygieia.scoring import metrics as mt
from hygieia.scoring.ingestion_output import read_ingestion_output
from hygieia.scoring.keys import SCORE_KEYS
from hygieia.scoring.split import ScoredSplit

SCORES_JSON = "scores.json"
SCORES_TXT = "scores.txt"
DETAILED_JSON = "detailed_scores.json"
DETAILED_HTML = "detailed_results.html"
BASELINE_SCORES = "baseline_scores.json"   # optional, in the reference folder: {key: value}
DIGITS = 6
CODABENCH_PATHS = ("/app/input/ref", "/app/input/res", "/app/output")
AS_ALL_ZERO_MAPS = ("the explanation columns score as all-zero maps do: 0, and minus the box prior's peak on "
                    "activation_over_prior")
PER_IMAGE_ENV = "HYGIEIA_PER_IMAGE"   # "1": per-image results too; only for labels the requester owns
HISTOGRAM_BINS = 10                   # of the published explanation histograms, over [0, 1]
HISTOGRAM_KEYS = ("activation_in_box", "iou_95")


def clean(value):
    """JSON-ready copy: numpy scalars and arrays to Python, floats rounded, NaN and inf to None."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), DIGITS) if math.isfinite(value) else None
    return value


def load_inputs(ref_dir: str | Path, res_dir: str | Path) -> tuple[dict, dict]:
    """The reference split (``hygieia.dataset.load_reference_split``) and ingestion's checked output."""
    ref = ds.load_reference_split(ref_dir)
    with_boxes = set(ref["boxes"]["id"])
    unboxed = [i for i, y, probe in zip(ref["ids"], ref["labels"], ref["probes"])
               if y == 1 and not probe and i not in with_boxes]
    if unboxed:  # counted, not named: the message reaches the participant's log
        raise DataError(f"{Path(ref_dir) / ds.BOXES}: {len(unboxed)} positive image(s) without a box")
    run = read_ingestion_output(res_dir, ref["ids"], ref["images"].shape[1:])
    return ref, run


def read_baseline(ref_dir: str | Path) -> dict | None:
    """The baseline's scores shown as a reference row, from the reference folder; None when absent."""
    path = Path(ref_dir) / BASELINE_SCORES
    if not path.is_file():
        return None
    scores = ds.read_json(path)
    if not isinstance(scores, dict) or not all(v is None or isinstance(v, (int, float))
                                               for v in scores.values()):
        raise DataError(f"{path}: expected an object of numbers keyed by score key")
    return {key: scores.get(key) for key in SCORE_KEYS}


def explanation_results(split: ScoredSplit, measured: dict) -> dict:
    """The explanation columns' details: counts, why they score as all-zero maps (if so), their means
    over the true positives (the leaderboard columns), bootstrap intervals, the full-positive-set
    variant (missed positives score as all-zero maps), the per-tau cc_map, the all-zero maps of
    predicted positives, and one row per explained true positive."""
    heatmaps = split.heatmaps or {}
    n_positive = len(split.positive_ids)
    zero = sorted(i for i, heatmap in heatmaps.items() if not heatmap.max() > 0)
    result = {"method": split.run["method"], "n_true_positives": len(split.true_positive_ids),
              "n_positives": n_positive, "n_predicted_positive_maps": len(heatmaps), "n_all_zero_maps": len(zero),
              "all_zero_ids": zero, "reason": None, "images": []}
    if split.heatmaps is None:
        result["reason"] = ("the submission offers no explanation (its Model has neither explain() nor "
                            "gradcam_target()), so " + AS_ALL_ZERO_MAPS)
    elif split.maps is None:
        result["reason"] = ("the model predicted no true positive, so there is no heatmap to assess and "
                            + AS_ALL_ZERO_MAPS)
    else:
        result["images"] = mt.image_rows(split.maps, split.true_positive_ids)
    result["means"] = {m.key: measured[m.key]["value"] for m in mt.MAP_METRICS}
    result["ci"] = {m.key: measured[m.key]["ci"] for m in mt.MAP_METRICS}
    result["n_true_positive_all_zero"] = sum(row["all_zero"] for row in result["images"])
    result["full_positive_set"] = {
        m.key: (float(measured[m.key]["images"].sum()) + m.missing(split) * (n_positive - len(result["images"])))
        / n_positive if n_positive else 0.0 for m in mt.MAP_METRICS}
    by_tau = np.array([row["cc_map_by_tau"] for row in result["images"]]).reshape(-1, len(xp.CC_TAUS))
    result["cc_map_by_tau"] = {f"{tau:.1f}": float(by_tau[:, k].mean()) if len(by_tau) else 0.0
                               for k, tau in enumerate(xp.CC_TAUS)}
    enrichment = pd.to_numeric(pd.Series([row["enrichment"] for row in result["images"]], dtype=object),
                               errors="coerce").dropna()
    result["enrichment_median"] = float(enrichment.median()) if len(enrichment) else None
    return result


def blind_results(split: ScoredSplit) -> dict:
    """The box-blind maps' mean scores on every positive of the split, and the best of them (the
    explanation columns' chance references)."""
    maps = {name: {m.key: m.value(blind) for m in mt.MAP_METRICS}
            for name, blind in split.box_blind.items()}
    return {"maps": maps, "best": {m.key: m.chance_reference(split) for m in mt.MAP_METRICS},
            "prior_reference": xp.prior_reference(split.ref["box_prior"])}


def evidence_results(split: ScoredSplit, measured: dict) -> dict:
    """The evidence columns' details: how ingestion measured (grid, sampled images of this split, of which
    scored opacity images), the randomisation check of Grad-CAM when it ran, and each column's measure
    (per image ids and values: kept only for per-image results)."""
    said = split.run["report"].get("evidence") or {}
    return {"cells": len(split.run["evidence"]["cells"]), "grid": said.get("grid"),
            "n_sampled": len(split.run["evidence"]["ids"]), "n_opacity_sampled": len(split.evidence.ids),
            "randomisation": split.run["report"].get("randomisation"),
            **{key: measured[key] for key in mt.EVIDENCE_KEYS}}


def bias_results(ref: dict, run: dict, scored: np.ndarray, explanation: dict) -> dict:
    """Metrics with intervals by sex, by view position and by class × view position (probes left out)."""
    meta = ref["meta"].loc[ref["ids"]][scored]
    truth = ref["labels"][scored]
    proba = run["predictions"]["proba"].to_numpy()[scored]
    predicted = run["predictions"]["label"].to_numpy()[scored]
    position = {image_id: k for k, image_id in enumerate(meta.index)}
    inside = {position[row["id"]]: row["activation_in_box"] for row in explanation["images"]}
    values = {column: groups.column_values(meta, column) for column in groups.BIAS_COLUMNS}
    result = {column: groups.group_rows(truth, proba, predicted, values[column], inside)
              for column in groups.BIAS_COLUMNS}
    view = values[groups.WORST_GROUP_COLUMN]
    result["class_view_position"] = groups.group_rows(truth, proba, predicted, groups.class_by(truth, view),
                                                      inside)
    return result


def compute_results(ref: dict, run: dict, ref_dir: str | Path = "", progress: bool = True,
                    per_image: bool = False) -> dict:
    """Everything scoring reports, as one JSON-ready mapping (written as detailed_scores.json):

    - ``scores``: every metric of the table (``hygieia.scoring.metrics``), None where the split
      cannot measure it; ``ci`` {key: [low, high]}; ``chance`` {key: the best blind rule's score on
      this split, computed} and ``baseline`` {key: value} (the reference rows; ``baseline`` None
      without baseline_scores.json); ``split``, ``final``, ``n_scored`` (probes left out), ``n_probes``;
    - ``classification``: accuracy, recall, precision, fbeta2, auroc, balanced_accuracy,
      accuracy_std_error, confusion_matrix [[tn, fp], [fn, tp]], counts, ``ci``, ``roc`` {fpr, tpr};
    - ``explanation``: method, counts (true positives, positives, all-zero maps), reason (why the
      columns are 0, or None), means, ci, full_positive_set, cc_map_by_tau, enrichment_median,
      histograms (``HISTOGRAM_BINS`` counts of true positives per key of ``HISTOGRAM_KEYS``);
    - ``blind_maps``: box-blind maps' means on the split's positives; ``worst_group``; ``shortcut``;
    - ``bias``: {"sex", "view_position", "class_view_position"}: one row per group, with intervals;
    - ``evidence``: what ingestion measured through the model (``evidence_results``);
    - ``ingestion`` (from ingestion.json) and ``bootstrap`` (resamples, seed, level).

    ``per_image`` (only for labels the requester owns) keeps ``explanation.images`` (one row per true
    positive), ``explanation.all_zero_ids`` and ``classification.roc``; without it, in both phases,
    no id, per-image row or ROC point is kept (``aggregates_only``).
    """
    info = ref["split_info"]
    split = ScoredSplit.of_run(ref, run, progress)
    cls.require_both_classes(split.truth)
    measured = {m.key: split.measured(m) for m in mt.METRICS}
    scores = {key: None if result["value"] is None else round(float(result["value"]), DIGITS)
              for key, result in measured.items()}
    if not all(v is None or math.isfinite(v) for v in scores.values()) \
            or any(scores[m.key] is None for m in mt.METRICS if not m.nullable):
        raise HygieiaError(f"internal error: a score is not finite: {scores}")
    classification = cls.classification_metrics(split.truth, split.scored_proba, split.scored_predicted)
    classification["ci"] = {name: cls.percentile_interval(rate(split.resampled)) for name, rate in cls.RATES.items()}
    classification["ci"]["auroc"] = measured["auroc"]["ci"]
    classification["roc"] = cls.roc_points(split.truth, split.scored_proba)
    explanation = explanation_results(split, measured)
    results = {"scores": scores, "ci": {key: result["ci"] for key, result in measured.items()},
               "chance": {m.key: m.chance_reference(split) for m in mt.METRICS}, "baseline": read_baseline(ref_dir),
               "split": info["split"], "final": info["final"], "per_image": per_image,
               "n_scored": int(split.scored.sum()),
               "n_probes": int(ref["probes"].sum()), "classification": classification,
               "explanation": explanation, "blind_maps": blind_results(split),
               "worst_group": measured["worst_group_accuracy"], "shortcut": measured["shortcut_gap"],
               "bias": bias_results(ref, run, split.scored, explanation),
               "evidence": evidence_results(split, measured),
               "ingestion": {k: run["report"].get(k) for k in ("explanation", "durations", "device", "counts")},
               "bootstrap": {"resamples": cls.N_RESAMPLES, "seed": cls.BOOTSTRAP_SEED, "level": cls.CI_LEVEL}}
    results["explanation"]["histograms"] = histograms(results["explanation"]["images"])
    return clean(results if per_image else aggregates_only(results))


def histograms(images: list[dict]) -> dict:
    """Counts of true positives in ``HISTOGRAM_BINS`` equal bins of [0, 1], per key of ``HISTOGRAM_KEYS``.

    Coarse on purpose: a histogram is published, and a participant can steer each image's value
    through its map; with one bin per image the counts would name the true positives. Ten fixed bins
    give at most ten counts of groups the participant chose, as a few more scores would."""
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    return {"edges": edges.tolist(),
            **{key: np.histogram([row[key] for row in images], bins=edges)[0].tolist() for key in HISTOGRAM_KEYS}}


def aggregates_only(results: dict) -> dict:
    """What a participant and the public see, in both phases: no id, no per-image row, no ROC point.
    With the participant's own probabilities, the ROC curve's steps give every label away (each step
    up is a positive, each step right a negative, in the order of those probabilities)."""
    explanation = {k: v for k, v in results["explanation"].items() if k not in ("images", "all_zero_ids")}
    classification = {k: v for k, v in results["classification"].items() if k != "roc"}
    evidence = {k: {field: v for field, v in value.items() if field not in ("ids", "images")}
                if k in mt.EVIDENCE_KEYS else value for k, value in results["evidence"].items()}
    return {**results, "explanation": explanation, "classification": classification, "evidence": evidence}


def write_scores(out_dir: Path, results: dict) -> None:
    """scores.json and scores.txt hold the measured leaderboard keys (a None is left out: Codabench
    stores scores as non-null decimals); detailed_scores.json holds everything."""
    scores = {k: v for k, v in results["scores"].items() if v is not None}
    write_json(out_dir / SCORES_JSON, scores)
    write_text(out_dir / SCORES_TXT, "".join(f"{key}: {scores[key]:.{DIGITS}f}\n" for key in scores))
    write_json(out_dir / DETAILED_JSON, results)


def write_error_page(out_dir: Path, err: HygieiaError) -> None:
    """The participant's detailed results for a refused run; a failure to write it is only reported."""
    from hygieia.scoring.report import render_error

    try:
        write_text(out_dir / DETAILED_HTML, render_error(str(err), getattr(err, "traceback", None)))
    except OSError as write_err:
        print(f"scoring: could not write {out_dir / DETAILED_HTML}: {write_err}", file=sys.stderr)


def score(ref_dir: str | Path, res_dir: str | Path, out_dir: str | Path, progress: bool = True,
          per_image: bool = False) -> dict:
    """Score one run into ``out_dir`` and return the detailed results; ``per_image`` adds the
    per-image results (ids, galleries: only for labels the requester owns).

    Raises HygieiaError (IngestionFailed or DataError) naming the cause of a broken run, after writing
    detailed_results.html with that cause.
    """
    from hygieia.scoring.report import render_report

    out_dir = Path(out_dir)
    try:
        ref, run = load_inputs(ref_dir, res_dir)
        results = compute_results(ref, run, ref_dir, progress, per_image)
    except HygieiaError as err:
        write_error_page(out_dir, err)
        raise
    write_scores(out_dir, results)
    write_text(out_dir / DETAILED_HTML, render_report(results, ref, run))
    return results


def parse_paths(argv: list[str]) -> tuple[Path, Path, Path]:
    if len(argv) == 0:
        return tuple(Path(p) for p in CODABENCH_PATHS)
    if len(argv) == 2:
        return Path(argv[0]) / "ref", Path(argv[0]) / "res", Path(argv[1])
    if len(argv) == 3:
        return tuple(Path(p) for p in argv)
    raise HygieiaError(f"usage: score.py [INPUT OUTPUT | REF_DIR RES_DIR OUT_DIR]; got {len(argv)} arguments")


def main(argv: list[str] | None = None) -> int:
    """The scoring program: 0 when scores were written, 1 for a refused run, 2 for a usage error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        ref_dir, res_dir, out_dir = parse_paths(argv)
        per_image = per_image_requested()
    except HygieiaError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        results = score(ref_dir, res_dir, out_dir, per_image=per_image)
    except HygieiaError as err:
        print(f"scoring refused: {err}", file=sys.stderr)
        return 1
    print(score_line(results["scores"]))
    return 0


def per_image_requested() -> bool:
    """Whether ``$HYGIEIA_PER_IMAGE`` asks for per-image results (said on stderr when it does)."""
    value = os.environ.get(PER_IMAGE_ENV, "")
    if value not in ("", "0", "1"):
        raise HygieiaError(f"${PER_IMAGE_ENV} must be 1 (per-image results) or 0, got {value!r}")
    if value == "1":
        print(f"scoring: ${PER_IMAGE_ENV}=1: the outputs name images and show them (ROC curve, galleries, "
              "per-image table); for labels you own, never for a published run", file=sys.stderr)
    return value == "1"


def score_line(scores: dict) -> str:
    """The scores on one line, for the log ("null" where the split cannot measure a column)."""
    return ", ".join(f"{k}={'null' if v is None else f'{v:.4f}'}" for k, v in scores.items())
