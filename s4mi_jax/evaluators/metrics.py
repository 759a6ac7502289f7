"""Classification metrics in plain NumPy, computed on the host.

Evaluation outputs are gathered to the host anyway, and keeping metrics in NumPy (float64) makes
them exact and easy to check against scikit-learn, which the package must not import.

Two settings, both with probabilities ``probs`` of shape ``(N, C)``:

- single-label: ``labels`` are integer class ids ``(N,)`` in ``[0, C)``, the prediction is the
  argmax of ``probs`` (softmax outputs);
- multi-label: ``labels`` are multi-hot ``(N, C)`` in {0, 1}, the prediction is
  ``probs > threshold`` per label (sigmoid outputs, as in the Dermatomyositis setting).

Counting metrics (accuracy, precision, recall, F1) follow scikit-learn with ``zero_division=0``: a
ratio whose denominator is zero (e.g. the precision of a class that is never predicted) is 0, not
``nan`` and not a warning. A metric that is genuinely undefined for the given labels (AUROC when
only one class is present, anything on an empty split) returns ``nan`` instead of raising, so that
a small or unlucky evaluation split does not crash a training run; callers that aggregate should
use ``np.nanmean`` or report the ``nan``.

`classification_metrics` reports every metric as a flat ``{name: float}`` dict, and
`bootstrap_ci` resamples test examples to put percentile intervals on those numbers. Both go
through one counting core (`_metric_table`) that takes per-example weights, so that each
bootstrap replicate is exactly the reported metric evaluated on a resampled split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def _as_labels(labels: ArrayLike) -> np.ndarray:
    """Labels as a 1-D int64 array; floats are accepted only if they are whole numbers."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError("labels must be integer class ids")
    return y.astype(np.int64)


def _check_scores(scores: ArrayLike, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim not in (1, 2):
        raise ValueError(f"scores must have shape (N,) or (N, C), got {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"scores have {s.shape[0]} rows but there are {n} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf (did the model diverge?)")
    return s


def accuracy(labels: ArrayLike, probs_or_preds: ArrayLike) -> float:
    """Fraction of correct predictions.

    ``probs_or_preds`` is either predicted class ids ``(N,)`` or class scores ``(N, C)``, in
    which case the prediction is the argmax (ties go to the lowest class id, like ``np.argmax``).
    Returns ``nan`` for an empty split.
    """
    y = _as_labels(labels)
    p = np.asarray(probs_or_preds)
    if p.ndim == 2:
        p = np.argmax(p, axis=1)
    elif p.ndim != 1:
        raise ValueError(f"probs_or_preds must have shape (N,) or (N, C), got {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"{p.shape[0]} predictions but {y.shape[0]} labels")
    if y.size == 0:
        return float("nan")
    return float(np.mean(p == y))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` where tied values all get the mean of the ranks they span.

    Average ranks are what make the rank-sum AUROC count a tied (positive, negative) pair as 1/2,
    i.e. exactly the trapezoidal area under the ROC curve that scikit-learn computes.
    """
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)  # rank of the last element of each tie group
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _binary_auc(is_pos: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUROC of a boolean target against 1-D scores; ``nan`` if one class is absent."""
    n_pos = int(np.count_nonzero(is_pos))
    n_neg = is_pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(np.sum(_average_ranks(scores)[is_pos]))
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve, binary or one-vs-rest macro-averaged.

    - ``scores`` of shape ``(N,)``: binary; ``labels`` must be 0/1 and ``scores`` are for class 1.
    - ``scores`` of shape ``(N, 2)``: binary, using column 1 (the positive-class probability).
    - ``scores`` of shape ``(N, C)``, ``C > 2``: mean over classes of the one-vs-rest AUROC of
      ``labels == c`` against ``scores[:, c]``. Equals sklearn's ``multi_class="ovr",
      average="macro"`` when every class occurs in ``labels``. Classes absent from ``labels`` have
      no defined AUROC and are left out of the mean (sklearn raises instead).

    Ties count 1/2 (average ranks), matching ``sklearn.metrics.roc_auc_score`` exactly.
    Returns ``nan`` when it is undefined: fewer than two classes present in ``labels``.
    """
    y = _as_labels(labels)
    s = _check_scores(scores, y.shape[0])
    if s.ndim == 2 and s.shape[1] < 2:
        raise ValueError(f"scores of shape (N, C) need C >= 2, got {s.shape}")
    num_classes = 2 if s.ndim == 1 else s.shape[1]
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for scores of shape {s.shape}, "
            f"got range [{y.min()}, {y.max()}]"
        )
    if s.ndim == 1 or num_classes == 2:
        return _binary_auc(y == 1, s if s.ndim == 1 else s[:, 1])
    per_class = [_binary_auc(y == c, s[:, c]) for c in range(num_classes)]
    defined = [a for a in per_class if not np.isnan(a)]
    if len(defined) == 0:
        return float("nan")
    return float(np.mean(defined))


# ---------------------------------------------------------------------------------------------
# Counting core shared by point estimates and the bootstrap

# Resamples are processed in chunks of about this many (resample, example) cells (16 MiB of
# float64 per array), so memory stays bounded for large test sets.
_CHUNK_CELLS = 1 << 21


def _as_multihot(labels: ArrayLike) -> np.ndarray:
    """Multi-hot labels ``(N, C)`` as bool; anything but 0/1 is an error, not a silent cast."""
    y = np.asarray(labels)
    if y.ndim != 2:
        raise ValueError(f"multi-label labels must be multi-hot (N, C), got shape {y.shape}")
    if y.dtype != bool:
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("multi-label labels must be 0/1")
        y = y == 1
    return y


def _one_hot(ids: np.ndarray, num_classes: int) -> np.ndarray:
    return ids[:, None] == np.arange(num_classes)


def _check_class_ids(ids: np.ndarray, num_classes: int, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise ValueError(
            f"{what} must lie in [0, {num_classes}), got range [{ids.min()}, {ids.max()}]"
        )


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0``: scikit-learn's ``zero_division=0``."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    return np.divide(num, den, out=np.zeros(num.shape), where=den != 0)


def _prepare(
    labels: ArrayLike, probs: ArrayLike, multilabel: bool, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(true, pred, auc_targets, auc_scores)``; the first two are bool ``(N, C)``.

    AUROC is computed per column of ``auc_targets``/``auc_scores`` and averaged over the columns
    where it is defined. For single-label data these are the one-vs-rest columns, except that the
    binary case uses only column 1, exactly as `roc_auc` does.
    """
    if multilabel:
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        y = _as_multihot(labels)
        s = _check_scores(probs, y.shape[0])
        if s.shape != y.shape:
            raise ValueError(f"probs shape {s.shape} does not match labels shape {y.shape}")
        return y, s > threshold, y, s
    y = _as_labels(labels)
    s = _check_scores(probs, y.shape[0])
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, C) with C >= 2, got {s.shape}")
    num_classes = s.shape[1]
    _check_class_ids(y, num_classes, "labels")
    true = _one_hot(y, num_classes)
    pred = _one_hot(np.argmax(s, axis=1), num_classes)
    if num_classes == 2:
        return true, pred, true[:, 1:], s[:, 1:]
    return true, pred, true, s


def _weighted_auc(weights: np.ndarray, targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC ``(B, K)`` of each target column, reading ``weights[b]`` as counts.

    A weight of ``k`` is the same as repeating the example ``k`` times, so row ``b`` is the AUROC
    of a resampled split without materialising it: per tie group of scores, count the (weighted)
    negatives strictly below it, plus 1/2 for those tied with it (as `_average_ranks` does).
    ``nan`` where a column has no positive or no negative weight.
    """
    out = np.full((weights.shape[0], targets.shape[1]), np.nan)
    if weights.shape[1] == 0:
        return out
    for k in range(targets.shape[1]):
        order = np.argsort(scores[:, k], kind="stable")
        s, pos = scores[order, k], targets[order, k]
        starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        w = weights[:, order]
        w_all = np.add.reduceat(w, starts, axis=1)
        w_pos = np.add.reduceat(w * pos, starts, axis=1)
        w_neg = w_all - w_pos
        neg_below = np.cumsum(w_neg, axis=1) - w_neg
        n_pos, n_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
        numerator = np.sum(w_pos * (neg_below + 0.5 * w_neg), axis=1)
        ok = (n_pos > 0) & (n_neg > 0)
        out[ok, k] = numerator[ok] / (n_pos[ok] * n_neg[ok])
    return out


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over the non-nan entries; ``nan`` (without a warning) for an all-nan row."""
    ok = ~np.isnan(x)
    count = ok.sum(axis=1)
    total = np.where(ok, x, 0.0).sum(axis=1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def _metric_table(
    weights: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    auc_targets: np.ndarray,
    auc_scores: np.ndarray,
    *,
    multilabel: bool,
    with_auroc: bool = True,
) -> dict[str, np.ndarray]:
    """Every flat metric of `classification_metrics`, one value per row of ``weights`` ``(B, N)``.

    ``weights[b, i]`` is how often example ``i`` counts in evaluation ``b``: a row of ones gives
    the point estimate, a row of bootstrap counts one replicate. All counts are matrix products of
    integer-valued float64, hence exact; this is what vectorises the bootstrap.
    """
    t, p = true.astype(np.float64), pred.astype(np.float64)
    support = weights @ t  # (B, C): TP + FN per class
    predicted = weights @ p  # (B, C): TP + FP per class
    tp = weights @ (t * p)
    fp, fn = predicted - tp, support - tp
    total = weights.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2.0 * tp, 2.0 * tp + fp + fn)
    tp_all, fp_all, fn_all = tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1)

    out: dict[str, np.ndarray] = {}
    if multilabel:
        exact = np.all(true == pred, axis=1).astype(np.float64)
        out["accuracy"] = _safe_div(weights @ exact, total)  # subset accuracy
        # scikit-learn averages multi-label scores over every label column, even an empty one.
        counted = np.ones(f1.shape, dtype=bool)
    else:
        out["accuracy"] = _safe_div(tp_all, total)
        present = support > 0
        out["balanced_accuracy"] = _safe_div(np.sum(recall * present, axis=1), present.sum(axis=1))
        # scikit-learn's default labels: classes seen in the labels or the predictions.
        counted = (support > 0) | (predicted > 0)
    out["micro_f1"] = _safe_div(2.0 * tp_all, 2.0 * tp_all + fp_all + fn_all)
    out["macro_f1"] = _safe_div(np.sum(f1 * counted, axis=1), counted.sum(axis=1))
    out["weighted_f1"] = _safe_div(np.sum(f1 * support, axis=1), support.sum(axis=1))
    out["recall"] = _safe_div(tp_all, tp_all + fn_all)
    if with_auroc:
        out["auroc"] = _nanmean_rows(_weighted_auc(weights, auc_targets, auc_scores))
    else:
        out["auroc"] = np.full(total.shape, np.nan)
    for name, per_class in (("precision", precision), ("recall", recall), ("f1", f1)):
        for c in range(per_class.shape[1]):
            out[f"{name}/{c}"] = per_class[:, c]
    empty = total == 0
    for values in out.values():
        values[empty] = np.nan  # Every rate is undefined on an empty split.
    for c in range(support.shape[1]):
        out[f"support/{c}"] = support[:, c]
    return out


def _point(table: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v[0]) for k, v in table.items()}


# ---------------------------------------------------------------------------------------------
# Public metrics


def balanced_accuracy(labels: ArrayLike, probs_or_preds: ArrayLike) -> float:
    """Mean per-class recall over the classes present in ``labels``.

    Unlike accuracy it is not dominated by a majority class, which matters for imbalanced medical
    test sets. Predicted classes absent from ``labels`` do not count (scikit-learn warns there; we
    don't). ``probs_or_preds`` is class ids ``(N,)`` or scores ``(N, C)`` (argmax). ``nan`` if empty.
    """
    y = _as_labels(labels)
    p = np.asarray(probs_or_preds)
    if p.ndim == 2:
        p = np.argmax(p, axis=1)
    elif p.ndim != 1:
        raise ValueError(f"probs_or_preds must have shape (N,) or (N, C), got {p.shape}")
    p = _as_labels(p)
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"{p.shape[0]} predictions but {y.shape[0]} labels")
    if y.size == 0:
        return float("nan")
    if min(y.min(), p.min()) < 0:
        raise ValueError("class ids must be non-negative")
    num_classes = int(max(y.max(), p.max())) + 1
    support = np.bincount(y, minlength=num_classes)
    tp = np.bincount(y[p == y], minlength=num_classes)
    present = support > 0
    return float(np.mean(tp[present] / support[present]))


def precision_recall_f1(
    labels: ArrayLike, preds: ArrayLike, num_classes: int | None = None
) -> dict[str, np.ndarray | float]:
    """Per-class precision/recall/F1/support and micro/macro/weighted F1, scikit-learn style.

    - Single-label: ``labels`` and ``preds`` are class ids ``(N,)``; ``num_classes`` is required
      so that the per-class arrays have the same length on every split.
    - Multi-label: ``labels`` and ``preds`` are multi-hot ``(N, C)``; ``num_classes`` is optional.

    Returns ``precision_per_class``, ``recall_per_class``, ``f1_per_class`` (float ``(C,)``),
    ``support_per_class`` (int ``(C,)``), and floats ``micro_f1``, ``macro_f1``, ``weighted_f1``
    and ``recall``. ``recall`` is the micro-averaged recall TP / (TP + FN) over all
    sample x class cells, which is what S4MI/DEDL's ``MyF1Score`` reports as recall; for
    single-label argmax predictions every sample has exactly one true cell, so it equals accuracy
    (and so does ``micro_f1``). ``micro_f1`` is S4MI's F1 (TP, FP, FN summed over all cells).

    Zero denominators give 0 (``zero_division=0``). Macro-F1 averages over the classes seen in
    ``labels`` or ``preds`` (single-label) or over all columns (multi-label), as scikit-learn does
    by default. Every rate is ``nan`` on empty input.
    """
    p = np.asarray(preds)
    if p.ndim == 2:
        true, pred = _as_multihot(labels), _as_multihot(p)
        if true.shape != pred.shape:
            raise ValueError(f"preds shape {pred.shape} does not match labels shape {true.shape}")
        if num_classes is not None and num_classes != true.shape[1]:
            raise ValueError(f"num_classes={num_classes} but labels have {true.shape[1]} columns")
        multilabel = True
    else:
        if num_classes is None:
            raise ValueError("num_classes is required for single-label class ids")
        y, p = _as_labels(labels), _as_labels(p)
        if p.shape[0] != y.shape[0]:
            raise ValueError(f"{p.shape[0]} predictions but {y.shape[0]} labels")
        _check_class_ids(y, num_classes, "labels")
        _check_class_ids(p, num_classes, "preds")
        true, pred = _one_hot(y, num_classes), _one_hot(p, num_classes)
        multilabel = False
    c = true.shape[1]
    table = _metric_table(
        np.ones((1, true.shape[0])), true, pred, true, true, multilabel=multilabel, with_auroc=False
    )

    def per_class(name: str) -> np.ndarray:
        return np.array([table[f"{name}/{k}"][0] for k in range(c)])

    return {
        "precision_per_class": per_class("precision"),
        "recall_per_class": per_class("recall"),
        "f1_per_class": per_class("f1"),
        "support_per_class": per_class("support").astype(np.int64),
        "micro_f1": float(table["micro_f1"][0]),
        "macro_f1": float(table["macro_f1"][0]),
        "weighted_f1": float(table["weighted_f1"][0]),
        "recall": float(table["recall"][0]),
    }


def subset_accuracy(labels: ArrayLike, preds: ArrayLike) -> float:
    """Multi-label exact-match accuracy: a sample counts only if every label is right.

    This is scikit-learn's ``accuracy_score`` on multi-hot arrays. ``nan`` on empty input.
    """
    true, pred = _as_multihot(labels), _as_multihot(preds)
    if true.shape != pred.shape:
        raise ValueError(f"preds shape {pred.shape} does not match labels shape {true.shape}")
    if true.shape[0] == 0:
        return float("nan")
    return float(np.mean(np.all(true == pred, axis=1)))


def multilabel_roc_auc(labels: ArrayLike, probs: ArrayLike) -> float:
    """Macro AUROC over the label columns that contain both classes.

    A column with only positives or only negatives has no AUROC (scikit-learn raises); leaving it
    out keeps a rare label from crashing evaluation. ``nan`` if no column qualifies.
    """
    true = _as_multihot(labels)
    s = _check_scores(probs, true.shape[0])
    if s.shape != true.shape:
        raise ValueError(f"probs shape {s.shape} does not match labels shape {true.shape}")
    per_label = [_binary_auc(true[:, c], s[:, c]) for c in range(true.shape[1])]
    defined = [a for a in per_label if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


def classification_metrics(
    labels: ArrayLike, probs: ArrayLike, *, multilabel: bool = False, threshold: float = 0.5
) -> dict[str, float]:
    """All metrics as one flat ``{name: float}`` dict, ready for ``metrics.jsonl`` or JSON.

    ``probs`` is ``(N, C)``: softmax outputs with class ids ``labels`` ``(N,)`` (prediction =
    argmax), or with ``multilabel=True`` sigmoid outputs with multi-hot ``labels`` ``(N, C)``
    (prediction = ``probs > threshold``). Keys, in order:

    - ``accuracy``: fraction correct (multi-label: exact match of all labels);
    - ``balanced_accuracy``: mean per-class recall (single-label only);
    - ``micro_f1``, ``macro_f1``, ``weighted_f1``: see `precision_recall_f1`;
    - ``recall``: micro recall TP / (TP + FN) over all cells (= accuracy for single-label);
    - ``auroc``: single-label as `roc_auc`, multi-label as `multilabel_roc_auc`; ``nan`` when
      fewer than two classes are present (F1s etc. are still defined then);
    - ``precision/<c>``, ``recall/<c>``, ``f1/<c>``, ``support/<c>`` for each class index ``c``.

    Everything except ``support/<c>`` is ``nan`` on an empty split.
    """
    true, pred, auc_t, auc_s = _prepare(labels, probs, multilabel, threshold)
    weights = np.ones((1, true.shape[0]))
    return _point(_metric_table(weights, true, pred, auc_t, auc_s, multilabel=multilabel))


def _bootstrap_replicates(
    labels: ArrayLike,
    probs: ArrayLike,
    *,
    multilabel: bool = False,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    keys: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """The ``(n_boot,)`` replicate values of each metric in ``keys`` (see `bootstrap_ci`)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    true, pred, auc_t, auc_s = _prepare(labels, probs, multilabel, threshold)
    n = true.shape[0]
    # The key names of `classification_metrics`, from the core itself on an empty split (cheap).
    names = list(
        _metric_table(
            np.ones((1, 0)), true[:0], pred[:0], auc_t[:0], auc_s[:0], multilabel=multilabel
        )
    )
    if keys is None:
        keys = [k for k in names if "/" not in k]
    unknown = sorted(set(keys) - set(names))
    if unknown:
        raise ValueError(f"unknown metric keys {unknown}; available: {names}")
    if n == 0:
        return {k: np.full(n_boot, np.nan) for k in keys}
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _CHUNK_CELLS // n))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        # Row r of these draws (consecutive chunks continue one stream) is resample start + r;
        # its bincount is how often each example occurs in it.
        idx = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        weights = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        table = _metric_table(
            weights, true, pred, auc_t, auc_s, multilabel=multilabel, with_auroc="auroc" in keys
        )
        for k in keys:
            parts[k].append(table[k])
    return {k: np.concatenate(v) for k, v in parts.items()}


def bootstrap_ci(
    labels: ArrayLike,
    probs: ArrayLike,
    *,
    multilabel: bool = False,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    keys: Sequence[str] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap ``1 - alpha`` intervals of `classification_metrics` over test examples.

    Small medical test sets make single numbers noisy; the interval says how much a result could
    move with a different draw of patients. Each of ``n_boot`` resamples draws ``N`` rows with
    replacement (resample ``b`` is row ``b`` of ``np.random.default_rng(seed).integers(0, N,
    (n_boot, N))``, so results are deterministic for a seed) and recomputes the metrics exactly as
    `classification_metrics` does. ``keys`` defaults to all non-per-class keys; per-class keys
    such as ``"f1/0"`` may be asked for. Resamples where a metric is undefined (``nan``, e.g.
    AUROC when a resample holds one class) are left out for that metric; if all are, the interval
    is ``(nan, nan)``. Resampling rows assumes examples are independent: with several images per
    patient, the interval is too narrow unless rows are patients.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    replicates = _bootstrap_replicates(
        labels,
        probs,
        multilabel=multilabel,
        threshold=threshold,
        n_boot=n_boot,
        seed=seed,
        keys=keys,
    )
    q = [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)]
    out: dict[str, tuple[float, float]] = {}
    for k, values in replicates.items():
        values = values[~np.isnan(values)]
        if values.size == 0:
            out[k] = (float("nan"), float("nan"))
        else:
            lo, hi = np.percentile(values, q)
            out[k] = (float(lo), float(hi))
    return out
