"""Classification at a label fraction: supervised from scratch, linear probe, or fine-tuning.

`config.method`:
- "supervised": encoder and head trained from random initialisation;
- "linear_probe": the encoder comes from `config.init_from` and is frozen (parameters and BatchNorm
  statistics unchanged; features under stop-gradient); only the linear head is trained;
- "finetune": the encoder comes from `config.init_from`, everything is trained.

The labeled subset is a nested, stratified, patient-grouped manifest (`data/manifests.py`, its hash in
every checkpoint and result). The model is selected on validation (`config.select_metric` every
`config.eval_every` steps) and tested once, at the end, with bootstrap 95% confidence intervals.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from s4mi_jax.core import optim, run, train_state
from s4mi_jax.core.loop import log
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import augment, classification, device_augment, pipeline
from s4mi_jax.data.sources import eval_overlap_warning, source_keys
from s4mi_jax.errors import ConfigError
from s4mi_jax.evaluators import features, metrics, predictions
from s4mi_jax.losses import classification as losses
from s4mi_jax.models.classifier import build_classifier

METHODS = ("supervised", "linear_probe", "finetune")


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: Callable,
    num_classes: int,
    weights: np.ndarray | None,
    *,
    frozen_encoder: bool,
    multilabel: bool,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pure step `(state, batch, rng) -> (state, metrics)`."""
    class_weights = None if weights is None else jnp.asarray(weights)

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        del rng
        y = batch["label"]
        targets = y.astype(jnp.float32) if multilabel else jax.nn.one_hot(y, num_classes)

        def objective(params):
            model = nnx.merge(graphdef, params, train_state.fresh(state.model_state))
            model.train()
            if frozen_encoder:  # Running BN statistics, no gradient into (or update of) it.
                model.encoder.eval()
                logits = model.head(jax.lax.stop_gradient(model.encoder(batch["image"])))
            else:
                logits = model(batch["image"])
            loss = loss_fn(logits, targets, class_weights)
            if multilabel:
                correct = jnp.mean((logits > 0) == (targets > 0.5))
            else:
                correct = jnp.mean(jnp.sum(targets * (logits >= logits.max(-1, keepdims=True)), -1))
            return loss, (train_state.split_model(model)[2], {"accuracy": correct})

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (loss, (model_state, aux)), grads = grad_fn(state.params)
        new_state = state.apply_gradients(tx, grads, model_state)
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    return train_step


def frozen_encoder_tx(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` for the head, exact zeros for the encoder (its parameters never change)."""
    return optim.split_top_key("encoder", ("frozen", optax.set_to_zero()), ("train", tx))


def _check_method(config: ml_collections.ConfigDict) -> None:
    if config.method not in METHODS:
        raise ConfigError(f"config.method={config.method!r}: expected one of {METHODS}.")
    if config.method != "supervised" and not config.init_from:
        raise ConfigError(
            f"config.method={config.method!r} needs config.init_from=<pretraining workdir>."
        )


def check_select_metric(config: ml_collections.ConfigDict, num_classes: int, multilabel: bool):
    """`config.select_metric` is one of the metrics validation computes (else a KeyError at the first
    validation, after the compile): the names come from the metrics function itself."""
    labels = np.eye(num_classes, dtype=np.int32) if multilabel else np.arange(num_classes)
    known = metrics.classification_metrics(
        labels, np.full((num_classes, num_classes), 1 / num_classes), multilabel=multilabel
    )
    if config.select_metric not in known:
        names = [k for k in known if "/" not in k]
        raise ConfigError(
            f"config.select_metric={config.select_metric!r} is not a classification metric; choose "
            f"one of {names} (or a per-class one, e.g. 'f1/1')."
        )


def check_splits(config: ml_collections.ConfigDict, s: classification.Splits) -> None:
    """Validation selects the model and the test scores it: neither may be empty (an empty one would
    fail only after training)."""
    if len(s.val) == 0:
        raise ConfigError(
            f"config.data.val_fraction={config.data.val_fraction} leaves no validation images in "
            f"{s.source.root}; the model is selected on validation (config.select_metric): set "
            "data.val_fraction > 0 (e.g. 0.1)."
        )
    if len(s.test) == 0:
        raise ConfigError(
            f"config.data.test_fraction={config.data.test_fraction} leaves no test images in "
            f"{s.source.root} and config.data.eval_root is not set: set data.test_fraction > 0 "
            "(e.g. 0.2) or give data.eval_root."
        )


def load_data(config: ml_collections.ConfigDict) -> run.RunData:
    _check_method(config)
    s = classification.load_splits(config)
    if config.data.eval_root:  # A test on training images measures memorisation: say so.
        note = eval_overlap_warning(s.test, s.source, config.data.eval_root)
        if note:
            log(note)
    multilabel = s.source.labels.ndim == 2
    classification.check_expected(config, s.source, len(s.source.class_names), multilabel)
    check_select_metric(config, len(s.source.class_names), multilabel)
    check_splits(config, s)
    return run.RunData(
        channels=s.source.channels,
        num_examples=len(s.train),
        manifest=s.manifest,
        sources={"dataset": s.source, "eval_dataset": s.test if config.data.eval_root else None},
        # With config.json, what `s4mi_jax.predict` needs to rebuild the model.
        meta={
            "manifest_hash": s.manifest.hash,
            "label_fraction": config.label_fraction,
            "class_names": list(s.source.class_names),
            "in_channels": int(s.source.channels),
            "multilabel": bool(multilabel),
        },
        content=s,
    )


def abstract_data(config: ml_collections.ConfigDict) -> run.RunData:
    """No data read (AOT, predict): channels and classes from `config.data.channels` /
    `num_classes` / `multilabel` (defaults 1, 2, single-label)."""
    names = [str(i) for i in range(config.data.get("num_classes") or 2)]
    meta = {"class_names": names, "multilabel": bool(config.data.get("multilabel"))}
    return run.RunData(config.data.channels or 1, config.batch_size, meta=meta)


def task(config: ml_collections.ConfigDict, data: run.RunData, mesh) -> run.Task:
    if config.method not in METHODS:  # A run also needs its init_from (load_data checks).
        raise ConfigError(f"config.method={config.method!r}: expected one of {METHODS}.")
    num_classes, multilabel = len(data.meta["class_names"]), data.meta["multilabel"]
    s, b, size = data.content, config.batch_size, config.aug.image_size
    frozen = config.method == "linear_probe"
    weights = None
    if s is not None:
        weights = losses.class_weights(
            classification.class_counts(s.train.labels, num_classes), config.loss.class_weights
        )

    def make_iterator():
        return pipeline.run_iterator(
            config, s.train, device_augment.host_transform(config.aug, augment.OneView(config.aug))
        )

    summary = config.method
    if s is not None:
        summary = (
            f"{config.method}: {len(s.train)} labeled training images ({config.label_fraction:.0%} "
            f"of the pool, manifest {s.manifest.hash[:12]}), val {len(s.val)}, test {len(s.test)}; "
            f"{config.model.name}"
        )
    return run.Task(
        name=config.method,
        build_model=lambda rngs: build_classifier(config.model, data.channels, num_classes, rngs),
        make_step=lambda a: make_train_step(
            a.graphdef,
            a.tx,
            losses.get_loss(config.loss.name, multilabel),
            num_classes,
            weights,
            frozen_encoder=frozen,
            multilabel=multilabel,
        ),
        batch_shapes={
            "image": ((b, size, size, data.channels), jnp.float32),
            "label": ((b, num_classes) if multilabel else (b,), jnp.int32),
        },
        summary=summary,
        make_iterator=None if s is None else make_iterator,
        evaluator=lambda ctx: _evaluator(ctx, multilabel),
        wrap_tx=frozen_encoder_tx if frozen else (lambda tx: tx),
        starts=run.config_start(config),
        examples_per_step=b,
        networks={"": lambda m: m},
        device_views=device_augment.one_view(config.aug),
    )


def _evaluator(ctx: run.Context, multilabel: bool) -> run.Evaluator:
    """Validation selects the model (`config.select_metric`); the test split is scored once, with the
    selected weights, with bootstrap 95% confidence intervals."""
    config, s = ctx.config, ctx.data.content
    predict = features.make_embed_fn(ctx.built.graphdef, lambda m: m)  # Logits in eval mode.

    def evaluate(state: TrainState, split):
        logits, labels = features.extract(
            predict,
            state.params,
            state.model_state,
            split,
            config.aug,
            batch_size=config.eval.batch_size,
            mesh=ctx.mesh,
        )
        return labels, predictions.probabilities(logits, multilabel)

    def validate(state: TrainState, step: int) -> run.Validation:
        labels, probs = evaluate(state, s.val)
        values = metrics.classification_metrics(labels, probs, multilabel=multilabel)
        return run.Validation(
            {f"val/{k}": v for k, v in values.items()}, {"": values[config.select_metric]}
        )

    def test(state: TrainState, best: run.BestCheckpoints) -> dict:
        state = best.restore("", state)
        labels, probs = evaluate(state, s.test)
        keys = source_keys(s.test.source)
        predictions.write_csv(
            os.path.join(ctx.workdir, "test_predictions.csv"),
            [keys[i] for i in s.test.indices],
            probs,
            s.source.class_names,
            multilabel=multilabel,
            labels=labels,
        )
        test = metrics.classification_metrics(labels, probs, multilabel=multilabel)
        ci = metrics.bootstrap_ci(
            labels, probs, multilabel=multilabel, n_boot=config.eval.bootstrap, seed=config.seed
        )
        ctx.writer.write(int(state.step), {f"test/{k}": v for k, v in test.items()})
        shown = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
        log("test: " + ", ".join(f"{k} {test[k]:.4f}" for k in shown if k in test))
        return {
            "method": config.method,
            "label_fraction": config.label_fraction,
            "seed": config.seed,
            "manifest_hash": s.manifest.hash,
            "dataset": os.path.basename(os.path.normpath(str(s.source.root))),
            "num_train": len(s.train),
            "num_val": len(s.val),
            "num_test": len(s.test),
            "class_names": list(s.source.class_names),
            "select_metric": config.select_metric,
            "best_step": best.step(""),
            "best_val": best.value(""),
            "test": test,
            "test_ci95": {k: list(v) for k, v in ci.items()},
        }

    return run.Evaluator(test=test, validate=validate, networks=("",))


TRAINER = run.Trainer(load_data, abstract_data, task)

train_and_evaluate = TRAINER.train_and_evaluate
