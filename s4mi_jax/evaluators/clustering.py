"""Scoring unsupervised segmentations (PiCIE's `evaluate`, Cho et al. 2021): clusters carry no class
names, so they are first matched to classes.

* `confusion(clusters, labels, K, C)`: (K, C) pixel counts.
* `hungarian(conf)`: the one-to-one cluster -> class map maximising matched pixels
  (`scipy.optimize.linear_sum_assignment`). With more clusters than classes (K > C) the clusters
  Hungarian leaves out go to their majority class; with fewer, some classes are never predicted.
* `pixel_accuracy`, `miou`: from a class-by-class confusion matrix after the mapping; mIoU averages
  IoU over every class, background included (PiCIE's mIoU), classes absent from both prediction and
  ground truth left out of the mean.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def confusion(pred: np.ndarray, gt: np.ndarray, num_pred: int, num_gt: int) -> np.ndarray:
    """(num_pred, num_gt) int64 counts of pixels with prediction i and ground truth j."""
    pred, gt = np.asarray(pred).ravel().astype(np.int64), np.asarray(gt).ravel().astype(np.int64)
    if pred.size and (
        pred.min() < 0 or pred.max() >= num_pred or gt.min() < 0 or gt.max() >= num_gt
    ):
        raise ValueError(f"values outside [0, {num_pred}) x [0, {num_gt})")
    return np.bincount(pred * num_gt + gt, minlength=num_pred * num_gt).reshape(num_pred, num_gt)


def hungarian(conf: np.ndarray) -> np.ndarray:
    """cluster -> class map (int64, length K) from a (K, C) confusion matrix: maximal matched pixels,
    one cluster per class; leftover clusters (K > C) take their majority class."""
    conf = np.asarray(conf)
    rows, cols = linear_sum_assignment(conf, maximize=True)
    mapping = np.argmax(conf, axis=1).astype(np.int64)
    mapping[rows] = cols
    return mapping


def pixel_accuracy(conf: np.ndarray) -> float:
    """Correct pixels / all pixels of a square (class x class) confusion matrix."""
    return float(np.trace(conf) / max(conf.sum(), 1))


def miou(conf: np.ndarray) -> float:
    """Mean over classes of TP / (TP + FP + FN), classes with TP + FP + FN = 0 left out."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float(np.mean(tp[present] / union[present])) if present.any() else 1.0


def matched_scores(
    clusters: np.ndarray, labels: np.ndarray, mapping: np.ndarray, num_classes: int
) -> tuple[dict[str, float], np.ndarray]:
    """({"pixel_accuracy", "miou"}, class maps) of cluster maps under `mapping` (cluster -> class)."""
    preds = np.asarray(mapping)[np.asarray(clusters)]
    conf = confusion(preds, labels, num_classes, num_classes)
    return {"pixel_accuracy": pixel_accuracy(conf), "miou": miou(conf)}, preds
