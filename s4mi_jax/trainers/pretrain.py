"""The self-supervised pretraining run shared by SimCLR, DINO and CASS: data, state, loop, probe.

A method supplies only what differs (`Method`: its model, train step, views and which encoders to probe);
data splitting, resume, checkpointing, logging and the closing linear probe are written once here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import grain
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
from s4mi_jax.data import device_augment, manifests, pipeline
from s4mi_jax.data.sources import SubsetSource
from s4mi_jax.errors import ConfigError, DataError
from s4mi_jax.evaluators import features
from s4mi_jax.evaluators.linear_probe import evaluate_linear_probe

# (graphdef, tx, total_steps, steps_per_epoch) -> the pure step (state, batch, rng) -> (state, metrics).
MakeStep = Callable[[nnx.GraphDef, optax.GradientTransformation, int, int], Callable]


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    model_name: str  # For the log line.
    build_model: Callable[[nnx.Rngs, int], nnx.Module]  # (rngs, in_channels) -> model
    make_step: MakeStep
    transform: grain.transforms.RandomMap  # record -> the batch fields the step reads
    views_per_image: int  # images through the network per example (throughput accounting)
    # Encoders to linear-probe at the end: results key suffix -> getter ("" -> "linear_probe").
    probes: dict[str, Callable[[nnx.Module], nnx.Module]]
    # The step's batch fields and their per-example shapes, given the channel count (AOT compile).
    batch_shapes: Callable[[int], dict[str, tuple[int, ...]]] = lambda channels: {}
    trainable: nnx.filterlib.Filter = nnx.Param
    wrap_tx: Callable[[optax.GradientTransformation], optax.GradientTransformation] = lambda tx: tx
    # config.aug.on_device: (rng, uint8 source images) -> the views `make_step` reads, made in the step.
    device_views: device_augment.ViewFn | None = None
    # What to change when the collapse alarm fires (core/collapse.py), in one sentence.
    collapse_advice: str = ""
    # Pretrained starts: encoder path in the state ("cnn/encoder") -> (config key, init_from,
    # init_encoder), loaded at step 0 (core/pretrained.py); e.g. CASS's two networks.
    init_from: dict[str, tuple[str, str, str | None]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What a run, the AOT check and the benchmark build alike from (config, method, mesh)."""

    graphdef: nnx.GraphDef
    init: Callable  # () -> the initial TrainState, built in its shardings.
    abstract_state: object
    step: (
        Callable  # The pure step on the batches `transform` yields (views made in it if on-device).
    )
    transform: grain.transforms.RandomMap
    batch_specs: dict[str, tuple[tuple[int, ...], jnp.dtype]]  # Per-example shape and dtype.
    schedule: Callable
    total_steps: int
    steps_per_epoch: int


def prepare(
    config: ml_collections.ConfigDict, mesh, method: Method, channels: int, num_examples: int
) -> Prepared:
    """Optimizer, state initializer and step for `method`; with `config.aug.on_device`, the host only
    resizes (`device_augment.SourceImage`) and the step makes the views itself."""
    tx, schedule, total_steps, steps_per_epoch, graphdef, init, abstract_state = (
        train_state.for_method(config, method, channels, mesh, num_examples)
    )
    step = method.make_step(graphdef, tx, total_steps, steps_per_epoch)
    specs = {k: (shape, jnp.float32) for k, shape in method.batch_shapes(channels).items()}
    if config.aug.get("on_device", False):
        if method.device_views is None:
            raise ConfigError(f"config.aug.on_device=True: {method.name} has no on-device views.")
        step = device_augment.with_device_views(step, method.device_views)
        specs = {
            k: (shape, jnp.uint8)
            for k, shape in device_augment.source_batch_shapes(config.aug, channels).items()
        }
    transform = device_augment.host_transform(config.aug, method.transform)
    return Prepared(
        graphdef,
        init,
        abstract_state,
        step,
        transform,
        specs,
        schedule,
        total_steps,
        steps_per_epoch,
    )


def load_data(config: ml_collections.ConfigDict):
    """(pretraining source, probe train source, probe test source), or probe sources None."""
    return load_data_and_manifest(config)[:3]


def load_data_and_manifest(config: ml_collections.ConfigDict):
    """`load_data`'s sources, then the split manifest (None for unlabeled data).

    The split is the classification manifest's at 100% labels (same `data.split_seed`, `val_fraction`,
    `test_fraction`), so pretraining never sees a validation or test patient of the label-fraction
    experiments that start from it; the probe trains on the training pool and tests on the test split.
    """
    source, manifest, notes = manifests.open_and_split(config.data, fraction=1.0, seed=config.seed)
    for note in notes:
        log(note)
    if manifest is None:  # Unlabeled data: pretraining only, nothing to probe.
        return source, None, None, None
    pretrain = SubsetSource(source, np.union1d(manifest.train_pool, manifest.unlabeled))
    probe_test = manifests.test_source(config.data, source, manifest)
    return pretrain, SubsetSource(source, manifest.train), probe_test, manifest


def linear_probe(
    config, graphdef, state, probe_train, probe_test, mesh, encoder=lambda m: m.encoder
) -> dict[str, float]:
    """L-BFGS logistic regression on frozen `encoder` features (BatchNorm running statistics)."""
    embed = features.make_embed_fn(graphdef, encoder)
    kw = dict(batch_size=config.eval.batch_size, mesh=mesh)
    train_x, train_y = features.extract(
        embed, state.params, state.model_state, probe_train, config.aug, **kw
    )
    test_x, test_y = features.extract(
        embed, state.params, state.model_state, probe_test, config.aug, **kw
    )
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return evaluate_linear_probe(train_x, train_y, test_x, test_y, num_classes, l2=config.eval.l2)


def _probe_all(config, method, graphdef, state, probe_train, probe_test, mesh, prefix):
    out = {}
    for suffix, encoder in method.probes.items():
        key = prefix + (f"_{suffix}" if suffix else "")
        out[key] = linear_probe(config, graphdef, state, probe_train, probe_test, mesh, encoder)
        log(f"{key} ({method.name}{' ' + suffix if suffix else ''}): {_fmt(out[key])}")
    return out


def train_iterator(config: ml_collections.ConfigDict, source, transform, local_batch: int):
    """This process's infinite, checkpointable iterator of training batches."""
    return pipeline.train_iterator(
        source,
        transform,
        batch_size=local_batch,
        seed=config.seed,
        num_workers=config.data.num_workers,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def run(config: ml_collections.ConfigDict, workdir: str, method: Method) -> dict:
    """Pretrain with `method`, resuming `workdir` if it holds a checkpoint; returns results.json's dict."""
    t_start = time.time()
    # Validates the data before anything is written.
    source, probe_train, probe_test, manifest = load_data_and_manifest(config)
    mesh = sharding.make_mesh(config.mesh)
    local_batch = sharding.check_batch_size(config.batch_size, mesh)
    if len(source) < config.batch_size:
        raise DataError(
            f"{len(source)} training images in {source.root} is fewer than "
            f"config.batch_size={config.batch_size}."
        )
    for key, init_from, _ in method.init_from.values():
        pretrained.resolve(init_from, key)  # Fails now, before anything is written.
    p = prepare(config, mesh, method, source.channels, len(source))
    graphdef, init, abstract_state = p.graphdef, p.init, p.abstract_state
    schedule, total_steps, steps_per_epoch = p.schedule, p.total_steps, p.steps_per_epoch
    step_fn = train_state.jit_step(p.step, train_state.shardings_of(abstract_state), mesh)
    data_iter = train_iterator(config, source, p.transform, local_batch)

    eval_src = probe_test if config.data.eval_root else None
    prepare_workdir(workdir, config, data={"dataset": source, "eval_dataset": eval_src})
    checkpointer = Checkpointer.for_run(workdir, config)
    resume_step = checkpointer.latest_step()
    results = {}
    init_path = os.path.join(workdir, "probe_at_init.json")
    probing = config.eval.linear_probe and probe_train is not None
    if resume_step is not None:
        state = checkpointer.restore(abstract_state, data_iter)
        resume_step = checkpointer.latest_step()  # A damaged latest one was moved aside.
        log(f"resumed from step {resume_step} in {checkpointer.directory}")
        if os.path.exists(init_path):
            with open(init_path) as f:
                results.update(json.load(f))
    else:
        state = init()
        starts = {}
        for prefix, (_, init_from, init_encoder) in method.init_from.items():
            state, name, step = pretrained.load_encoder(state, init_from, init_encoder, prefix)
            starts[prefix] = {"init_from": init_from, "encoder": name, "step": step}
            log(f"{prefix} initialised from {init_from}: {name} (step {step})")
        if starts:
            write_json(os.path.join(workdir, "init_from.json"), starts)

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(
        f"{method.name}: {len(source)} images, {method.model_name} ({n_params / 1e6:.2f}M trained "
        f"params), global batch {config.batch_size} on {mesh.devices.size} device(s), "
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
        images_per_step=method.views_per_image * config.batch_size,
        schedule=schedule,
        collapse_advice=method.collapse_advice,
    )
    checkpointer.close()
    if preempted:
        writer.close()
        return {}

    if probing:
        probes = _probe_all(
            config, method, graphdef, state, probe_train, probe_test, mesh, "linear_probe"
        )
        results.update(probes)
        for key, metrics in probes.items():
            name = key.replace("linear_probe", "probe")
            writer.write(int(state.step), {f"eval/{name}_{k}": v for k, v in metrics.items()})
        if config.eval.probe_at_init and not os.path.exists(init_path):
            # The random-init encoder, the baseline pretraining must beat: probed after training,
            # not before step 1, so it never delays the first step and reuses the final probe's
            # compiled programs; `init()` is a function of config.seed, so it is the same encoder.
            at_init = _probe_all(
                config, method, graphdef, init(), probe_train, probe_test, mesh, "probe_at_init"
            )
            write_json(init_path, at_init)
            results.update(at_init)
    prov = provenance.record(
        config,
        t_start=t_start,
        source=source,
        eval_source=probe_test if config.data.eval_root else None,
        manifest_hash=None if manifest is None else manifest.hash,
        resumed_from_step=resume_step,
    )
    results.update(
        step=int(state.step),
        train_images=len(source),
        wall_time_s=prov["wall_time_s"],  # This invocation only (a resumed run counts its part).
        environment=prov["environment"],
        provenance=prov,
    )
    writer.close()
    write_json(os.path.join(workdir, "results.json"), results)
    return results


def aot_setup(config: ml_collections.ConfigDict, mesh, method: Method):
    """(step, abstract state, abstract global batch) for `s4mi_jax.aot`: no data read, nothing allocated.

    Channels come from `config.data.channels` (default 1, grayscale X-rays); the schedule's length does
    not change the compiled program.
    """
    p = prepare(config, mesh, method, config.data.channels or 1, config.batch_size)
    batch = {
        k: jax.ShapeDtypeStruct(
            (config.batch_size, *shape), dtype, sharding=sharding.batch_sharding(mesh)
        )
        for k, (shape, dtype) in p.batch_specs.items()
    }
    return p.step, p.abstract_state, batch


def _fmt(metrics: dict[str, float]) -> str:
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "num_train", "num_test")
    return ", ".join(
        f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
        for k in keys
        if k in metrics
    )
