"""SimCLR pretraining (Chen et al. 2020; methods.md §6.1) and a linear probe of the frozen encoder.

One forward pass over both views concatenated (BatchNorm statistics over all 2B images of the global batch,
as the official code), NT-Xent over the global batch, LARS with warm-up + cosine.
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

from s4mi_jax.core import optim, sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.core.loop import log, train_loop
from s4mi_jax.core.metric_writer import (
    MetricWriter,
    prepare_workdir,
    run_environment,
    write_json,
)
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import augment, manifests, pipeline
from s4mi_jax.data.sources import SubsetSource, is_labeled, open_source, source_keys
from s4mi_jax.errors import DataError
from s4mi_jax.evaluators import features
from s4mi_jax.evaluators.linear_probe import evaluate_linear_probe
from s4mi_jax.losses.contrastive import nt_xent
from s4mi_jax.models.simclr import build_simclr_model


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, temperature: float
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pure SimCLR step `(state, batch, rng) -> (state, metrics)`; `rng` is unused (host-side views)."""

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        del rng
        x = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, train_state.fresh(state.model_state))
            model.train()
            _, z = model(x)
            z1, z2 = jnp.split(z, 2, axis=0)
            loss, aux = nt_xent(z1, z2, temperature)
            zn = z * jax.lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)
            # Collapse monitor: ~1/sqrt(D) for spread-out embeddings, -> 0 when all rows coincide.
            aux["embedding_std"] = jnp.mean(jnp.std(zn, axis=0))
            return loss, (train_state.split_model(model)[2], aux)

        (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
        )
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    return train_step


def aot_setup(config: ml_collections.ConfigDict, mesh):
    """(step, abstract state, abstract global batch) for `s4mi_jax.aot`: no data read, nothing allocated.

    Channels come from `config.data.channels` (default 1, grayscale X-rays); the schedule's length does
    not change the compiled program.
    """
    tx, _, _, _ = optim.for_run(config, config.batch_size)
    channels = config.data.channels or 1
    graphdef, _, abstract_state = train_state.initializer(
        lambda rngs: build_simclr_model(config.model, channels, rngs),
        tx,
        config.seed,
        mesh,
        rules=sharding.rules_from_config(config),
    )
    size = config.aug.image_size
    view = jax.ShapeDtypeStruct(
        (config.batch_size, size, size, channels),
        jnp.float32,
        sharding=sharding.batch_sharding(mesh),
    )
    step = make_train_step(graphdef, tx, config.loss.temperature)
    return step, abstract_state, {"view1": view, "view2": view}


def load_data(config: ml_collections.ConfigDict):
    """(pretraining source, probe train source, probe test source), or probe sources None.

    The split is the classification manifest's at 100% labels (same `data.split_seed`, `val_fraction`,
    `test_fraction`), so pretraining never sees a validation or test patient of the label-fraction
    experiments that start from it; the probe trains on the training pool and tests on the test split.
    """
    source = open_source(config.data.root, channels=config.data.channels, verify=config.data.verify)
    labeled = is_labeled(source.labels)
    if not labeled.any():  # Unlabeled data: pretraining only, nothing to probe.
        return source, None, None
    manifest = manifests.make_manifest(
        source_keys(source),
        source.labels,
        source.groups,
        fraction=1.0,
        seed=config.seed,
        split_seed=config.data.split_seed,
        val_fraction=config.data.val_fraction,
        test_fraction=0.0 if config.data.eval_root else config.data.test_fraction,
    )
    pretrain = SubsetSource(source, np.union1d(manifest.train_pool, manifest.unlabeled))
    if config.data.eval_root:
        test = open_source(
            config.data.eval_root, channels=source.channels, verify=config.data.verify
        )
        test_labeled = np.flatnonzero(is_labeled(test.labels))
        if len(test_labeled) == 0:
            raise DataError(
                f"config.data.eval_root={config.data.eval_root}: no labeled images "
                "(a labels.csv with filename,label is needed for the linear probe)."
            )
        probe_test = SubsetSource(test, test_labeled)
    else:
        probe_test = SubsetSource(source, manifest.test)
    return pretrain, SubsetSource(source, manifest.train), probe_test


def linear_probe(config, graphdef, state, probe_train, probe_test, mesh) -> dict[str, float]:
    embed = features.make_embed_fn(graphdef, lambda m: m.encoder)
    kw = dict(batch_size=config.eval.batch_size, mesh=mesh)
    train_x, train_y = features.extract(
        embed, state.params, state.model_state, probe_train, config.aug, **kw
    )
    test_x, test_y = features.extract(
        embed, state.params, state.model_state, probe_test, config.aug, **kw
    )
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return evaluate_linear_probe(train_x, train_y, test_x, test_y, num_classes, l2=config.eval.l2)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    t_start = time.time()
    # Validates the data before anything is written.
    source, probe_train, probe_test = load_data(config)
    mesh = sharding.make_mesh(config.mesh)
    local_batch = sharding.check_batch_size(config.batch_size, mesh)
    if len(source) < config.batch_size:
        raise DataError(
            f"{len(source)} training images in {source.root} is fewer than "
            f"config.batch_size={config.batch_size}."
        )
    tx, schedule, total_steps, steps_per_epoch = optim.for_run(config, len(source))
    graphdef, init, abstract_state = train_state.initializer(
        lambda rngs: build_simclr_model(config.model, source.channels, rngs),
        tx,
        config.seed,
        mesh,
        rules=sharding.rules_from_config(config),
    )
    step_fn = train_state.jit_step(
        make_train_step(graphdef, tx, config.loss.temperature),
        train_state.shardings_of(abstract_state),
        mesh,
    )
    data_iter = pipeline.train_iterator(
        source,
        augment.TwoViews(config.aug),
        batch_size=local_batch,
        seed=config.seed,
        num_workers=config.data.num_workers,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    prepare_workdir(workdir, config)
    checkpointer = Checkpointer.for_run(workdir, config)
    resume_step = checkpointer.latest_step()
    results = {}
    if resume_step is not None:
        state = checkpointer.restore(abstract_state, data_iter)
        log(f"resumed from step {resume_step} in {checkpointer.directory}")
    else:
        state = init()
        if config.eval.linear_probe and config.eval.probe_at_init and probe_train is not None:
            results["probe_at_init"] = linear_probe(
                config, graphdef, state, probe_train, probe_test, mesh
            )
            log(f"linear probe of the random-init encoder: {_fmt(results['probe_at_init'])}")
            write_json(os.path.join(workdir, "probe_at_init.json"), results["probe_at_init"])
    if "probe_at_init" not in results and os.path.exists(
        os.path.join(workdir, "probe_at_init.json")
    ):
        with open(os.path.join(workdir, "probe_at_init.json")) as f:
            results["probe_at_init"] = json.load(f)

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(
        f"SimCLR: {len(source)} images, {config.model.name} ({n_params / 1e6:.2f}M params), "
        f"global batch {config.batch_size} on {mesh.devices.size} device(s), "
        f"{total_steps} steps ({steps_per_epoch} per epoch)"
    )
    writer = MetricWriter(workdir, resume_step=resume_step)
    state, preempted = train_loop(
        config,
        train_step=step_fn,
        state=state,
        data_iter=data_iter,
        mesh=mesh,
        checkpointer=checkpointer,
        writer=writer,
        total_steps=total_steps,
        images_per_step=2 * config.batch_size,
        schedule=schedule,
    )
    checkpointer.close()
    if preempted:
        writer.close()
        return {}

    results.update(
        step=int(state.step),
        train_images=len(source),
        wall_time_s=time.time() - t_start,  # This invocation only (a resumed run counts its part).
        environment=run_environment(),
    )
    if config.eval.linear_probe and probe_train is not None:
        results["linear_probe"] = linear_probe(
            config, graphdef, state, probe_train, probe_test, mesh
        )
        writer.write(
            int(state.step), {f"eval/probe_{k}": v for k, v in results["linear_probe"].items()}
        )
        log(f"linear probe of the SimCLR encoder: {_fmt(results['linear_probe'])}")
    writer.close()
    write_json(os.path.join(workdir, "results.json"), results)
    return results


def _fmt(metrics: dict[str, float]) -> str:
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "num_train", "num_test")
    return ", ".join(
        f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
        for k in keys
        if k in metrics
    )
