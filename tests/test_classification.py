"""Classification metrics against scikit-learn, and their bootstrap intervals."""

import numpy as np
import pytest
from sklearn import metrics

from hygieia.errors import DataError
from hygieia.scoring import classification as cls


def random_case(seed, n=None):
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(5, 300))
    truth = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(np.int64)
    truth[:2] = [0, 1]
    proba = np.round(np.clip(truth * rng.uniform(0, 0.6) + rng.random(n) * 0.7, 0, 1), 2)  # ties
    predicted = (rng.random(n) < rng.uniform(0, 1)).astype(np.int64)
    return truth, proba, predicted


@pytest.mark.parametrize("seed", range(30))
def test_counts_formulas_and_ranks_match_scikit_learn(seed):
    """To the last digit: the leaderboard's values did not move when the formulas replaced scikit-learn."""
    truth, proba, predicted = random_case(seed)
    (tn, fp), (fn, tp) = metrics.confusion_matrix(truth, predicted, labels=[0, 1])
    counts = cls.Counts.of(truth, predicted)
    assert [int(c) for c in counts] == [tp, fp, fn, tn]
    values = cls.rates(counts)
    assert values["accuracy"] == metrics.accuracy_score(truth, predicted)
    assert values["recall"] == metrics.recall_score(truth, predicted, zero_division=0)
    assert values["precision"] == metrics.precision_score(truth, predicted, zero_division=0)
    assert values["fbeta2"] == metrics.fbeta_score(truth, predicted, beta=2, zero_division=0)
    assert values["balanced_accuracy"] == metrics.balanced_accuracy_score(truth, predicted)
    assert cls.weighted_auroc(truth, proba, np.ones(len(truth)))[0] == pytest.approx(
        metrics.roc_auc_score(truth, proba))


@pytest.mark.parametrize("seed", range(10))
def test_weighted_auroc_equals_the_auroc_of_the_repeated_sample(seed):
    truth, proba, _ = random_case(seed)
    counts = cls.bootstrap_counts(len(truth), n_resamples=3, seed=seed)
    for row, weights in zip(cls.weighted_auroc(truth, proba, counts), counts):
        repeated = np.repeat(np.arange(len(truth)), weights)
        if len(set(truth[repeated])) == 2:
            assert row == pytest.approx(metrics.roc_auc_score(truth[repeated], proba[repeated]))
        else:
            assert np.isnan(row)


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics(seed):
    truth, proba, predicted = random_case(seed)
    result = cls.classification_metrics(truth, proba, predicted)
    assert result["auroc"] == pytest.approx(metrics.roc_auc_score(truth, proba))
    assert result["confusion_matrix"] == metrics.confusion_matrix(truth, predicted).tolist()
    assert (result["n"], result["n_positive"], result["n_predicted_positive"]) == (
        len(truth), truth.sum(), predicted.sum())
    p = result["accuracy"]
    assert result["accuracy_std_error"] == pytest.approx(np.sqrt(p * (1 - p) / len(truth)))


def test_bernoulli_error_of_the_original_design():
    truth = np.array([1] * 1000 + [0] * 1000)
    predicted = truth.copy()
    predicted[:400] = 0  # accuracy 0.8 on 2000 images: the design's 0.8 ± 0.0089
    result = cls.classification_metrics(truth, np.linspace(0, 1, 2000), predicted)
    assert result["accuracy"] == 0.8
    assert result["accuracy_std_error"] == pytest.approx(0.0089, abs=5e-5)


def test_no_predicted_positive_gives_zero_not_nan():
    truth = np.array([0, 1, 1, 0])
    result = cls.classification_metrics(truth, np.array([0.1, 0.4, 0.3, 0.2]), np.zeros(4, int))
    assert result["precision"] == 0.0 and result["fbeta2"] == 0.0 and result["recall"] == 0.0
    assert result["auroc"] == 1.0


def test_one_class_reference_is_a_clear_error():
    with pytest.raises(DataError, match="only class"):
        cls.classification_metrics(np.ones(5, int), np.full(5, 0.5), np.ones(5, int))


def test_bootstrap_intervals_hold_the_estimate_and_are_reproducible():
    truth, proba, _ = random_case(3, n=400)
    predicted = (proba > 0.5).astype(np.int64)
    point = cls.classification_metrics(truth, proba, predicted)
    intervals = cls.bootstrap_classification(truth, proba, predicted)
    assert intervals == cls.bootstrap_classification(truth, proba, predicted)
    assert intervals != cls.bootstrap_classification(truth, proba, predicted, seed=1)
    for name in cls.BOOTSTRAPPED:
        low, high = intervals[name]
        assert low <= point[name] <= high, name
        assert 0 < high - low < 0.25, name
    # the interval narrows as the sample grows (about 1/sqrt(n))
    small = cls.bootstrap_classification(truth[:100], proba[:100], predicted[:100])["accuracy"]
    assert small[1] - small[0] > 1.4 * (intervals["accuracy"][1] - intervals["accuracy"][0])


def test_weighted_auroc_is_nan_for_one_class_samples():
    truth, proba = np.array([0, 1, 1]), np.array([0.2, 0.5, 0.9])
    auc = cls.weighted_auroc(truth, proba, np.array([[0, 1, 2], [1, 1, 1], [1, 0, 0]]))
    assert np.isnan(auc[0]) and auc[1] == 1.0 and np.isnan(auc[2])


def test_bootstrap_mean():
    values = np.random.default_rng(0).random(200)
    low, high = cls.bootstrap_mean(values)
    assert low < values.mean() < high
    assert cls.bootstrap_mean(np.array([])) is None
