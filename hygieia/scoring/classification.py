"""Classification metrics on one scored split, with bootstrap confidence intervals.

Point estimates come from scikit-learn. The bootstrap resamples the images with replacement
(fixed seed) and recomputes every metric from weighted confusion counts and one sort of the scores,
all resamples at once.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics

from hygieia.errors import DataError

BETA = 2.0
N_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
BOOTSTRAPPED = ("accuracy", "recall", "precision", "fbeta2", "balanced_accuracy", "auroc")


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, recall, precision, F-beta (beta=2), AUROC (from ``proba``), balanced accuracy,
    the confusion matrix [[tn, fp], [fn, tp]] and the accuracy's Bernoulli standard error
    sqrt(p(1-p)/N). Raises DataError when the true labels hold one class only (AUROC undefined)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    classes = np.unique(y_true)
    if len(classes) < 2:
        raise DataError(f"the reference labels hold only class {classes.tolist()}: AUROC needs both classes")
    accuracy = metrics.accuracy_score(y_true, y_pred)
    (tn, fp), (fn, tp) = metrics.confusion_matrix(y_true, y_pred, labels=[0, 1])
    return {
        "accuracy": float(accuracy),
        "recall": float(metrics.recall_score(y_true, y_pred, zero_division=0)),
        "precision": float(metrics.precision_score(y_true, y_pred, zero_division=0)),
        "fbeta2": float(metrics.fbeta_score(y_true, y_pred, beta=BETA, zero_division=0)),
        "auroc": float(metrics.roc_auc_score(y_true, proba)),
        "balanced_accuracy": float(metrics.balanced_accuracy_score(y_true, y_pred)),
        "accuracy_std_error": float(np.sqrt(accuracy * (1 - accuracy) / len(y_true))),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "n": int(len(y_true)),
        "n_positive": int(y_true.sum()),
        "n_predicted_positive": int(y_pred.sum()),
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, 0.0)


def metrics_from_counts(tp, fp, fn, tn) -> dict:
    """Threshold metrics from confusion counts (arrays of any shape, e.g. one per resample)."""
    tp, fp, fn, tn = (np.asarray(c, dtype=np.float64) for c in (tp, fp, fn, tn))
    recall = _ratio(tp, tp + fn)
    beta2 = BETA ** 2
    return {
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
        "recall": recall,
        "precision": _ratio(tp, tp + fp),
        "fbeta2": _ratio((1 + beta2) * tp, (1 + beta2) * tp + beta2 * fn + fp),
        "balanced_accuracy": (recall + _ratio(tn, tn + fp)) / 2,
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


def bootstrap_counts(n: int, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(B, n) times each image is drawn in each of B resamples of n images with replacement."""
    drawn = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    drawn += np.arange(n_resamples)[:, None] * n
    return np.bincount(drawn.ravel(), minlength=n_resamples * n).reshape(n_resamples, n)


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
    truth = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    counts = bootstrap_counts(len(truth), n_resamples, seed).astype(np.float64)
    tp = counts @ (truth * pred)
    fp = counts @ ((1 - truth) * pred)
    fn = counts @ (truth * (1 - pred))
    tn = len(truth) - tp - fp - fn
    samples = metrics_from_counts(tp, fp, fn, tn)
    samples["auroc"] = weighted_auroc(truth, proba, counts)
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
