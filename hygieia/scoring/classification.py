"""Classification metrics on one scored split, with bootstrap confidence intervals.

Each threshold metric is one function of the confusion counts (``Counts``): the same function gives
the point estimate, every bootstrap resample and every group's value (scikit-learn's values, to the
last digit: tests/test_classification.py). AUROC comes from scikit-learn; its resamples from one sort
of the scores. The bootstrap resamples the images with replacement (fixed seed), all resamples at once.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from sklearn import metrics

from hygieia.errors import DataError

BETA = 2.0
N_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95


class Counts(NamedTuple):
    """Confusion counts: numbers, or arrays of them (one per bootstrap resample)."""
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    @classmethod
    def of(cls, y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None = None) -> "Counts":
        """The counts of the labels, or with ``weights`` (B, N) the counts of B weighted samples of them."""
        truth = np.asarray(y_true, dtype=np.float64)
        pred = np.asarray(y_pred, dtype=np.float64)
        weights = np.ones(len(truth)) if weights is None else weights
        tp = weights @ (truth * pred)
        fp = weights @ ((1 - truth) * pred)
        fn = weights @ (truth * (1 - pred))
        return cls(tp, fp, fn, weights.sum(axis=-1) - tp - fp - fn)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, 0.0)


def accuracy(c: Counts) -> np.ndarray:
    return (c.tp + c.tn) / (c.tp + c.fp + c.fn + c.tn)


def recall(c: Counts) -> np.ndarray:
    return _ratio(c.tp, c.tp + c.fn)


def precision(c: Counts) -> np.ndarray:
    return _ratio(c.tp, c.tp + c.fp)


def fbeta(c: Counts, beta: float = BETA) -> np.ndarray:
    """(1 + β²)·P·R / (β²·P + R), from the counts: (1 + β²)·TP / ((1 + β²)·TP + β²·FN + FP)."""
    beta2 = beta ** 2
    return _ratio((1 + beta2) * c.tp, (1 + beta2) * c.tp + beta2 * c.fn + c.fp)


def balanced_accuracy(c: Counts) -> np.ndarray:
    return (recall(c) + _ratio(c.tn, c.tn + c.fp)) / 2


# The threshold metrics of the detailed results and the group tables.
RATES = {"accuracy": accuracy, "recall": recall, "precision": precision, "fbeta2": fbeta,
         "balanced_accuracy": balanced_accuracy}
BOOTSTRAPPED = (*RATES, "auroc")


def rates(c: Counts) -> dict:
    """Every metric of RATES from the counts (arrays of any shape, e.g. one per resample)."""
    return {name: rate(c) for name, rate in RATES.items()}


def require_both_classes(y_true: np.ndarray) -> None:
    classes = np.unique(y_true)
    if len(classes) < 2:
        raise DataError(f"the reference labels hold only class {classes.tolist()}: AUROC needs both classes")


def auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Area under the ROC curve of the probabilities (scikit-learn); DataError for one class."""
    require_both_classes(y_true)
    return float(metrics.roc_auc_score(y_true, proba))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, y_pred: np.ndarray) -> dict:
    """Every metric of RATES, AUROC (from ``proba``), the confusion matrix [[tn, fp], [fn, tp]] and the
    accuracy's Bernoulli standard error sqrt(p(1-p)/N). Raises DataError when the true labels hold one
    class only (AUROC undefined)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    counts = Counts.of(y_true, y_pred)
    values = {name: float(value) for name, value in rates(counts).items()}
    tp, fp, fn, tn = (int(c) for c in counts)
    return {
        **values,
        "auroc": auroc(y_true, proba),
        "accuracy_std_error": float(np.sqrt(values["accuracy"] * (1 - values["accuracy"]) / len(y_true))),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "n": int(len(y_true)),
        "n_positive": int(y_true.sum()),
        "n_predicted_positive": int(y_pred.sum()),
    }


def weighted_auroc(y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of the sample where image i appears ``weights[b, i]`` times, for each row b of the
    (B, N) weights: the Mann-Whitney statistic with ties counted one half, from one sort of the
    scores. NaN for a row whose sample holds one class only."""
    order = np.argsort(proba, kind="stable")
    scores, positive = np.asarray(proba)[order], np.asarray(y_true)[order].astype(bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))[:, order]
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])  # groups of tied scores
    pos = np.add.reduceat(np.where(positive, weights, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(positive, 0.0, weights), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos * (below + neg / 2)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


@functools.lru_cache(maxsize=8)
def bootstrap_counts(n: int, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(B, n) times each image is drawn in each of B resamples of n images with replacement (read-only:
    drawn once for every metric of the same n)."""
    drawn = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    drawn += np.arange(n_resamples)[:, None] * n
    counts = np.bincount(drawn.ravel(), minlength=n_resamples * n).reshape(n_resamples, n)
    counts.flags.writeable = False
    return counts


def percentile_interval(samples: np.ndarray, level: float = CI_LEVEL) -> list[float] | None:
    """The central ``level`` interval of bootstrap samples (NaNs ignored); None when all are NaN."""
    samples = np.asarray(samples, dtype=np.float64)
    if not np.isfinite(samples).any():
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_classification(y_true: np.ndarray, proba: np.ndarray, y_pred: np.ndarray,
                             n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """95% bootstrap intervals {metric: [low, high]} for the metrics in BOOTSTRAPPED."""
    weights = bootstrap_counts(len(y_true), n_resamples, seed).astype(np.float64)
    samples = rates(Counts.of(y_true, y_pred, weights))
    samples["auroc"] = weighted_auroc(np.asarray(y_true, dtype=np.float64), proba, weights)
    return {name: percentile_interval(samples[name]) for name in BOOTSTRAPPED}


def bootstrap_mean(values: np.ndarray, n_resamples: int = N_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """95% bootstrap interval of the mean of ``values``; None for an empty array."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return None
    return percentile_interval(bootstrap_counts(len(values), n_resamples, seed) @ values / len(values))


def roc_points(y_true: np.ndarray, proba: np.ndarray) -> dict:
    """The ROC curve's points (false and true positive rates) for the report."""
    fpr, tpr, _ = metrics.roc_curve(y_true, proba)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
