"""Metrics and the linear probe, checked against scikit-learn (a test-only dependency)."""

import math
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)

from s4mi_jax.evaluators import metrics as metrics_module
from s4mi_jax.evaluators.linear_probe import (
    LinearProbe,
    evaluate_linear_probe,
    fit_linear_probe,
)
from s4mi_jax.evaluators.metrics import (
    accuracy,
    balanced_accuracy,
    bootstrap_ci,
    classification_metrics,
    multilabel_roc_auc,
    precision_recall_f1,
    roc_auc,
    subset_accuracy,
)

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
# single-label F1 family, balanced accuracy, flat classification_metrics

CLASS_COUNTS = [2, 3, 5]

HEADLINE_SINGLE = [
    "accuracy",
    "balanced_accuracy",
    "micro_f1",
    "macro_f1",
    "weighted_f1",
    "recall",
    "auroc",
]
HEADLINE_MULTI = [k for k in HEADLINE_SINGLE if k != "balanced_accuracy"]


def _per_class_keys(num_classes: int) -> list[str]:
    return [
        f"{m}/{c}" for m in ("precision", "recall", "f1", "support") for c in range(num_classes)
    ]


def _single_label_problem(seed: int, n: int, num_classes: int):
    """Imbalanced classes with class-dependent difficulty, so macro, weighted and micro differ."""
    rng = np.random.default_rng(seed)
    prior = rng.permutation(np.arange(1, num_classes + 1)) + rng.uniform(0.0, 0.5, num_classes)
    prior /= prior.sum()
    labels = rng.choice(num_classes, size=n, p=prior)
    labels[:num_classes] = np.arange(num_classes)  # every class present
    signal = rng.uniform(0.3, 2.0, num_classes)
    probs = _softmax(rng.normal(size=(n, num_classes)) + np.eye(num_classes)[labels] * signal)
    return labels, probs


def _multilabel_problem(seed: int, n: int, num_labels: int):
    """Multi-hot labels with per-label prevalence and signal; sigmoid probabilities."""
    rng = np.random.default_rng(seed)
    prevalence = rng.uniform(0.1, 0.6, num_labels)
    labels = (rng.uniform(size=(n, num_labels)) < prevalence).astype(np.int64)
    labels[:2] = [[0] * num_labels, [1] * num_labels]  # both classes in every column
    signal = rng.uniform(0.5, 3.0, num_labels)
    probs = 1.0 / (1.0 + np.exp(-(rng.normal(size=(n, num_labels)) + signal * (2 * labels - 1))))
    return labels, probs


def _close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def _check_against_sklearn_single(labels, probs, num_classes, metrics):
    preds = probs.argmax(axis=1)
    f1 = {avg: f1_score(labels, preds, average=avg, zero_division=0) for avg in ("micro", "macro")}
    f1["weighted"] = f1_score(labels, preds, average="weighted", zero_division=0)
    for avg, value in f1.items():
        _close(metrics[f"{avg}_f1"], value)
    _close(metrics["recall"], recall_score(labels, preds, average="micro", zero_division=0))
    _close(metrics["accuracy"], accuracy_score(labels, preds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when preds hold classes absent in labels
        expected = balanced_accuracy_score(labels, preds)
    _close(metrics["balanced_accuracy"], expected)
    _close(_no_warnings(balanced_accuracy, labels, preds), expected)
    p, r, f, s = precision_recall_fscore_support(
        labels, preds, labels=range(num_classes), zero_division=0
    )
    for c in range(num_classes):
        _close(metrics[f"precision/{c}"], p[c])
        _close(metrics[f"recall/{c}"], r[c])
        _close(metrics[f"f1/{c}"], f[c])
        assert metrics[f"support/{c}"] == s[c]


@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
def test_single_label_metrics_match_sklearn(seed, num_classes):
    labels, probs = _single_label_problem(seed, 200, num_classes)
    preds = probs.argmax(axis=1)
    metrics = _no_warnings(classification_metrics, labels, probs)
    assert list(metrics) == HEADLINE_SINGLE + _per_class_keys(num_classes)
    assert all(isinstance(v, float) for v in metrics.values())
    # Non-trivial: micro, macro, weighted and balanced all differ, so swapping any would show.
    assert 0.2 < metrics["accuracy"] < 0.95
    headline = [metrics[k] for k in ("micro_f1", "macro_f1", "weighted_f1", "balanced_accuracy")]
    assert len(set(np.round(headline, 10))) == 4
    _check_against_sklearn_single(labels, probs, num_classes, metrics)
    if num_classes == 2:
        expected_auc = roc_auc_score(labels, probs[:, 1])
    else:
        expected_auc = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    _close(metrics["auroc"], expected_auc)
    tied = _tied(probs)  # ties count 1/2, as in sklearn
    if num_classes == 2:
        expected_auc = roc_auc_score(labels, tied[:, 1])
    else:
        # sklearn's multiclass path insists on rows summing to 1; OvR macro is this mean.
        expected_auc = np.mean([roc_auc_score(labels == c, tied[:, c]) for c in range(num_classes)])
    _close(classification_metrics(labels, tied)["auroc"], expected_auc)

    # The standalone functions agree with the flat dict.
    _close(balanced_accuracy(labels, probs), metrics["balanced_accuracy"])
    _close(balanced_accuracy(labels, preds), metrics["balanced_accuracy"])
    prf = _no_warnings(precision_recall_f1, labels, preds, num_classes)
    for name in ("precision", "recall", "f1", "support"):
        expected = [metrics[f"{name}/{c}"] for c in range(num_classes)]
        _close(prf[f"{name}_per_class"], expected)
    assert prf["support_per_class"].dtype == np.int64
    for key in ("micro_f1", "macro_f1", "weighted_f1", "recall"):
        assert prf[key] == metrics[key]
    # Single-label micro recall (S4MI's recall) and micro-F1 are accuracy.
    _close(metrics["recall"], metrics["accuracy"])
    _close(metrics["micro_f1"], metrics["accuracy"])


def test_binary_auroc_uses_column_one():
    # Scores that are not complementary probabilities: column 0 carries a different ranking,
    # which an average over both one-vs-rest columns would mix in.
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(80) % 2)
    scores = rng.uniform(size=(80, 2)) + 0.5 * np.stack([labels, labels], axis=1)
    metrics = classification_metrics(labels, scores)
    _close(metrics["auroc"], roc_auc_score(labels, scores[:, 1]))
    assert abs(roc_auc_score(labels == 0, scores[:, 0]) - metrics["auroc"]) > 0.1


def test_class_never_predicted():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(90) % 3)
    probs = _softmax(rng.normal(size=(90, 3)) + 2.0 * np.eye(3)[labels])
    probs[:, 2] = 0.0  # class 2 occurs but is never the argmax
    probs /= probs.sum(axis=1, keepdims=True)
    metrics = _no_warnings(classification_metrics, labels, probs)
    assert metrics["precision/2"] == 0.0 and metrics["recall/2"] == 0.0 and metrics["f1/2"] == 0.0
    assert metrics["support/2"] == 30.0
    assert all(np.isfinite(v) for v in metrics.values())
    # Class 2 is in the labels, so it counts (as 0) in the macro average.
    _check_against_sklearn_single(labels, probs, 3, metrics)
    assert metrics["macro_f1"] < (metrics["f1/0"] + metrics["f1/1"]) / 2


def test_class_absent_from_labels_and_predictions_is_left_out_of_macro():
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.arange(60) % 2)
    probs = _softmax(rng.normal(size=(60, 3)) + 1.0 * np.eye(3)[labels])
    probs[:, 2] = 0.0
    metrics = _no_warnings(classification_metrics, labels, probs)
    assert metrics["support/2"] == 0.0 and metrics["f1/2"] == 0.0
    _check_against_sklearn_single(labels, probs, 3, metrics)  # sklearn's default labels: {0, 1}
    _close(metrics["macro_f1"], (metrics["f1/0"] + metrics["f1/1"]) / 2)


@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
def test_single_class_in_labels(num_classes):
    rng = np.random.default_rng(num_classes)
    labels = np.ones(50, dtype=np.int64)
    probs = _softmax(rng.normal(size=(50, num_classes)) + 0.8 * np.eye(num_classes)[labels])
    assert 0 < np.mean(probs.argmax(1) == 1) < 1  # some right, some wrong
    metrics = _no_warnings(classification_metrics, labels, probs)
    assert math.isnan(metrics["auroc"])
    finite = {k: v for k, v in metrics.items() if k != "auroc"}
    assert all(np.isfinite(v) for v in finite.values())
    _check_against_sklearn_single(labels, probs, num_classes, metrics)
    assert metrics["balanced_accuracy"] == metrics["recall/1"]


def test_empty_input_is_nan():
    for metrics in (
        _no_warnings(classification_metrics, np.array([], dtype=np.int64), np.zeros((0, 3))),
        _no_warnings(classification_metrics, np.zeros((0, 3)), np.zeros((0, 3)), multilabel=True),
    ):
        assert len(metrics) > 10
        for k, v in metrics.items():
            assert v == 0.0 if k.startswith("support/") else math.isnan(v), k
    assert math.isnan(balanced_accuracy(np.array([], np.int64), np.zeros((0, 3))))
    assert math.isnan(subset_accuracy(np.zeros((0, 2)), np.zeros((0, 2))))
    assert math.isnan(multilabel_roc_auc(np.zeros((0, 2)), np.zeros((0, 2))))
    prf = precision_recall_f1(np.array([], np.int64), np.array([], np.int64), 2)
    assert math.isnan(prf["macro_f1"]) and np.all(np.isnan(prf["f1_per_class"]))
    ci = _no_warnings(bootstrap_ci, np.array([], np.int64), np.zeros((0, 3)), n_boot=20)
    assert list(ci) == HEADLINE_SINGLE
    assert all(math.isnan(lo) and math.isnan(hi) for lo, hi in ci.values())


def test_bad_input_raises():
    with pytest.raises(ValueError):
        precision_recall_f1(np.array([0, 1]), np.array([0, 1]))  # num_classes required
    with pytest.raises(ValueError):
        precision_recall_f1(np.array([0, 1]), np.array([0, 2]), 2)  # pred out of range
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3))  # label out of range
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 1]), np.ones((2, 1)))  # single-label needs C >= 2
    with pytest.raises(ValueError):
        classification_metrics(np.array([[0, 2]]), np.ones((1, 2)), multilabel=True)  # not 0/1
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 1]), np.ones((2, 2)), multilabel=True)  # not (N, C)
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([0, 1]), np.eye(2), keys=["f1"])  # unknown key


# ---------------------------------------------------------------------------------------------
# multi-label


def _check_against_sklearn_multi(labels, probs, metrics, threshold=0.5):
    preds = (probs > threshold).astype(np.int64)
    for avg in ("micro", "macro", "weighted"):
        _close(metrics[f"{avg}_f1"], f1_score(labels, preds, average=avg, zero_division=0))
    _close(metrics["recall"], recall_score(labels, preds, average="micro", zero_division=0))
    _close(metrics["accuracy"], accuracy_score(labels, preds))
    p, r, f, s = precision_recall_fscore_support(labels, preds, zero_division=0)
    for c in range(labels.shape[1]):
        _close(metrics[f"precision/{c}"], p[c])
        _close(metrics[f"recall/{c}"], r[c])
        _close(metrics[f"f1/{c}"], f[c])
        assert metrics[f"support/{c}"] == s[c]


@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("num_labels", CLASS_COUNTS)
def test_multilabel_metrics_match_sklearn(seed, num_labels):
    labels, probs = _multilabel_problem(seed, 200, num_labels)
    metrics = _no_warnings(classification_metrics, labels, probs, multilabel=True)
    assert list(metrics) == HEADLINE_MULTI + _per_class_keys(num_labels)
    assert 0.05 < metrics["accuracy"] < 1.0
    assert metrics["micro_f1"] != metrics["macro_f1"] != metrics["weighted_f1"]
    _check_against_sklearn_multi(labels, probs, metrics)
    _close(metrics["auroc"], roc_auc_score(labels, probs, average="macro"))
    tied = classification_metrics(labels, _tied(probs), multilabel=True)
    _close(tied["auroc"], roc_auc_score(labels, _tied(probs), average="macro"))
    # S4MI's F1 counts TP, FP, FN over all sample x label cells.
    preds = probs > 0.5
    tp, fp = np.sum(preds & (labels == 1)), np.sum(preds & (labels == 0))
    fn = np.sum(~preds & (labels == 1))
    _close(metrics["micro_f1"], 2 * tp / (2 * tp + fp + fn))
    _close(metrics["recall"], tp / (tp + fn))

    prf = _no_warnings(precision_recall_f1, labels, preds.astype(np.int64))
    for key in ("micro_f1", "macro_f1", "weighted_f1", "recall"):
        assert prf[key] == metrics[key]
    _close(prf["f1_per_class"], [metrics[f"f1/{c}"] for c in range(num_labels)])
    _close(subset_accuracy(labels, preds), metrics["accuracy"])
    _close(multilabel_roc_auc(labels, probs), metrics["auroc"])

    # Another threshold moves the predictions, and the metrics follow.
    shifted = _no_warnings(classification_metrics, labels, probs, multilabel=True, threshold=0.3)
    assert shifted["micro_f1"] != metrics["micro_f1"]
    assert shifted["auroc"] == metrics["auroc"]
    _check_against_sklearn_multi(labels, probs, shifted, threshold=0.3)


def test_multilabel_threshold_is_strict():
    labels = np.array([[1, 0], [0, 1]])
    probs = np.array([[0.5, 0.2], [0.1, 0.7]])  # 0.5 is not > 0.5: a false negative
    metrics = classification_metrics(labels, probs, multilabel=True)
    assert metrics["recall/0"] == 0.0 and metrics["recall/1"] == 1.0
    assert metrics["accuracy"] == 0.5


def test_multilabel_zero_column():
    labels, probs = _multilabel_problem(0, 150, 4)
    labels[:, 2] = 0  # label 2 never occurs ...
    for column_predicted in (True, False):  # ... but is predicted sometimes, or never
        probs[:, 2] = np.linspace(0.0, 0.9 if column_predicted else 0.4, len(labels))
        metrics = _no_warnings(classification_metrics, labels, probs, multilabel=True)
        assert metrics["support/2"] == 0.0 and metrics["f1/2"] == 0.0
        assert all(np.isfinite(v) for v in metrics.values())
        _check_against_sklearn_multi(labels, probs, metrics)
        present = [roc_auc_score(labels[:, c], probs[:, c]) for c in (0, 1, 3)]
        _close(metrics["auroc"], np.mean(present))


def test_multilabel_auroc_nan_when_no_label_has_both_classes():
    labels = np.array([[1, 0], [1, 0], [1, 0]])
    probs = np.array([[0.9, 0.2], [0.4, 0.6], [0.7, 0.1]])
    metrics = _no_warnings(classification_metrics, labels, probs, multilabel=True)
    assert math.isnan(metrics["auroc"])
    _check_against_sklearn_multi(labels, probs, metrics)
    _close(metrics["micro_f1"], 2 * 2 / (2 * 2 + 1 + 1))


# ---------------------------------------------------------------------------------------------
# bootstrap


def _tied(probs: np.ndarray) -> np.ndarray:
    return np.round(probs, 1)  # many ties, so the weighted AUROC must handle them


@pytest.mark.parametrize(
    ("multilabel", "num_classes"), [(False, 2), (False, 3), (False, 5), (True, 3)]
)
def test_weighted_core_equals_sklearn_on_explicit_resamples(multilabel, num_classes):
    """Example weights (bootstrap counts) must act exactly like repeating examples."""
    if multilabel:
        labels, probs = _multilabel_problem(3, 60, num_classes)
    else:
        labels, probs = _single_label_problem(3, 60, num_classes)
    probs = _tied(probs)
    prepared = metrics_module._prepare(labels, probs, multilabel, 0.5)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(labels), size=(8, len(labels)))
    weights = np.stack([np.bincount(i, minlength=len(labels)) for i in idx]).astype(np.float64)
    table = metrics_module._metric_table(weights, *prepared, multilabel=multilabel)
    assert list(table) == list(classification_metrics(labels, probs, multilabel=multilabel))
    for b, i in enumerate(idx):
        row = {k: v[b] for k, v in table.items()}
        if multilabel:
            _check_against_sklearn_multi(labels[i], probs[i], row)
            # The rank-based AUROC (checked against sklearn, ties included) on the duplicated rows.
            _close(row["auroc"], multilabel_roc_auc(labels[i], probs[i]))
        else:
            _check_against_sklearn_single(labels[i], probs[i], num_classes, row)
            _close(row["auroc"], roc_auc(labels[i], probs[i]))


@pytest.mark.parametrize("multilabel", [False, True])
def test_bootstrap_equals_naive_resampling_loop(multilabel, monkeypatch):
    if multilabel:
        labels, probs = _multilabel_problem(1, 50, 3)
    else:
        labels, probs = _single_label_problem(1, 50, 3)
    probs = _tied(probs)
    n_boot, n, seed, alpha = 64, len(labels), 7, 0.1
    rows = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    per_resample = [
        classification_metrics(labels[i], probs[i], multilabel=multilabel) for i in rows
    ]
    keys = ["accuracy", "macro_f1", "auroc", "f1/1"]
    kw = dict(multilabel=multilabel, n_boot=n_boot, seed=seed, alpha=alpha, keys=keys)
    ci = bootstrap_ci(labels, probs, **kw)
    assert list(ci) == keys
    for k in keys:
        values = np.array([m[k] for m in per_resample])
        _close(ci[k], np.nanpercentile(values, [5.0, 95.0]))
    # Processing the resamples in small chunks draws the same rows.
    monkeypatch.setattr(metrics_module, "_CHUNK_CELLS", 3 * n + 1)
    assert bootstrap_ci(labels, probs, **kw) == ci


def test_bootstrap_is_deterministic_for_a_seed():
    labels, probs = _single_label_problem(0, 120, 3)
    a = bootstrap_ci(labels, probs, n_boot=200, seed=3)
    assert bootstrap_ci(labels, probs, n_boot=200, seed=3) == a
    assert bootstrap_ci(labels, probs, n_boot=200, seed=4) != a
    assert list(a) == HEADLINE_SINGLE


@pytest.mark.parametrize("multilabel", [False, True])
def test_bootstrap_interval_contains_point_and_narrows_with_n(multilabel):
    def problem(seed, n):
        if multilabel:
            return _multilabel_problem(seed, n, 3)
        return _single_label_problem(seed, n, 3)

    widths = {}
    for n in (100, 2000):
        labels, probs = problem(5, n)
        point = classification_metrics(labels, probs, multilabel=multilabel)
        ci = bootstrap_ci(labels, probs, multilabel=multilabel, n_boot=500, seed=0)
        assert list(ci) == (HEADLINE_MULTI if multilabel else HEADLINE_SINGLE)
        for k, (lo, hi) in ci.items():
            assert lo < point[k] < hi, (n, k, lo, point[k], hi)
        widths[n] = {k: hi - lo for k, (lo, hi) in ci.items()}
    # The width shrinks like 1/sqrt(N): about 4.5x for 20x the examples.
    for k in widths[100]:
        assert widths[100][k] > 2.5 * widths[2000][k] > 0.0, k


def test_bootstrap_ignores_resamples_where_a_metric_is_undefined():
    rng = np.random.default_rng(0)
    n = 30
    labels = np.zeros(n, dtype=np.int64)
    labels[:2] = 1  # 2 positives in 30: ~13% of resamples hold none
    probs = _softmax(rng.normal(size=(n, 2)) + np.eye(2)[labels])
    kw = dict(n_boot=400, seed=0)
    replicates = metrics_module._bootstrap_replicates(labels, probs, keys=["auroc", "f1/1"], **kw)
    undefined = np.isnan(replicates["auroc"])
    assert 0.02 < undefined.mean() < 0.5
    assert not np.isnan(replicates["f1/1"]).any()
    ci = _no_warnings(bootstrap_ci, labels, probs, keys=["auroc", "f1/1", "support/1"], **kw)
    lo, hi = ci["auroc"]
    assert 0.0 <= lo < hi <= 1.0
    _close(ci["auroc"], np.percentile(replicates["auroc"][~undefined], [2.5, 97.5]))
    assert ci["support/1"][0] == 0.0 and ci["support/1"][1] >= 4.0
    # A metric undefined in every resample gives (nan, nan), without a warning.
    ci = _no_warnings(bootstrap_ci, np.ones(n, np.int64), probs, **kw)
    assert all(math.isnan(x) for x in ci["auroc"])
    assert all(np.isfinite(x) for k, bounds in ci.items() if k != "auroc" for x in bounds)


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
    per_class = {
        f"{name}/{c}": 40.0 if name == "support" else 1.0
        for name in ("precision", "recall", "f1", "support")
        for c in range(num_classes)
    }
    headline = ("accuracy", "balanced_accuracy", "micro_f1", "macro_f1", "weighted_f1", "recall")
    assert metrics == {
        **dict.fromkeys(headline, 1.0),
        "auroc": 1.0,
        **per_class,
        "num_train": 240,
        "num_test": 120,
    }

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
