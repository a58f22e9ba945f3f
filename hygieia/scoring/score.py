"""The scoring run: read the reference split and ingestion's output, refuse a broken run, compute the
metrics, write scores.json, scores.txt, detailed_scores.json and detailed_results.html.

Command forms (the Codabench scoring program calls ``main``):

    score.py                      /app/input/ref, /app/input/res -> /app/output
    score.py INPUT OUTPUT         INPUT/ref, INPUT/res -> OUTPUT      (legacy CodaLab, metadata.yaml)
    score.py REF_DIR RES_DIR OUT_DIR

detailed_scores.json holds everything else (intervals, per-tau cc_map, confusion matrix, counts, the
per-image explanation table, the bias report): see ``compute_results``.

A broken run (failed ingestion, missing or malformed predictions or heatmaps) exits 1 with a message
naming the cause on stderr and in detailed_results.html; no score is written. ``metadata`` is the
worker's file and is never written here.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hygieia import dataset as ds
from hygieia.errors import DataError, HygieiaError
from hygieia.files import write_json, write_text
from hygieia.scoring import classification as cls
from hygieia.scoring import explanation as xp
from hygieia.scoring.ingestion_output import read_ingestion_output
from hygieia.scoring.keys import SCORE_KEYS

SCORES_JSON = "scores.json"
SCORES_TXT = "scores.txt"
DETAILED_JSON = "detailed_scores.json"
DETAILED_HTML = "detailed_results.html"
EXPLANATION_KEYS = ("activation_in_box", "iou_95", "cc_map", "pointing_game")
BIAS_COLUMNS = ("sex", "view_position")
DIGITS = 6
CODABENCH_PATHS = ("/app/input/ref", "/app/input/res", "/app/output")


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
    unboxed = [i for i, y in zip(ref["ids"], ref["labels"]) if y == 1 and i not in with_boxes]
    if unboxed:
        raise DataError(f"{Path(ref_dir) / ds.BOXES}: positive image(s) without a box: {unboxed[:5]}")
    run = read_ingestion_output(res_dir, ref["ids"], ref["images"].shape[1:])
    return ref, run


def explanation_results(ref: dict, run: dict, progress: bool = True) -> dict:
    """Explanation metrics of every true positive, their means (the leaderboard columns), bootstrap
    intervals, the per-tau cc_map and the full-positive-set variant (missed positives count 0)."""
    truth = ref["labels"]
    predicted = run["predictions"]["label"].to_numpy()
    tp_ids = [i for i, y, p in zip(ref["ids"], truth, predicted) if y == 1 and p == 1]
    n_positive = int(truth.sum())
    result = {"method": run["method"], "n_true_positives": len(tp_ids), "n_positives": n_positive,
              "reason": None, "images": []}
    if run["method"] is None:
        result["reason"] = ("the submission offers no explanation (its Model has neither explain() nor "
                            "gradcam_target()), so the explanation columns score 0")
    elif not tp_ids:
        result["reason"] = ("the model predicted no true positive, so there is no heatmap to assess "
                            "and the explanation columns score 0")
    boxes = ds.boxes_by_id(ref["boxes"])
    if result["reason"] is None:
        for image_id in tqdm(tp_ids, desc="explanation metrics", unit="map", disable=not progress,
                             file=sys.stderr):
            result["images"].append({"id": image_id, **xp.explain_image(run["heatmaps"][image_id],
                                                                       boxes[image_id])})
    table = pd.DataFrame(result["images"], columns=["id", *EXPLANATION_KEYS, "enrichment"])
    result["means"] = {k: float(table[k].mean()) if len(table) else 0.0 for k in EXPLANATION_KEYS}
    result["ci"] = {k: cls.bootstrap_mean(table[k].to_numpy()) for k in EXPLANATION_KEYS}
    result["full_positive_set"] = {k: float(table[k].sum()) / n_positive if n_positive else 0.0
                                   for k in EXPLANATION_KEYS}
    by_tau = np.array([row["cc_map_by_tau"] for row in result["images"]]).reshape(-1, len(xp.CC_TAUS))
    result["cc_map_by_tau"] = {f"{tau:.1f}": float(by_tau[:, k].mean()) if len(by_tau) else 0.0
                               for k, tau in enumerate(xp.CC_TAUS)}
    enrichment = pd.to_numeric(table["enrichment"], errors="coerce").dropna()
    result["enrichment_median"] = float(enrichment.median()) if len(enrichment) else None
    return result


def group_metrics(truth: np.ndarray, proba: np.ndarray, predicted: np.ndarray) -> dict:
    """Classification metrics of one group of images; AUROC None when the group holds one class."""
    tp = int(((truth == 1) & (predicted == 1)).sum())
    fp = int(((truth == 0) & (predicted == 1)).sum())
    fn = int(((truth == 1) & (predicted == 0)).sum())
    tn = len(truth) - tp - fp - fn
    values = {k: float(v) for k, v in cls.metrics_from_counts(tp, fp, fn, tn).items()}
    both = 0 < truth.sum() < len(truth)
    values["auroc"] = float(cls.weighted_auroc(truth, proba, np.ones(len(truth)))[0]) if both else None
    return {"n": len(truth), "n_positive": int(truth.sum()), **values}


def bias_results(ref: dict, run: dict, explanation: dict) -> dict:
    """Metrics by sex and by view position, with counts (and the mean activation_in_box of the
    group's true positives)."""
    meta = ref["meta"].loc[ref["ids"]]
    truth, proba = ref["labels"], run["predictions"]["proba"].to_numpy()
    predicted = run["predictions"]["label"].to_numpy()
    inside = {row["id"]: row["activation_in_box"] for row in explanation["images"]}
    result = {}
    for column in BIAS_COLUMNS:
        values = meta[column].astype(str).to_numpy()
        rows = []
        for group in sorted(set(values)):
            mask = values == group
            group_inside = [inside[i] for i in meta.index[mask] if i in inside]
            rows.append({"group": group, **group_metrics(truth[mask], proba[mask], predicted[mask]),
                         "n_true_positives_explained": len(group_inside),
                         "activation_in_box": float(np.mean(group_inside)) if group_inside else None})
        result[column] = rows
    return result


def compute_results(ref: dict, run: dict, ref_dir: str | Path = "", progress: bool = True) -> dict:
    """Everything scoring reports, as one JSON-ready mapping (written as detailed_scores.json):

    - ``scores``: the leaderboard's SCORE_KEYS; ``split``, ``n_scored``;
    - ``classification``: accuracy, recall, precision, fbeta2, auroc, balanced_accuracy,
      accuracy_std_error, confusion_matrix [[tn, fp], [fn, tp]], counts, ``ci`` {metric: [low, high]},
      ``roc`` {fpr, tpr};
    - ``explanation``: method, n_true_positives, n_positives, reason (why the columns are 0, or None),
      means, ci, full_positive_set (missed positives count 0), cc_map_by_tau {"0.2": ...},
      enrichment_median, images (one row per true positive: id and explain_image's fields);
    - ``bias``: {"sex": [...], "view_position": [...]}, one row of metrics and counts per group;
    - ``ingestion`` (from ingestion.json) and ``bootstrap`` (resamples, seed, level).
    """
    truth = ref["labels"]
    proba = run["predictions"]["proba"].to_numpy()
    predicted = run["predictions"]["label"].to_numpy()
    classification = cls.classification_metrics(truth, proba, predicted)
    classification["ci"] = cls.bootstrap_classification(truth, proba, predicted)
    classification["roc"] = cls.roc_points(truth, proba)
    explanation = explanation_results(ref, run, progress)
    scores = {**{k: classification[k] for k in cls.BOOTSTRAPPED}, **explanation["means"]}
    scores = {key: round(float(scores[key]), DIGITS) for key in SCORE_KEYS}
    if not all(math.isfinite(v) for v in scores.values()):
        raise HygieiaError(f"internal error: a score is not finite: {scores}")
    return clean({"scores": scores, "split": Path(ref_dir).name, "n_scored": len(truth),
                  "classification": classification, "explanation": explanation,
                  "bias": bias_results(ref, run, explanation),
                  "ingestion": {k: run["report"].get(k) for k in ("explanation", "durations", "device",
                                                                   "counts")},
                  "bootstrap": {"resamples": cls.N_RESAMPLES, "seed": cls.BOOTSTRAP_SEED,
                                "level": cls.CI_LEVEL}})


def write_scores(out_dir: Path, results: dict) -> None:
    scores = results["scores"]
    write_json(out_dir / SCORES_JSON, scores)
    write_text(out_dir / SCORES_TXT, "".join(f"{key}: {scores[key]:.{DIGITS}f}\n" for key in SCORE_KEYS))
    write_json(out_dir / DETAILED_JSON, results)


def write_error_page(out_dir: Path, err: HygieiaError) -> None:
    """The participant's detailed results for a refused run; a failure to write it is only reported."""
    from hygieia.scoring.report import render_error

    try:
        write_text(out_dir / DETAILED_HTML, render_error(str(err), getattr(err, "traceback", None)))
    except OSError as write_err:
        print(f"scoring: could not write {out_dir / DETAILED_HTML}: {write_err}", file=sys.stderr)


def score(ref_dir: str | Path, res_dir: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    """Score one run into ``out_dir`` and return the detailed results.

    Raises HygieiaError (IngestionFailed or DataError) naming the cause of a broken run, after writing
    detailed_results.html with that cause.
    """
    from hygieia.scoring.report import render_report

    out_dir = Path(out_dir)
    try:
        ref, run = load_inputs(ref_dir, res_dir)
        results = compute_results(ref, run, ref_dir, progress)
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
    except HygieiaError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        results = score(ref_dir, res_dir, out_dir)
    except HygieiaError as err:
        print(f"scoring refused: {err}", file=sys.stderr)
        return 1
    print(", ".join(f"{k}={v:.4f}" for k, v in results["scores"].items()))
    return 0
