"""Segmentation at a label fraction: what the supervised, FixMatch and cross-teaching trainers share
(`task(...)` builds their `run.Task`), and the supervised method itself (`config.trainer = "segment"`).

Shared: the data (`data/segmentation.py`: checked image/mask folders, the nested label-fraction
manifest), median-frequency class weights from the labeled training masks, the Grain iterator (labeled,
or labeled + unlabeled streams), and the evaluation (`evaluators/pixel_predict.py`: validation every
`eval_every` steps selecting each network on `select_metric`, mean per-image IoU by default; overlays;
the test split once, at the end, with the selected weights). The lifecycle is core/run.py's.

Supervised loss: S4MI's ½[CE_w + Dice] (median-frequency weights w, as S4MI's U-Net training); with
`config.app.enabled`, plus DEDL's autoencoder post-processing term CE_w(APP(U(x)), y) (the APP head
has its own Adam, `config.app.lr`, and is not used at inference).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from s4mi_jax.core import optim, run, sharding, train_state
from s4mi_jax.core.loop import log
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import pipeline
from s4mi_jax.data import segmentation as segdata
from s4mi_jax.data.sources import FolderSource
from s4mi_jax.errors import ConfigError, DataError
from s4mi_jax.evaluators import pixel_predict
from s4mi_jax.evaluators import segmentation as segmetrics
from s4mi_jax.losses import segmentation as seglosses
from s4mi_jax.models.segmenter import build_supervised

SELECT_METRICS = (*segmetrics.PER_IMAGE, "dice_micro", "iou_micro")


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

        return optim.split_top_key("app", ("app", optax.adam(config.app.lr)), ("net", tx))

    return wrap


class SegContent(NamedTuple):
    data: Any  # data/segmentation.SegmentationData
    manifest: Any
    weights: np.ndarray | None  # Median-frequency class weights of the labeled training masks.
    test: segdata.TestSplit  # The manifest's test split, or `data.eval_root`.


def load_data(config: ml_collections.ConfigDict) -> run.RunData:
    """The image/mask data (checked), its label-fraction manifest and the class weights."""
    if config.select_metric not in SELECT_METRICS:
        raise ConfigError(
            f"config.select_metric={config.select_metric!r}: expected one of {list(SELECT_METRICS)}."
        )
    data = segdata.load(config.data, config.aug.image_size)
    manifest = segdata.make_manifest(data, config)
    weights = None
    if config.loss.class_weights == "median_frequency":
        weights = seglosses.median_frequency_weights(data.masks[manifest.train], data.num_classes)
    elif config.loss.class_weights != "none":
        raise ConfigError(
            f"config.loss.class_weights={config.loss.class_weights!r}: expected "
            "'median_frequency' or 'none'."
        )
    test = segdata.test_split(config, data, manifest)  # Checked before anything is written.
    return run.RunData(
        channels=data.channels,
        num_examples=len(manifest.train),
        manifest=manifest,
        # Their images, masks and CSVs.
        sources={
            "dataset": FolderSource(data.root, verify=False),
            "eval_dataset": segdata.eval_folder(config),
        },
        # With config.json, what `s4mi_jax.predict` needs to rebuild the model.
        meta={
            "manifest_hash": manifest.hash,
            "label_fraction": config.label_fraction,
            "in_channels": int(data.channels),
            "num_classes": int(data.num_classes),
        },
        content=SegContent(data, manifest, weights, test),
    )


def abstract_data(config: ml_collections.ConfigDict) -> run.RunData:
    """No data read (AOT, predict): channels from `config.data.channels` (default 3), classes from
    `config.data.num_classes`."""
    return run.RunData(config.data.channels or 3, config.batch_size)


def task(
    config: ml_collections.ConfigDict,
    data: run.RunData,
    mesh,
    *,
    name: str,
    build_model: Callable[[nnx.Rngs, int], nnx.Module],
    make_step: Callable[[run.StepArgs, jax.Array | None], run.Step],
    predictors: dict[str, Callable[[nnx.Module], nnx.Module]],
    unlabeled: tuple[str, ...] = (),
    init_prefix: str | None = "encoder",
    **fields,
) -> run.Task:
    """A segmentation `run.Task`. `make_step(args, class weights)`; `predictors`: the networks
    evaluated, each selected on validation (name -> model -> segmenter; "" is the method's result,
    `test` in results.json, others `test_<name>`); `unlabeled`: the unlabeled views the step reads
    ("u_weak", "u_strong"); `init_prefix`: where `config.init_from` goes (None: unsupported)."""
    if config.init_from and init_prefix is None:
        raise ConfigError(f"config.init_from is not supported by {name}.")
    c, b, s, ch = data.content, config.batch_size, config.aug.image_size, data.channels
    weights = None  # Abstract runs: uniform stand-ins for the median-frequency weights.
    if c is not None and c.weights is not None:
        weights = jnp.asarray(c.weights)
    elif c is None and config.loss.class_weights == "median_frequency":
        weights = jnp.ones((config.data.num_classes,), jnp.float32)
    u = 0
    if unlabeled:
        u = config.unlabeled_batch_size
        sharding.check_batch_size(u, mesh, "config.unlabeled_batch_size")
    if c is not None and unlabeled and len(c.manifest.unlabeled) == 0:
        raise DataError(
            f"{name} needs unlabeled images, but label_fraction={config.label_fraction} leaves "
            f"none in {c.data.root} (every training image is labeled). Lower the fraction, add "
            "images without masks, or use configs/supervised_seg_*.py."
        )
    if c is not None and not unlabeled:  # Mask-less images are unused here: say so.
        note = segdata.images_without_masks_warning(c.data)
        if note:
            log(note)
    summary = name
    if c is not None:
        n_unl = len(c.manifest.unlabeled) if unlabeled else 0
        summary = (
            f"{name}: {len(c.manifest.train)} labeled training images ({config.label_fraction:.0%} "
            f"of the pool, manifest {c.manifest.hash[:12]}), {n_unl} unlabeled, val "
            f"{len(c.manifest.val)}, test {len(c.test.keys)}"
        )
    return run.Task(
        name=name,
        build_model=lambda rngs: build_model(rngs, ch),
        make_step=lambda a: make_step(a, weights),
        batch_shapes={
            "image": ((b, s, s, ch), jnp.float32),
            "mask": ((b, s, s), jnp.int32),
            **{v: ((u, s, s, ch), jnp.float32) for v in unlabeled},
        },
        summary=summary,
        make_iterator=None if c is None else lambda: _iterator(config, c, unlabeled),
        evaluator=lambda ctx: pixel_predict.evaluator(ctx, name, predictors, bool(unlabeled)),
        starts=run.config_start(config, init_prefix) if init_prefix else (),
        examples_per_step=b + u,
        networks=predictors,
        **fields,
    )


def _iterator(config: ml_collections.ConfigDict, c: SegContent, unlabeled: tuple[str, ...]):
    """The labeled stream, or labeled + unlabeled streams (`config.unlabeled_batch_size`)."""
    labeled = segdata.ArraySource(c.data, c.manifest.train)
    if not unlabeled:
        return pipeline.run_iterator(config, labeled, segdata.LabeledView(config.aug))
    n = jax.process_count()
    return segdata.semi_iterator(
        labeled,
        segdata.LabeledView(config.aug),
        config.batch_size // n,
        segdata.ArraySource(c.data, c.manifest.unlabeled),
        segdata.UnlabeledViews(config.aug, "u_strong" in unlabeled),
        config.unlabeled_batch_size // n,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=n,
    )


def supervised_task(config: ml_collections.ConfigDict, data: run.RunData, mesh) -> run.Task:
    """The supervised U-Net (or any `config.model`), with DEDL's APP head if `config.app.enabled`."""
    c = config.data.num_classes
    return task(
        config,
        data,
        mesh,
        name="supervised_seg",
        build_model=lambda rngs, ch: build_supervised(
            config.model, config.app, config.aug.image_size, ch, c, rngs
        ),
        make_step=lambda a, w: make_train_step(a.graphdef, a.tx, w, c),
        predictors={"": lambda m: m},
        wrap_tx=app_tx(config),
    )


TRAINER = run.Trainer(load_data, abstract_data, supervised_task)

train_and_evaluate = TRAINER.train_and_evaluate
