"""Classification at a label fraction: supervised from scratch, linear probe, or fine-tuning.

`config.method`:
- "supervised": encoder and head trained from random initialisation;
- "linear_probe": the encoder comes from `config.init_from` and is frozen (parameters and BatchNorm
  statistics unchanged; features under stop-gradient); only the linear head is trained;
- "finetune": the encoder comes from `config.init_from`, everything is trained.

The labeled subset is a nested, stratified, patient-grouped manifest (`data/manifests.py`) whose hash goes
into every checkpoint folder and result. The model is selected on the validation split
(`config.select_metric`, evaluated every `config.eval_every` steps) and tested once, at the end, on the test
split, with bootstrap 95% confidence intervals.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from s4mi_jax import provenance
from s4mi_jax.core import optim, pretrained, sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.core.loop import log, train_loop
from s4mi_jax.core.metric_writer import MetricWriter, prepare_workdir, write_json
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import augment, device_augment, manifests, pipeline
from s4mi_jax.data.sources import SubsetSource, source_keys
from s4mi_jax.errors import ConfigError, DataError
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
        labels = batch["label"]
        targets = (
            labels.astype(jnp.float32)
            if multilabel
            else jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
        )

        def objective(params):
            model = nnx.merge(graphdef, params, train_state.fresh(state.model_state))
            model.train()
            if (
                frozen_encoder
            ):  # Running BN statistics, no gradient into (or update of) the encoder.
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

        (loss, (model_state, aux)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        new_state = state.apply_gradients(tx, grads, model_state)
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    return train_step


def frozen_encoder_tx(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` for the head, exact zeros for the encoder (its parameters never change)."""

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if pretrained._key(path[0]) == "encoder" else "train", params
        )

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def model_setup(
    config: ml_collections.ConfigDict,
    channels: int,
    num_classes: int,
    mesh,
    num_train: int,
):
    """(tx, schedule, total_steps, graphdef, init, abstract_state) of the classifier `config` trains:
    shared by training, `aot_setup` and `s4mi_jax.predict` (which restores into `abstract_state`)."""
    tx, schedule, total_steps, _ = optim.for_run(config, num_train)
    if config.method == "linear_probe":
        tx = frozen_encoder_tx(tx)
    graphdef, init, abstract_state = train_state.initializer(
        lambda rngs: build_classifier(config.model, channels, num_classes, rngs),
        tx,
        config.seed,
        mesh,
        rules=sharding.rules_from_config(config),
    )
    return tx, schedule, total_steps, graphdef, init, abstract_state


def load_splits(config: ml_collections.ConfigDict):
    """(source, manifest, train/val/test sources); validates the data before anything is written."""
    source, manifest, notes = manifests.open_and_split(
        config.data, fraction=config.label_fraction, seed=config.seed
    )
    if manifest is None:
        raise DataError(f"{source.root}: no labels (labels.csv with filename,label is needed).")
    if np.asarray(source.labels).ndim == 1 and len(source.class_names) < 2:
        raise DataError(
            f"{source.root}: every labeled image is class {source.class_names[0]!r}; a classifier "
            "needs at least 2 classes (or name them all in config.data.class_names)."
        )
    for note in notes:
        log(note)
    test = manifests.test_source(config.data, source, manifest)
    return (
        source,
        manifest,
        SubsetSource(source, manifest.train),
        SubsetSource(source, manifest.val),
        test,
    )


def _counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    if labels.ndim == 2:
        return labels.sum(axis=0)
    return np.bincount(labels, minlength=num_classes)


def _loss(config: ml_collections.ConfigDict, multilabel: bool) -> Callable:
    name = config.loss.name
    if multilabel and name == "cross_entropy":
        name = "sigmoid_cross_entropy"  # Softmax cross-entropy is single-label only.
    return losses.get_loss(name)


def _check_expected(config, source, num_classes: int, multilabel: bool) -> None:
    """`config.data.num_classes` / `multilabel` (set by the paper configs) must match the data."""
    expected = config.data.get("num_classes")
    if expected and expected != num_classes:
        raise DataError(
            f"{source.root}: {num_classes} classes {list(source.class_names)[:12]} but "
            f"config.data.num_classes={expected} (the dataset this config was written for)."
        )
    want = config.data.get("multilabel")
    if want is not None and bool(want) != multilabel:
        kind = "one 0/1 column per class" if want else "a filename,label table"
        raise DataError(
            f"{source.root}: labels.csv is {'multi' if multilabel else 'single'}-label but "
            f"config.data.multilabel={want}; this config expects {kind}."
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    t_start = time.time()
    if config.method not in METHODS:
        raise ConfigError(f"config.method={config.method!r}: expected one of {METHODS}.")
    if config.method != "supervised" and not config.init_from:
        raise ConfigError(
            f"config.method={config.method!r} needs config.init_from=<pretraining workdir>."
        )
    if config.init_from:
        pretrained.resolve(config.init_from)  # Fails now, before anything is written.
    source, manifest, train_src, val_src, test_src = load_splits(config)
    num_classes = len(source.class_names)
    multilabel = source.labels.ndim == 2
    _check_expected(config, source, num_classes, multilabel)
    mesh = sharding.make_mesh(config.mesh)
    local_batch = sharding.check_batch_size(config.batch_size, mesh)
    frozen = config.method == "linear_probe"
    tx, schedule, total_steps, graphdef, init, abstract_state = model_setup(
        config, source.channels, num_classes, mesh, len(train_src)
    )
    counts = _counts(train_src.labels, num_classes)
    step = make_train_step(
        graphdef,
        tx,
        _loss(config, multilabel),
        num_classes,
        losses.class_weights(counts, config.loss.class_weights),
        frozen_encoder=frozen,
        multilabel=multilabel,
    )
    if config.aug.get("on_device", False):  # The host only resizes; views are made in the step.
        step = device_augment.with_device_views(step, device_augment.one_view(config.aug))
    step_fn = train_state.jit_step(step, train_state.shardings_of(abstract_state), mesh)
    data_iter = pipeline.train_iterator(
        train_src,
        device_augment.host_transform(config.aug, augment.OneView(config.aug)),
        batch_size=local_batch,
        seed=config.seed,
        num_workers=config.data.num_workers,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    eval_src = test_src if config.data.eval_root else None
    prepare_workdir(workdir, config, data={"dataset": source, "eval_dataset": eval_src})
    manifest.save(os.path.join(workdir, "manifest.json"))
    checkpointer = Checkpointer.for_run(workdir, config)
    best_ckpt = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
    best_path = os.path.join(workdir, "best.json")
    # Kept with every checkpoint: with config.json, what `s4mi_jax.predict` needs to rebuild the model.
    meta = {
        "manifest_hash": manifest.hash,
        "label_fraction": config.label_fraction,
        "class_names": list(source.class_names),
        "in_channels": int(source.channels),
        "multilabel": bool(multilabel),
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
                state, config.init_from, config.get("init_encoder")
            )
            write_json(
                init_path,
                {"init_from": config.init_from, "encoder": encoder_path, "step": init_step},
            )
            log(f"encoder initialised from {config.init_from}: {encoder_path} (step {init_step})")
    best = {"value": -np.inf, "step": None}
    if resume_step is not None and os.path.exists(best_path):
        best = _read_json(best_path)

    predict = features.make_embed_fn(graphdef, lambda m: m)  # Logits in eval mode.

    def evaluate(state: TrainState, split) -> dict[str, float]:
        logits, labels = features.extract(
            predict,
            state.params,
            state.model_state,
            split,
            config.aug,
            batch_size=config.eval.batch_size,
            mesh=mesh,
        )
        return labels, predictions.probabilities(logits, multilabel)

    def validate(state: TrainState, step: int) -> dict[str, float]:
        labels, probs = evaluate(state, val_src)
        values = metrics.classification_metrics(labels, probs, multilabel=multilabel)
        value = values[config.select_metric]
        if np.isfinite(value) and value > best["value"]:
            best.update(value=float(value), step=step)
            best_ckpt.save(step, state, None, meta)
            write_json(best_path, best)
        log(
            f"val {config.select_metric} {value:.4f} (best {best['value']:.4f} at step "
            f"{best['step']})"
        )
        return {f"val/{k}": v for k, v in values.items()}

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(
        f"{config.method}: {len(train_src)} labeled training images ({config.label_fraction:.0%} "
        f"of the pool, manifest {manifest.hash[:12]}), val {len(val_src)}, test {len(test_src)}; "
        f"{config.model.name} ({n_params / 1e6:.2f}M params); {total_steps} steps"
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
        images_per_step=config.batch_size,
        schedule=schedule,
        eval_fn=validate,
        meta=meta,
    )
    checkpointer.close()
    best_ckpt.wait()
    if stopped:
        writer.close()
        best_ckpt.close()
        return {}

    # Test once, with the model selected on validation.
    best_step = best_ckpt.latest_step()
    if best_step is not None:
        state = best_ckpt.restore(abstract_state, None)
    best_ckpt.close()
    labels, probs = evaluate(state, test_src)
    keys = source_keys(test_src.source)
    predictions.write_csv(
        os.path.join(workdir, "test_predictions.csv"),
        [keys[i] for i in test_src.indices],
        probs,
        source.class_names,
        multilabel=multilabel,
        labels=labels,
    )
    test = metrics.classification_metrics(labels, probs, multilabel=multilabel)
    ci = metrics.bootstrap_ci(
        labels, probs, multilabel=multilabel, n_boot=config.eval.bootstrap, seed=config.seed
    )
    writer.write(int(state.step), {f"test/{k}": v for k, v in test.items()})
    writer.close()
    prov = provenance.record(
        config,
        t_start=t_start,
        source=source,
        eval_source=test_src if config.data.eval_root else None,
        manifest_hash=manifest.hash,
        resumed_from_step=resume_step,
    )
    results = {
        "method": config.method,
        "label_fraction": config.label_fraction,
        "seed": config.seed,
        "manifest_hash": manifest.hash,
        "dataset": os.path.basename(os.path.normpath(str(source.root))),
        "num_train": len(train_src),
        "num_val": len(val_src),
        "num_test": len(test_src),
        "class_names": list(source.class_names),
        "select_metric": config.select_metric,
        "best_step": best_step,
        "best_val": best["value"],
        "init_from": _read_json(init_path),
        "test": test,
        "test_ci95": {k: list(v) for k, v in ci.items()},
        "wall_time_s": prov["wall_time_s"],  # This invocation only.
        "environment": prov["environment"],
        "provenance": prov,
    }
    write_json(os.path.join(workdir, "results.json"), results)
    log(
        "test: "
        + ", ".join(
            f"{k} {test[k]:.4f}"
            for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
            if k in test
        )
    )
    return results


def _read_json(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def aot_setup(config: ml_collections.ConfigDict, mesh):
    """(step, abstract state, abstract global batch) for `s4mi_jax.aot` and the paper-config test: no
    data read, nothing allocated. Channels and classes from `config.data.channels` / `num_classes`
    (defaults 1 and 2)."""
    channels = config.data.channels or 1
    num_classes = config.data.get("num_classes") or 2
    multilabel = bool(config.data.get("multilabel"))
    tx, _, _, graphdef, _, abstract_state = model_setup(
        config, channels, num_classes, mesh, config.batch_size
    )
    step = make_train_step(
        graphdef,
        tx,
        _loss(config, multilabel),
        num_classes,
        None,
        frozen_encoder=config.method == "linear_probe",
        multilabel=multilabel,
    )
    size = config.aug.image_size
    batch_sharding = sharding.batch_sharding(mesh)
    label_shape = (config.batch_size, num_classes) if multilabel else (config.batch_size,)
    batch = {
        "image": jax.ShapeDtypeStruct(
            (config.batch_size, size, size, channels), jnp.float32, sharding=batch_sharding
        ),
        "label": jax.ShapeDtypeStruct(label_shape, jnp.int32, sharding=batch_sharding),
    }
    return step, abstract_state, batch
