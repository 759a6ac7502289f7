"""What SimCLR, DINO and CASS share: the pretraining data, its iterator and the closing linear probe.

Each method's file builds its `run.Task` with `task(...)` below, supplying its model, step, views and
which encoders to probe; the lifecycle (resume, checkpoints, logging, results.json) is core/run.py's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import grain
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from s4mi_jax.core import run
from s4mi_jax.core.loop import log
from s4mi_jax.core.metric_writer import write_json
from s4mi_jax.data import device_augment, manifests, pipeline
from s4mi_jax.data.sources import SubsetSource, eval_overlap_warning
from s4mi_jax.errors import ConfigError, DataError
from s4mi_jax.evaluators import features
from s4mi_jax.evaluators.linear_probe import evaluate_linear_probe

PROBE_AT_INIT = "probe_at_init.json"


class Sources(NamedTuple):
    """The pretraining source, and the linear probe's train and test sources (None if unlabeled)."""

    pretrain: Any
    probe_train: Any
    probe_test: Any
    manifest: Any


def load_sources(config: ml_collections.ConfigDict) -> Sources:
    """The split is the classification manifest's at 100% labels (same `data.split_seed`,
    `val_fraction`, `test_fraction`), so pretraining never sees a validation or test patient of the
    label-fraction experiments that start from it; the probe trains on the training pool and tests on
    the test split (or on `data.eval_root`)."""
    source, manifest, notes = manifests.open_and_split(config.data, fraction=1.0, seed=config.seed)
    for note in notes:
        log(note)
    if manifest is None:  # Unlabeled data: pretraining only, nothing to probe.
        return Sources(source, None, None, None)
    pretrain = SubsetSource(source, np.union1d(manifest.train_pool, manifest.unlabeled))
    probe_test = manifests.test_source(config.data, source, manifest)
    return Sources(pretrain, SubsetSource(source, manifest.train), probe_test, manifest)


def load_data(config: ml_collections.ConfigDict) -> run.RunData:
    s = load_sources(config)
    if len(s.pretrain) < config.batch_size:
        raise DataError(
            f"{len(s.pretrain)} training images in {s.pretrain.root} is fewer than "
            f"config.batch_size={config.batch_size}."
        )
    if config.eval.linear_probe and s.probe_test is not None and len(s.probe_test) == 0:
        raise ConfigError(
            f"config.data.test_fraction={config.data.test_fraction} leaves the closing linear probe "
            f"(config.eval.linear_probe) no test images in {s.pretrain.root}: set data.test_fraction "
            "> 0 (e.g. 0.2), give data.eval_root, or pass --config.eval.linear_probe=False."
        )
    eval_source = s.probe_test if config.data.eval_root else None
    if eval_source is not None:  # A probe tested on pretraining images measures memorisation.
        note = eval_overlap_warning(eval_source, s.pretrain, config.data.eval_root)
        if note:
            log(note)
    return run.RunData(
        channels=s.pretrain.channels,
        num_examples=len(s.pretrain),
        manifest=s.manifest,
        sources={"dataset": s.pretrain, "eval_dataset": eval_source},
        content=s,
    )


def abstract_data(config: ml_collections.ConfigDict) -> run.RunData:
    """Channels from `config.data.channels` (default 1, grayscale X-rays); the schedule's length does
    not change the compiled program."""
    return run.RunData(channels=config.data.channels or 1, num_examples=config.batch_size)


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


def probe_all(ctx: run.Context, state, probes: dict[str, Callable], prefix: str, name: str):
    """`linear_probe` of each encoder in `probes` (results key suffix -> getter)."""
    s, out = ctx.data.content, {}
    for suffix, encoder in probes.items():
        key = prefix + (f"_{suffix}" if suffix else "")
        out[key] = linear_probe(
            ctx.config, ctx.built.graphdef, state, s.probe_train, s.probe_test, ctx.mesh, encoder
        )
        log(f"{key} ({name}{' ' + suffix if suffix else ''}): {_fmt(out[key])}")
    return out


def probe_evaluator(probes: dict[str, Callable], name: str) -> Callable[[run.Context], Any]:
    """The closing linear probe of each encoder, and of the same encoders at init (the baseline
    pretraining must beat): probed after training, not before step 1, so it never delays the first
    step and reuses the final probe's compiled programs; `init()` is a function of config.seed, so it
    is the same encoder. Written once to probe_at_init.json, reread on resume."""

    def evaluator(ctx: run.Context) -> run.Evaluator:
        def test(state, best) -> dict:
            init_path = os.path.join(ctx.workdir, PROBE_AT_INIT)
            results = run.read_json(init_path) or {}
            if ctx.config.eval.linear_probe and ctx.data.content.probe_train is not None:
                probed = probe_all(ctx, state, probes, "linear_probe", name)
                results.update(probed)
                for key, metrics in probed.items():
                    tag = key.replace("linear_probe", "probe")
                    ctx.writer.write(
                        int(state.step), {f"eval/{tag}_{k}": v for k, v in metrics.items()}
                    )
                if ctx.config.eval.probe_at_init and not os.path.exists(init_path):
                    at_init = probe_all(ctx, ctx.built.init(), probes, "probe_at_init", name)
                    write_json(init_path, at_init)
                    results.update(at_init)
            return {**results, "step": int(state.step), "train_images": ctx.data.num_examples}

        return run.Evaluator(test=test)

    return evaluator


def task(
    config: ml_collections.ConfigDict,
    data: run.RunData,
    *,
    name: str,
    model_name: str,
    build_model: Callable[[nnx.Rngs, int], nnx.Module],
    make_step: Callable[[run.StepArgs], run.Step],
    transform: grain.transforms.RandomMap,
    views: dict[str, tuple[int, ...]],
    views_per_image: int,
    probes: dict[str, Callable[[nnx.Module], nnx.Module]],
    device_views: device_augment.ViewFn | None = None,
    **fields,
) -> run.Task:
    """A pretraining `run.Task`: `transform` makes the `views` (key -> per-example shape) on the host,
    `device_views` in the step with `config.aug.on_device`; `probes` are the encoders probed at the
    end (results key suffix -> getter; "" -> "linear_probe"). `fields`: other `run.Task` fields."""
    b = config.batch_size

    def make_iterator():
        return pipeline.run_iterator(
            config, data.content.pretrain, device_augment.host_transform(config.aug, transform)
        )

    return run.Task(
        name=name,
        build_model=lambda rngs: build_model(rngs, data.channels),
        make_step=make_step,
        batch_shapes={k: ((b, *shape), jnp.float32) for k, shape in views.items()},
        summary=f"{name}: {data.num_examples} images, {model_name}",
        make_iterator=None if data.content is None else make_iterator,
        evaluator=probe_evaluator(probes, name),
        examples_per_step=b,
        views_per_example=views_per_image,
        networks=probes,
        device_views=device_views,
        **fields,
    )


def _fmt(metrics: dict[str, float]) -> str:
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "num_train", "num_test")
    return ", ".join(
        f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
        for k in keys
        if k in metrics
    )
