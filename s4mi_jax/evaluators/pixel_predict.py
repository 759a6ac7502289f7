"""Scoring segmenters: per-pixel predictions over arrays in fixed-shape batches over the mesh (what the
segmentation trainers, PiCIE and `s4mi_jax.predict` all score with), and the segmentation trainers'
evaluator (validation with model selection, overlays, the test split)."""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from s4mi_jax.core import run, sharding
from s4mi_jax.core.loop import log
from s4mi_jax.core.metric_writer import write_json
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import segmentation as segdata
from s4mi_jax.evaluators import segmentation as segmetrics


def make_predict_fn(graphdef: nnx.GraphDef, net: Callable[[nnx.Module], nnx.Module]):
    """Jitted `(params, model_state, images) -> class map` in eval mode (BN running statistics)."""

    @jax.jit
    def predict(params, model_state, images):
        model = nnx.merge(graphdef, params, model_state)
        model.eval()
        return jnp.argmax(net(model)(images), axis=-1).astype(jnp.int32)

    return predict


def predict_all(predict, state, images: np.ndarray, batch_size: int, mesh) -> np.ndarray:
    """`predict` on all `images`, in fixed-shape batches split over the mesh (last one padded)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - n, axis=0)])
        g = sharding.put_batch({"image": chunk}, mesh)["image"]
        out.append(sharding.fetch(predict(state.params, state.model_state, g))[:n])
    return np.concatenate(out)


def evaluator(ctx: run.Context, name: str, predictors: dict, semi: bool) -> run.Evaluator:
    """Validation every `eval_every` steps selects each network on `select_metric`; overlays of a few
    test images at each evaluation; the test split once, at the end, with each selected network."""
    config, mesh, (data, manifest, _, test_split) = ctx.config, ctx.mesh, ctx.data.content
    fns = {n: make_predict_fn(ctx.built.graphdef, net) for n, net in predictors.items()}
    val_x, val_y = segdata.eval_arrays(data, manifest.val, config.aug)
    test_x, test_y = segdata.eval_images(test_split.images, config.aug), test_split.masks
    sharding.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
    eval_batch = config.eval.batch_size
    n_overlay = min(config.eval.overlays, len(test_x))
    overlay_names = [k.replace("#", "_") for k in test_split.keys[:n_overlay]]

    def overlays(folder: str, preds: np.ndarray) -> None:
        if n_overlay and jax.process_index() == 0:  # A few test images, for the eye only.
            segmetrics.write_overlays(
                os.path.join(ctx.workdir, "overlays", folder),
                overlay_names,
                test_split.images[:n_overlay],
                test_y[:n_overlay],
                preds[:n_overlay],
            )

    def score(state, net, x, y):
        preds = predict_all(fns[net], state, x, eval_batch, mesh)
        return (*segmetrics.dataset_metrics(preds, y, data.num_classes), preds)

    def validate(state: TrainState, step: int) -> run.Validation:
        metrics, select = {}, {}
        for net in predictors:
            summary, _, _ = score(state, net, val_x, val_y)
            prefix = "val" + (f"_{net}" if net else "")
            metrics.update({f"{prefix}/{k}": v for k, v in summary.items()})
            select[net] = summary[config.select_metric]
            log(
                f"{prefix} dice {summary['dice']:.4f} iou {summary['iou']:.4f} "
                f"hd95 {summary['hd95']:.2f}"
            )
        if n_overlay:
            first = next(iter(predictors))
            overlays(
                f"step_{step}", predict_all(fns[first], state, test_x[:n_overlay], eval_batch, mesh)
            )
        return run.Validation(metrics, select)

    def test(state: TrainState, best: run.BestCheckpoints) -> dict:
        results = {
            "method": name,
            "label_fraction": config.label_fraction,
            "seed": config.seed,
            "manifest_hash": manifest.hash,
            "dataset": os.path.basename(os.path.normpath(str(data.root))),
            "num_train": len(manifest.train),
            "num_unlabeled": len(manifest.unlabeled) if semi else 0,
            "num_val": len(val_x),
            "num_test": len(test_x),
            "select_metric": config.select_metric,
        }
        for net in predictors:
            summary, rows, preds = score(best.restore(net, state), net, test_x, test_y)
            key, suffix = "test" + (f"_{net}" if net else ""), f"_{net}" if net else ""
            results[key], results["best_step" + suffix] = summary, best.step(net)
            per_image = [{"key": k, **r} for k, r in zip(test_split.keys, rows, strict=True)]
            write_json(os.path.join(ctx.workdir, f"{key}_per_image.json"), per_image)
            ctx.writer.write(int(state.step), {f"{key}/{k}": v for k, v in summary.items()})
            overlays(key, preds)
            log(
                f"{key}: dice {summary['dice']:.4f}, iou {summary['iou']:.4f}, hd95 "
                f"{summary['hd95']:.2f}, asd {summary['asd']:.2f}, iou_micro {summary['iou_micro']:.4f}"
            )
        return results

    return run.Evaluator(test=test, validate=validate, networks=tuple(predictors))
