"""Segmentation at a label fraction: the run shared by the supervised, FixMatch and cross-teaching
trainers, and the supervised method itself (`config.trainer = "segment"`).

A method supplies its model, train step and batch layout (`SegMethod`); this module does the rest:
data (`data/segmentation.py`: checked image/mask folders, the nested label-fraction manifest),
median-frequency class weights from the labeled training masks, the Grain iterator (labeled, or
labeled + unlabeled streams), resume, validation every `eval_every` steps with model selection on
`select_metric` (mean per-image IoU by default; one best checkpoint per evaluated network), overlays of a
few test images at each evaluation, and the test split once, at the end, with the selected weights.

Supervised loss: S4MI's ½[CE_w + Dice] (median-frequency weights w, §4.5); with `config.app.enabled`,
plus DEDL's autoencoder post-processing term CE_w(APP(U(x)), y) (§4.4; the APP head has its own Adam,
`config.app.lr`, and is not used at inference).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from s4mi_jax import provenance
from s4mi_jax.core import pretrained, sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.core.loop import log, train_loop
from s4mi_jax.core.metric_writer import MetricWriter, prepare_workdir, write_json
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import pipeline
from s4mi_jax.data import segmentation as segdata
from s4mi_jax.data.sources import FolderSource
from s4mi_jax.errors import ConfigError, DataError
from s4mi_jax.evaluators import segmentation as segmetrics
from s4mi_jax.losses import segmentation as seglosses
from s4mi_jax.models.segmenter import build_supervised

# (graphdef, tx, class weights or None, total_steps) -> step (state, batch, rng) -> (state, metrics)
MakeStep = Callable[[nnx.GraphDef, optax.GradientTransformation, jax.Array | None, int], Callable]


@dataclasses.dataclass(frozen=True)
class SegMethod:
    name: str
    build_model: Callable[[nnx.Rngs, int], nnx.Module]  # (rngs, in_channels) -> model
    make_step: MakeStep
    # Networks evaluated (each with its own model selection): name -> model -> segmenter. The first
    # is the method's result (`test` in results.json); others go to `test_<name>`.
    predictors: dict[str, Callable[[nnx.Module], nnx.Module]]
    unlabeled_views: bool = False  # Needs the unlabeled stream ("u_weak", "u_strong").
    strong_view: bool = False
    trainable: nnx.filterlib.Filter = nnx.Param
    wrap_tx: Callable[[optax.GradientTransformation], optax.GradientTransformation] = lambda tx: tx
    init_prefix: str | None = (
        "encoder"  # Where `config.init_from`'s encoder goes (None: unsupported).
    )


def pixel_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    weights: jax.Array | None,
    num_classes: int,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The supervised step: ½[CE_w + Dice] (+ CE_w of the APP head's output when the model has one)."""

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        x, y = batch["image"], batch["mask"]

        def loss_fn(params):
            model = nnx.merge(graphdef, params, train_state.fresh(state.model_state))
            model.train()
            logits = model(x, rng)
            loss, aux = seglosses.supervised_loss(logits, y, weights, num_classes)
            if hasattr(model, "app"):  # Gradients of the APP term flow into the segmenter (DEDL).
                aux["app_ce"] = seglosses.weighted_cross_entropy(model.app(logits), y, weights)
                loss = loss + aux["app_ce"]
            aux["pixel_accuracy"] = pixel_accuracy(logits, y)
            return loss, (train_state.split_model(model)[2], aux)

        (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = state.apply_gradients(tx, grads, model_state)
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    return train_step


def app_tx(config: ml_collections.ConfigDict):
    """The APP head gets its own Adam (`config.app.lr`, DEDL's 1e-3); the segmenter `tx`."""

    def wrap(tx):
        if not config.app.enabled:
            return tx

        def labels(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: "app" if pretrained._key(path[0]) == "app" else "net", params
            )

        return optax.multi_transform({"net": tx, "app": optax.adam(config.app.lr)}, labels)

    return wrap


def method(config: ml_collections.ConfigDict) -> SegMethod:
    c = config.data.num_classes
    return SegMethod(
        name="supervised_seg",
        build_model=lambda rngs, ch: build_supervised(
            config.model, config.app, config.aug.image_size, ch, c, rngs
        ),
        make_step=lambda g, tx, w, _: make_train_step(g, tx, w, c),
        predictors={"": lambda m: m},
        wrap_tx=app_tx(config),
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    return run(config, workdir, method(config))


def aot_setup(config: ml_collections.ConfigDict, mesh):
    return aot_setup_for(config, mesh, method(config))


# ---- Model setup, shared by the trainers, s4mi_jax.aot and s4mi_jax.predict -------------------


def model_setup(
    config: ml_collections.ConfigDict, method: SegMethod, channels: int, mesh, num_train: int
):
    """(tx, schedule, total_steps, graphdef, init, abstract_state) of the model `method` trains:
    shared by training, `aot_setup` and `s4mi_jax.predict` (which restores into `abstract_state`)."""
    tx, schedule, total_steps, _, graphdef, init, abstract_state = train_state.for_method(
        config, method, channels, mesh, num_train
    )
    return tx, schedule, total_steps, graphdef, init, abstract_state


def aot_setup_for(config: ml_collections.ConfigDict, mesh, method: SegMethod):
    """(step, abstract state, abstract global batch) for `s4mi_jax.aot` and the paper-config test: no
    data read, nothing allocated. Channels from `config.data.channels` (default 3), classes from
    `config.data.num_classes`."""
    channels = config.data.channels or 3
    tx, _, total_steps, graphdef, _, abstract_state = model_setup(
        config, method, channels, mesh, config.batch_size
    )
    weights = None  # Median-frequency weights come from the labeled masks: uniform stand-ins here.
    if config.loss.class_weights == "median_frequency":
        weights = jnp.ones((config.data.num_classes,), jnp.float32)
    step = method.make_step(graphdef, tx, weights, total_steps)
    s, bs = config.aug.image_size, sharding.batch_sharding(mesh)

    def spec(n, *shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct((n, *shape), dtype, sharding=bs)

    batch = {
        "image": spec(config.batch_size, s, s, channels),
        "mask": spec(config.batch_size, s, s, dtype=jnp.int32),
    }
    if method.unlabeled_views:
        views = ("u_weak", "u_strong") if method.strong_view else ("u_weak",)
        batch.update({v: spec(config.unlabeled_batch_size, s, s, channels) for v in views})
    return step, abstract_state, batch


# ---- The shared run ----------------------------------------------------------------------------


def make_predict_fn(graphdef: nnx.GraphDef, net: Callable[[nnx.Module], nnx.Module]):
    """Jitted `(params, model_state, images) -> class map` in eval mode (BN running statistics)."""

    @jax.jit
    def predict(params, model_state, images):
        model = nnx.merge(graphdef, params, model_state)
        model.eval()
        return jnp.argmax(net(model)(images), axis=-1).astype(jnp.int32)

    return predict


def predict_all(predict, state, images: np.ndarray, batch_size: int, mesh) -> np.ndarray:
    """Class maps for all `images`, in fixed-shape batches split over the mesh (last one padded)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - n, axis=0)])
        g = sharding.put_batch({"image": chunk}, mesh)["image"]
        out.append(sharding.fetch(predict(state.params, state.model_state, g))[:n])
    return np.concatenate(out)


def _check_method_config(config, method: SegMethod) -> None:
    if config.select_metric not in (*segmetrics.PER_IMAGE, "dice_micro", "iou_micro"):
        raise ConfigError(
            f"config.select_metric={config.select_metric!r}: expected one of "
            f"{[*segmetrics.PER_IMAGE, 'dice_micro', 'iou_micro']}."
        )
    if config.init_from and method.init_prefix is None:
        raise ConfigError(f"config.init_from is not supported by {method.name}.")
    if config.init_from:
        pretrained.resolve(config.init_from)


@dataclasses.dataclass
class Prepared:
    """Everything a segmentation run builds before its loop: shared by `run` and s4mi_jax.benchmark."""

    data: Any
    manifest: Any
    mesh: Any
    local_batch: int
    schedule: Callable
    total_steps: int
    graphdef: nnx.GraphDef
    init: Callable
    abstract_state: Any
    step: Callable  # Pure (state, batch, rng) -> (state, metrics), not yet jitted.
    make_iterator: Callable[[], Any]  # A fresh training iterator (labeled [+ unlabeled] streams).
    images_per_step: int


def prepare(config: ml_collections.ConfigDict, method: SegMethod) -> Prepared:
    """Data (checked), manifest, mesh, model, optimizer, step and training iterator of a run."""
    _check_method_config(config, method)
    data = segdata.load(config.data, config.aug.image_size)
    manifest = segdata.make_manifest(data, config)
    train_idx, unl_idx = manifest.train, manifest.unlabeled
    if method.unlabeled_views and len(unl_idx) == 0:
        raise DataError(
            f"{method.name} needs unlabeled images, but label_fraction={config.label_fraction} "
            f"leaves none in {data.root} (every training image is labeled). Lower the fraction, "
            "add images without masks, or use configs/supervised_seg_*.py."
        )
    num_classes = data.num_classes
    weights = None
    if config.loss.class_weights == "median_frequency":
        weights = seglosses.median_frequency_weights(data.masks[train_idx], num_classes)
    elif config.loss.class_weights != "none":
        raise ConfigError(
            f"config.loss.class_weights={config.loss.class_weights!r}: expected "
            "'median_frequency' or 'none'."
        )
    mesh = sharding.make_mesh(config.mesh)
    local_batch = sharding.check_batch_size(config.batch_size, mesh)
    tx, schedule, total_steps, graphdef, init, abstract_state = model_setup(
        config, method, data.channels, mesh, len(train_idx)
    )
    w = None if weights is None else jnp.asarray(weights)
    step = method.make_step(graphdef, tx, w, total_steps)
    labeled = segdata.ArraySource(data, train_idx)
    kw = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if method.unlabeled_views:
        local_unl = sharding.check_batch_size(
            config.unlabeled_batch_size, mesh, "config.unlabeled_batch_size"
        )

        def make_iterator():
            return segdata.semi_iterator(
                labeled,
                segdata.LabeledView(config.aug),
                local_batch,
                segdata.ArraySource(data, unl_idx),
                segdata.UnlabeledViews(config.aug, method.strong_view),
                local_unl,
                seed=config.seed,
                **kw,
            )

        images_per_step = config.batch_size + config.unlabeled_batch_size
    else:

        def make_iterator():
            return pipeline.train_iterator(
                labeled,
                segdata.LabeledView(config.aug),
                batch_size=local_batch,
                seed=config.seed,
                num_workers=config.data.num_workers,
                **kw,
            )

        images_per_step = config.batch_size

    return Prepared(
        data,
        manifest,
        mesh,
        local_batch,
        schedule,
        total_steps,
        graphdef,
        init,
        abstract_state,
        step,
        make_iterator,
        images_per_step,
    )


def run(config: ml_collections.ConfigDict, workdir: str, method: SegMethod) -> dict:
    t_start = time.time()
    p = prepare(config, method)
    data, manifest, mesh, data_iter = p.data, p.manifest, p.mesh, p.make_iterator()
    schedule, total_steps, abstract_state = p.schedule, p.total_steps, p.abstract_state
    graphdef, init, images_per_step = p.graphdef, p.init, p.images_per_step
    num_classes, train_idx, unl_idx = data.num_classes, manifest.train, manifest.unlabeled
    step_fn = train_state.jit_step(p.step, train_state.shardings_of(abstract_state), mesh)
    test_keys, test_images, test_y = segdata.test_split(config, data, manifest)  # Checked first.
    prepare_workdir(workdir, config)
    manifest.save(os.path.join(workdir, "manifest.json"))
    checkpointer = Checkpointer.for_run(workdir, config)
    names = list(method.predictors)
    best_ckpts = {
        n: Checkpointer(os.path.join(workdir, "best" + (f"_{n}" if n else "")), max_to_keep=1)
        for n in names
    }
    best_path = os.path.join(workdir, "best.json")
    # Kept with every checkpoint: with config.json, what `s4mi_jax.predict` needs to rebuild the model.
    meta = {
        "manifest_hash": manifest.hash,
        "label_fraction": config.label_fraction,
        "in_channels": int(data.channels),
        "num_classes": int(num_classes),
    }
    resume_step = checkpointer.latest_step()
    init_path = os.path.join(workdir, "init_from.json")
    if resume_step is not None:
        state = checkpointer.restore(abstract_state, data_iter)
        resume_step = checkpointer.latest_step()  # A damaged latest one was moved aside.
        log(f"resumed from step {resume_step} in {checkpointer.directory}")
    else:
        state = init()
        if config.init_from:
            state, encoder_path, init_step = pretrained.load_encoder(
                state, config.init_from, config.get("init_encoder"), prefix=method.init_prefix
            )
            write_json(
                init_path,
                {"init_from": config.init_from, "encoder": encoder_path, "step": init_step},
            )
            log(f"encoder initialised from {config.init_from}: {encoder_path} (step {init_step})")
    best = {n: {"value": -np.inf, "step": None} for n in names}
    if resume_step is not None and os.path.exists(best_path):
        best.update(_read_json(best_path))

    predictors = {n: make_predict_fn(graphdef, net) for n, net in method.predictors.items()}
    val_x, val_y = segdata.eval_arrays(data, manifest.val, config.aug)
    test_x = segdata.eval_images(test_images, config.aug)
    eval_batch = config.eval.batch_size
    sharding.check_batch_size(eval_batch, mesh, "config.eval.batch_size")
    n_overlay = min(config.eval.overlays, len(test_x))
    overlay_names = [k.replace("#", "_") for k in test_keys[:n_overlay]]
    lower_better = config.select_metric in ("hd95", "asd", "assd")

    def score(state, name, x, y):
        preds = predict_all(predictors[name], state, x, eval_batch, mesh)
        summary, rows = segmetrics.dataset_metrics(preds, y, num_classes)
        return summary, rows, preds

    def validate(state: TrainState, step: int) -> dict[str, float]:
        out = {}
        for name in names:
            summary, _, _ = score(state, name, val_x, val_y)
            value = summary[config.select_metric] * (-1 if lower_better else 1)
            if np.isfinite(value) and value > best[name]["value"]:
                best[name] = {"value": float(value), "step": step}
                best_ckpts[name].save(step, state, None, meta)
                write_json(best_path, best)
            prefix = "val" + (f"_{name}" if name else "")
            out.update({f"{prefix}/{k}": v for k, v in summary.items()})
            log(
                f"{prefix} dice {summary['dice']:.4f} iou {summary['iou']:.4f} hd95 "
                f"{summary['hd95']:.2f} (best {config.select_metric} at step {best[name]['step']})"
            )
        if n_overlay and jax.process_index() == 0:  # A few test images, for the eye only.
            preds = predict_all(predictors[names[0]], state, test_x[:n_overlay], eval_batch, mesh)
            segmetrics.write_overlays(
                os.path.join(workdir, "overlays", f"step_{step}"),
                overlay_names,
                test_images[:n_overlay],
                test_y[:n_overlay],
                preds,
            )
        return out

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(
        f"{method.name}: {len(train_idx)} labeled training images ({config.label_fraction:.0%} of "
        f"the pool, manifest {manifest.hash[:12]}), {len(unl_idx) if method.unlabeled_views else 0} "
        f"unlabeled, val {len(val_x)}, test {len(test_x)}; {n_params / 1e6:.2f}M params; "
        f"{total_steps} steps"
    )
    writer = MetricWriter(workdir, resume_step=resume_step)
    state, stopped = train_loop(
        config,
        train_step=step_fn,
        state=state,
        data_iter=data_iter,
        mesh=mesh,
        checkpointer=checkpointer,
        writer=writer,
        total_steps=total_steps,
        images_per_step=images_per_step,
        schedule=schedule,
        eval_fn=validate,
        meta=meta,
    )
    checkpointer.close()
    for c in best_ckpts.values():
        c.wait()
    if stopped:
        writer.close()
        for c in best_ckpts.values():
            c.close()
        return {}

    results = {
        "method": method.name,
        "label_fraction": config.label_fraction,
        "seed": config.seed,
        "manifest_hash": manifest.hash,
        "dataset": os.path.basename(os.path.normpath(str(data.root))),
        "num_train": len(train_idx),
        "num_unlabeled": len(unl_idx) if method.unlabeled_views else 0,
        "num_val": len(val_x),
        "num_test": len(test_x),
        "select_metric": config.select_metric,
        "init_from": _read_json(init_path),
    }
    for name in names:
        final = state
        if best_ckpts[name].latest_step() is not None:
            final = best_ckpts[name].restore(abstract_state, None)
        best_ckpts[name].close()
        summary, rows, preds = score(final, name, test_x, test_y)
        key = "test" + (f"_{name}" if name else "")
        results[key] = summary
        results["best_step" + (f"_{name}" if name else "")] = best[name]["step"]
        per_image = [{"key": k, **r} for k, r in zip(test_keys, rows, strict=True)]
        write_json(os.path.join(workdir, f"{key}_per_image.json"), per_image)
        writer.write(int(state.step), {f"{key}/{k}": v for k, v in summary.items()})
        if n_overlay and jax.process_index() == 0:
            segmetrics.write_overlays(
                os.path.join(workdir, "overlays", key),
                overlay_names,
                test_images[:n_overlay],
                test_y[:n_overlay],
                preds[:n_overlay],
            )
        log(
            f"{key}: dice {summary['dice']:.4f}, iou {summary['iou']:.4f}, hd95 {summary['hd95']:.2f}, "
            f"asd {summary['asd']:.2f}, iou_micro {summary['iou_micro']:.4f}"
        )
    writer.close()
    prov = provenance.record(
        config,
        t_start=t_start,
        source=FolderSource(data.root, verify=False),  # Its images, masks and CSVs.
        eval_source=segdata.eval_folder(config),
        manifest_hash=manifest.hash,
        resumed_from_step=resume_step,
    )
    results["wall_time_s"] = prov["wall_time_s"]  # This invocation only.
    results["environment"] = prov["environment"]
    results["provenance"] = prov
    write_json(os.path.join(workdir, "results.json"), results)
    return results


def _read_json(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
