"""Classification metrics in plain NumPy, computed on the host.

Evaluation outputs are gathered to the host anyway, and keeping metrics in NumPy (float64) makes
them exact and easy to check against scikit-learn, which the package must not import. Each metric
is a small function of ``(labels, scores)`` so that more (balanced accuracy, F1s, bootstrap
confidence intervals) can be added next to these and then listed in `classification_metrics`.

Conventions: ``labels`` are integer class ids in ``[0, C)``; ``probs`` are class probabilities of
shape ``(N, C)``. A metric that is undefined for the given labels (e.g. AUROC when only one class
is present) returns ``nan`` instead of raising, so that a small or unlucky evaluation split does not
crash a training run; callers that aggregate should use ``np.nanmean`` or report the ``nan``.
"""

from __future__ import annotations

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


def classification_metrics(labels: ArrayLike, probs: ArrayLike) -> dict[str, float]:
    """All headline metrics from class probabilities ``(N, C)``: ``accuracy`` and ``auroc``.

    One dict of plain floats so that callers can log it or write it to JSON without conversion.
    """
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (N, C), got {p.shape}")
    return {
        "accuracy": accuracy(labels, p),
        "auroc": roc_auc(labels, p),
    }
