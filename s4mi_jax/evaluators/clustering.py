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

import os

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment

from s4mi_jax.core import run, sharding
from s4mi_jax.core.loop import log
from s4mi_jax.core.metric_writer import write_json
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import segmentation as segdata
from s4mi_jax.evaluators import pixel_predict
from s4mi_jax.evaluators import segmentation as segmetrics
from s4mi_jax.models import picie as picie_model


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


def score_clusters(
    clusters_val, y_val, clusters_test, y_test, num_clusters: int, num_classes: int
) -> dict:
    """Hungarian matching fit on validation, applied to test; PiCIE's matching on test itself.
    Returns {"mapping", "val", "test", "test_matched_on_test", "test_preds", "test_rows"}."""
    mapping = hungarian(confusion(clusters_val, y_val, num_clusters, num_classes))
    out = {"mapping": [int(m) for m in mapping]}
    for split, c, y in (("val", clusters_val, y_val), ("test", clusters_test, y_test)):
        scores, preds = matched_scores(c, y, mapping, num_classes)
        summary, rows = segmetrics.dataset_metrics(preds, y, num_classes)
        out[split] = {**scores, **summary}
        if split == "test":
            out["test_preds"], out["test_rows"] = preds, rows
    own = hungarian(confusion(clusters_test, y_test, num_clusters, num_classes))
    out["test_matched_on_test"] = matched_scores(clusters_test, y_test, own, num_classes)[0]
    return out


def baselines(val_images, test_images, y_val, y_test, num_classes: int) -> dict:
    """Label-free references: every pixel foreground (class 1), and a per-image threshold at the mean
    grey level (two "clusters", matched to classes on validation like PiCIE's)."""
    ones = np.ones_like(y_test)
    fg = matched_scores(ones, y_test, np.arange(2), num_classes)[0]
    fg.update(segmetrics.dataset_metrics(ones, y_test, num_classes)[0])

    def threshold(images):
        gray = images.astype(np.float32).mean(-1)
        return (gray > gray.mean(axis=(1, 2), keepdims=True)).astype(np.int32)

    thr = score_clusters(
        threshold(val_images), y_val, threshold(test_images), y_test, 2, num_classes
    )
    return {"all_foreground": fg, "mean_intensity_threshold": thr["test"]}


def picie_evaluator(ctx: run.Context) -> run.Evaluator:
    """No model selection (it would use labels): validation only monitors; the final model is
    tested, its clusters matched to classes on validation."""
    config, mesh, (data, manifest, pool, test_split) = ctx.config, ctx.mesh, ctx.data.content
    k, num_classes = int(config.picie.num_clusters), data.num_classes
    predict = picie_model.make_predict_fn(ctx.built.graphdef)
    val_x, val_y = segdata.eval_arrays(data, manifest.val, config.aug)
    test_x, test_y = segdata.eval_images(test_split.images, config.aug), test_split.masks
    sharding.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")

    def clusters_of(state, x):
        return pixel_predict.predict_all(predict, state, x, config.eval.batch_size, mesh)

    def validate(state: TrainState, step: int) -> run.Validation:
        c = clusters_of(state, val_x)  # Matching fit on validation, scored on it (monitoring only).
        mapping = hungarian(confusion(c, val_y, k, num_classes))
        scores, preds = matched_scores(c, val_y, mapping, num_classes)
        summary = segmetrics.dataset_metrics(preds, val_y, num_classes)[0]
        log(
            f"val pixel_accuracy {scores['pixel_accuracy']:.4f} miou {scores['miou']:.4f} "
            f"dice {summary['dice']:.4f} iou {summary['iou']:.4f}"
        )
        return run.Validation({f"val/{m}": v for m, v in {**scores, **summary}.items()}, {})

    def test(state: TrainState, best: run.BestCheckpoints) -> dict:
        scored = score_clusters(
            clusters_of(state, val_x), val_y, clusters_of(state, test_x), test_y, k, num_classes
        )
        preds, rows = scored.pop("test_preds"), scored.pop("test_rows")
        per_image = [{"key": k, **r} for k, r in zip(test_split.keys, rows, strict=True)]
        write_json(os.path.join(ctx.workdir, "test_per_image.json"), per_image)
        n_overlay = min(config.eval.overlays, len(test_x))
        if n_overlay and jax.process_index() == 0:
            segmetrics.write_overlays(
                os.path.join(ctx.workdir, "overlays", "test"),
                [k.replace("#", "_") for k in test_split.keys[:n_overlay]],
                test_split.images[:n_overlay],
                test_y[:n_overlay],
                preds[:n_overlay],
            )
        t = scored["test"]
        ctx.writer.write(int(state.step), {f"test/{m}": v for m, v in t.items()})
        log(
            f"test (clusters matched on val as {scored['mapping']}): pixel_accuracy "
            f"{t['pixel_accuracy']:.4f}, miou {t['miou']:.4f}, dice {t['dice']:.4f}, iou "
            f"{t['iou']:.4f}, hd95 {t['hd95']:.2f}"
        )
        base = baselines(data.images[manifest.val], test_split.images, val_y, test_y, num_classes)
        for name, b in base.items():
            log(
                f"baseline {name}: pixel_accuracy {b['pixel_accuracy']:.4f}, miou {b['miou']:.4f}, "
                f"dice {b['dice']:.4f}, iou {b['iou']:.4f}"
            )
        return {
            "method": "picie",
            "label_fraction": 0.0,  # No training labels: the "unsupervised" row of the report.
            "seed": config.seed,
            "manifest_hash": manifest.hash,
            "dataset": os.path.basename(os.path.normpath(str(data.root))),
            "num_train": len(pool),
            "num_unlabeled": len(pool),
            "num_val": len(val_x),
            "num_test": len(test_x),
            "num_clusters": k,
            "cluster_to_class": scored["mapping"],
            "val": scored["val"],
            "test": t,
            "test_matched_on_test": scored["test_matched_on_test"],
            "baselines": base,
        }

    return run.Evaluator(test=test, validate=validate)
