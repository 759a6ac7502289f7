"""Metrics and the linear probe, checked against scikit-learn (a test-only dependency)."""

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score

from s4mi_jax.evaluators.linear_probe import (
    LinearProbe,
    evaluate_linear_probe,
    fit_linear_probe,
)
from s4mi_jax.evaluators.metrics import accuracy, classification_metrics, roc_auc

SEEDS = [0, 1, 2, 3, 4]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# accuracy


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(20, 200)), int(rng.integers(2, 6))
    labels = rng.integers(0, c, n)
    probs = _softmax(rng.normal(size=(n, c)))
    preds = probs.argmax(axis=1)
    expected = accuracy_score(labels, preds)
    assert 0.0 < expected < 1.0  # a trivial case would not catch an off-by-one or a wrong axis
    assert accuracy(labels, preds) == pytest.approx(expected, abs=1e-15)
    assert accuracy(labels, probs) == pytest.approx(expected, abs=1e-15)


def test_accuracy_rejects_length_mismatch():
    with pytest.raises(ValueError):
        accuracy(np.array([0, 1, 1]), np.array([0, 1]))


# ---------------------------------------------------------------------------------------------
# roc_auc


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_auc_with_ties_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 300))
    labels = rng.integers(0, 2, n)
    # Shift positives up so the AUC is far from 0.5, then round hard so ties are everywhere:
    # ignoring ties (plain ordinal ranks) would be off by far more than the tolerance.
    scores = np.round(rng.uniform(size=n) * 0.8 + 0.2 * labels, 1)
    assert len(np.unique(scores)) < n // 3
    expected = roc_auc_score(labels, scores)
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    # (N, 2) probabilities use column 1 as the positive-class score.
    two_col = np.stack([1.0 - scores, scores], axis=1)
    assert roc_auc(labels, two_col) == pytest.approx(expected, abs=1e-12)
    # Bool labels are the same as 0/1.
    assert roc_auc(labels.astype(bool), scores) == pytest.approx(expected, abs=1e-12)


def test_binary_auc_counts_a_tie_as_half():
    # One positive and one negative with equal scores: AUC is exactly 1/2.
    assert roc_auc(np.array([0, 1]), np.array([0.3, 0.3])) == 0.5
    # Perfect ranking and reversed ranking.
    assert roc_auc(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9])) == 1.0
    assert roc_auc(np.array([0, 0, 1]), np.array([0.9, 0.2, 0.1])) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", [3, 4, 5])
def test_ovr_macro_auc_matches_sklearn(seed, num_classes):
    rng = np.random.default_rng(seed * 10 + num_classes)
    n = int(rng.integers(60, 300))
    labels = rng.permutation(np.arange(n) % num_classes)  # every class present
    # Rows drawn from a small pool of probability vectors, so each column has many ties, and
    # nudged towards the true class so the per-class AUCs differ from 0.5 and from each other.
    pool = _softmax(rng.normal(size=(7, num_classes)))
    probs = pool[rng.integers(0, len(pool), n)]
    probs = 0.7 * probs + 0.3 * np.eye(num_classes)[labels] * (rng.uniform(size=(n, 1)) > 0.5)
    probs /= probs.sum(axis=1, keepdims=True)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert roc_auc(labels, probs) == pytest.approx(expected, abs=1e-12)


def test_ovr_auc_averages_only_classes_present():
    rng = np.random.default_rng(0)
    n = 80
    labels = rng.integers(0, 2, n)  # class 2 never occurs
    probs = _softmax(rng.normal(size=(n, 3)))
    present = [roc_auc_score(labels == c, probs[:, c]) for c in (0, 1)]
    assert roc_auc(labels, probs) == pytest.approx(np.mean(present), abs=1e-12)


def test_auc_single_class_is_nan():
    rng = np.random.default_rng(0)
    ones = np.ones(10, dtype=np.int64)
    assert math.isnan(roc_auc(ones, rng.uniform(size=10)))
    assert math.isnan(roc_auc(np.zeros(10, np.int64), rng.uniform(size=10)))
    assert math.isnan(roc_auc(ones, _softmax(rng.normal(size=(10, 2)))))
    assert math.isnan(roc_auc(2 * ones, _softmax(rng.normal(size=(10, 4)))))
    metrics = classification_metrics(ones, _softmax(rng.normal(size=(10, 3))))
    assert math.isnan(metrics["auroc"])
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_auc_rejects_bad_input():
    with pytest.raises(ValueError):
        roc_auc(np.array([0, 1, 2]), np.array([0.1, 0.5, 0.9]))  # 1-D scores need 0/1 labels
    with pytest.raises(ValueError):
        roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_classification_metrics_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 150, 4
    labels = rng.permutation(np.arange(n) % c)
    probs = _softmax(rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels])
    metrics = classification_metrics(labels, probs)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(1)), abs=1e-15)
    assert metrics["auroc"] == pytest.approx(
        roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-12
    )


# ---------------------------------------------------------------------------------------------
# linear probe


def test_linear_probe_separable_data_is_perfect():
    rng = np.random.default_rng(0)
    num_classes, dim = 3, 8
    centers = rng.normal(size=(num_classes, dim)) * 4.0

    def blobs(n):
        y = rng.permutation(np.arange(n) % num_classes)
        # Offset and anisotropic scale: the probe must standardize and fit a bias to get these.
        x = centers[y] + 0.5 * rng.normal(size=(n, dim))
        return x * np.linspace(0.1, 10.0, dim) + 50.0, y

    train_x, train_y = blobs(240)
    test_x, test_y = blobs(120)
    metrics = evaluate_linear_probe(train_x, train_y, test_x, test_y, num_classes)
    assert metrics == {"accuracy": 1.0, "auroc": 1.0, "num_train": 240, "num_test": 120}

    probe = fit_linear_probe(train_x, train_y, num_classes)
    assert isinstance(probe, LinearProbe)
    np.testing.assert_allclose(probe.mean, train_x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(probe.std, train_x.std(axis=0), rtol=1e-6)
    proba = probe.predict_proba(test_x)
    assert proba.shape == (120, num_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(probe.predict(test_x), test_y)


def _noisy_problem(seed: int, n: int, num_classes: int, bias: np.ndarray):
    """Overlapping, imbalanced classes (the unpenalized bias matters); features on wild scales."""
    rng = np.random.default_rng(seed)
    dim = 6
    scale, shift = rng.uniform(0.2, 10.0, dim), rng.normal(size=dim) * 20.0
    w_true = rng.normal(size=(dim, num_classes))

    def draw(m):
        z = rng.normal(size=(m, dim))
        y = np.array([rng.choice(num_classes, p=p) for p in _softmax(z @ w_true + bias)])
        return z * scale + shift, y

    return draw(n), draw(100)


@pytest.mark.parametrize(
    ("num_classes", "c_times_l2_n", "bias"),
    [
        # Multinomial: mean logloss + 0.5*l2*||W||^2 <=> 0.5*||W||^2 + C*sum(logloss), C = 1/(l2*N).
        (3, 1.0, np.array([1.5, 0.5, -1.0])),
        # Binary: sklearn fits one vector w = w1 - w0 and the optimum has w0 = -w1, so
        # ||W||^2 = ||w||^2 / 2 and C = 2/(l2*N).
        (2, 2.0, np.array([1.0, -1.0])),
    ],
)
def test_linear_probe_matches_sklearn_logistic_regression(num_classes, c_times_l2_n, bias):
    n, l2 = 300, 0.05  # l2 strong enough that a wrong C mapping moves probabilities by ~0.1
    (train_x, train_y), (test_x, _) = _noisy_problem(num_classes, n, num_classes, bias)
    assert len(np.unique(train_y)) == num_classes

    probe = fit_linear_probe(train_x, train_y, num_classes, l2=l2)

    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    sk = LogisticRegression(
        C=c_times_l2_n / (l2 * n), fit_intercept=True, tol=1e-12, max_iter=10_000
    )
    sk.fit((train_x - mean) / std, train_y)

    for x in (train_x, test_x):
        np.testing.assert_allclose(
            probe.predict_proba(x), sk.predict_proba((x - mean) / std), atol=1e-3
        )
    if num_classes == 2:
        np.testing.assert_allclose(probe.w[:, 1] - probe.w[:, 0], sk.coef_[0], atol=1e-3)
        np.testing.assert_allclose(probe.b[1] - probe.b[0], sk.intercept_[0], atol=1e-3)
    else:
        np.testing.assert_allclose(probe.w, sk.coef_.T, atol=1e-3)
        # The softmax is invariant to a common shift of the biases; compare them centred.
        np.testing.assert_allclose(
            probe.b - probe.b.mean(), sk.intercept_ - sk.intercept_.mean(), atol=1e-3
        )


def test_linear_probe_rejects_bad_labels():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError):
        fit_linear_probe(x, np.array([0, 1, 2, 3]), num_classes=3)
    with pytest.raises(ValueError):
        fit_linear_probe(x, np.array([0, 1, 1]), num_classes=2)
