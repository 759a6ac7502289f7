"""The run lifecycle, written once: data, state, loop, model selection, test, results.json.

A trainer (`s4mi_jax/trainers/<name>.py`, registered in `trainers/__init__.py`) supplies only what
differs, through one interface: a `Trainer` reads its data (`RunData`) and builds a `Task` — its model,
its pure step `(state, batch, rng) -> (state, metrics)`, its training iterator and its `Evaluator`
(validation, which networks are selected on it, the test). Everything else is here, for every trainer:
the workdir and its config/data checks, resume from the latest intact checkpoint (or init, then the
pretrained starts), the metric writer and `train_loop`, the best checkpoint of each selected network,
provenance and results.json. `build` is also what `s4mi_jax.aot`, `predict` and `benchmark` use, so
they compile and restore exactly what a run trains.

The best checkpoints are a second Orbax manager per selected network (`max_to_keep=1`, saved only on
improvement) rather than Orbax's `best_fn` on the run's manager: `best_fn` decides which checkpoints to
keep, and exact resume needs the latest one kept whatever its score.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from s4mi_jax import provenance
from s4mi_jax.core import checkpoint, optim, pretrained, sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.core.loop import log, train_loop
from s4mi_jax.core.metric_writer import MetricWriter, prepare_workdir, write_json
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import device_augment
from s4mi_jax.errors import ConfigError, S4MIError

Step = Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]
LOWER_IS_BETTER = ("hd95", "asd", "assd")  # Selection metrics where smaller wins.


@dataclasses.dataclass(frozen=True)
class RunData:
    """What a trainer read (validated) before anything is written. Abstract (AOT, predict) runs have
    `content=None`: shapes and classes then come from the config."""

    channels: int
    num_examples: int  # Training examples per epoch: the schedule's length.
    manifest: Any = None  # The split manifest (saved as manifest.json), or None.
    sources: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # Fingerprinted.
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # Kept with each checkpoint.
    content: Any = None  # The trainer's own: splits, arrays, class counts.


@dataclasses.dataclass(frozen=True)
class StepArgs:
    """What `Task.make_step` gets once the optimizer and state exist."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    total_steps: int
    steps_per_epoch: int


@dataclasses.dataclass(frozen=True)
class Start:
    """A pretrained start loaded at step 0 into the state at `prefix` (core/pretrained.py)."""

    prefix: str  # "encoder", or "/"-separated for nested models ("cnn/encoder").
    init_from: str  # A workdir, checkpoint, weights file, or "random".
    init_encoder: str | None = None
    key: str = "config.init_from"  # The config key, for error messages.


class Validation(NamedTuple):
    metrics: dict[str, float]  # Written with the step's metrics ("val/dice", ...).
    select: dict[str, float]  # Selected network -> its `config.select_metric` value.


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """How a task validates and tests. `networks`: the networks selected on validation, each with its
    own best checkpoint ("" is the method's own; `best/`, others `best_<name>/`)."""

    test: Callable[[TrainState, BestCheckpoints], dict]  # -> results.json entries
    validate: Callable[[TrainState, int], Validation] | None = None
    networks: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Context:
    """What an evaluator may use: built once per run."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    built: Built
    data: RunData
    writer: MetricWriter


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything a method adds to the shared run."""

    name: str
    build_model: Callable[[nnx.Rngs], nnx.Module]
    make_step: Callable[[StepArgs], Step]  # The pure step, not yet jitted.
    batch_shapes: Mapping[str, tuple[tuple[int, ...], Any]]  # Global batch: key -> (shape, dtype).
    summary: str = ""  # The run's first log line (data counts); parameters and steps are added.
    make_iterator: Callable[[], Iterator[dict]] | None = None  # This process's training batches.
    evaluator: Callable[[Context], Evaluator] | None = None
    trainable: nnx.filterlib.Filter = nnx.Param
    wrap_tx: Callable[[optax.GradientTransformation], optax.GradientTransformation] = lambda tx: tx
    starts: tuple[Start, ...] = ()
    examples_per_step: int = 0  # Examples a step reads (labeled + unlabeled): throughput.
    views_per_example: int = 1  # Images through the network per example (SimCLR: 2).
    networks: Mapping[str, Callable] = dataclasses.field(default_factory=dict)  # For predict.
    # config.aug.on_device: (rng, uint8 source images) -> the views the step reads, made in the step.
    device_views: device_augment.ViewFn | None = None
    wrap_step: Callable[[Callable, int], Callable] | None = (
        None  # (jitted step, start step) -> step
    )
    collapse_advice: str = ""  # What to change when the collapse alarm fires, in one sentence.


@dataclasses.dataclass(frozen=True)
class Trainer:
    """A registry entry (`trainers.ALL_TRAINERS`): read the data, then build the task for it."""

    load_data: Callable[[ml_collections.ConfigDict], RunData]
    abstract_data: Callable[[ml_collections.ConfigDict], RunData]  # No file read (AOT, predict).
    task: Callable[[ml_collections.ConfigDict, RunData, Any], Task]  # (config, data, mesh)

    def train_and_evaluate(self, config: ml_collections.ConfigDict, workdir: str) -> dict:
        """`run` of this trainer (what `python -m s4mi_jax.main` does)."""
        return run(config, workdir, self)


@dataclasses.dataclass(frozen=True)
class Built:
    """The optimizer, state and step of a task: shared by a run, AOT, predict and the benchmark."""

    graphdef: nnx.GraphDef
    init: Callable[[], TrainState]  # Builds the initial state in its shardings.
    abstract_state: Any  # ShapeDtypeStructs with shardings: the restore target.
    step: Step  # Pure; makes the views itself with config.aug.on_device.
    tx: optax.GradientTransformation
    schedule: Callable
    total_steps: int
    steps_per_epoch: int
    batch: dict[str, jax.ShapeDtypeStruct]  # The step's abstract global batch, sharded.


def build(config: ml_collections.ConfigDict, mesh, task: Task, data: RunData) -> Built:
    """Optimizer for `data.num_examples`, the sharded state initializer and the step of `task`."""
    tx, schedule, total_steps, steps_per_epoch = optim.for_run(config, data.num_examples)
    tx = task.wrap_tx(tx)
    graphdef, init, abstract_state = train_state.initializer(
        task.build_model,
        tx,
        config.seed,
        mesh,
        trainable=task.trainable,
        rules=sharding.rules_from_config(config),
    )
    step = task.make_step(StepArgs(graphdef, tx, total_steps, steps_per_epoch))
    shapes = dict(task.batch_shapes)
    if config.get("aug") is not None and config.aug.get("on_device", False):
        if task.device_views is None:
            raise ConfigError(f"config.aug.on_device=True: {task.name} has no on-device views.")
        step = device_augment.with_device_views(step, task.device_views)
        source = device_augment.source_batch_shapes(config.aug, data.channels)
        image = jax.ShapeDtypeStruct((config.batch_size, *source["image"]), jnp.uint8)
        made = jax.eval_shape(task.device_views, jax.random.PRNGKey(0), image)
        shapes = {k: v for k, v in shapes.items() if k not in made}
        shapes.update({k: ((config.batch_size, *s), jnp.uint8) for k, s in source.items()})
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
        for k, (shape, dtype) in shapes.items()
    }
    return Built(
        graphdef, init, abstract_state, step, tx, schedule, total_steps, steps_per_epoch, batch
    )


def aot_setup(config: ml_collections.ConfigDict, mesh, trainer: Trainer):
    """(step, abstract state, abstract global batch) for `s4mi_jax.aot`: no data read."""
    data = trainer.abstract_data(config)
    built = build(config, mesh, trainer.task(config, data, mesh), data)
    return built.step, built.abstract_state, built.batch


class BestCheckpoints:
    """The best checkpoint of each selected network and `best.json` ({network: {value, step}})."""

    def __init__(self, workdir: str, networks, meta, abstract_state, select_metric, resumed: bool):
        self.ckpts = {
            n: Checkpointer(os.path.join(workdir, "best" + (f"_{n}" if n else "")), max_to_keep=1)
            for n in networks
        }
        self.path = os.path.join(workdir, "best.json")
        self.meta, self.abstract_state, self.metric = dict(meta), abstract_state, select_metric
        self.sign = -1.0 if select_metric in LOWER_IS_BETTER else 1.0
        self.record = {n: {"value": None, "step": None} for n in networks}
        if resumed and networks and os.path.exists(self.path):
            self.record.update(read_json(self.path))

    def track(self, validate: Callable[[TrainState, int], Validation]) -> Callable:
        """`validate` as the loop's `eval_fn`, saving each network's state when it improves."""

        def eval_fn(state: TrainState, step: int) -> dict[str, float]:
            result = validate(state, step)
            for name, value in result.select.items():
                best = self.record[name]["value"]
                if np.isfinite(value) and (best is None or self.sign * (value - best) > 0):
                    self.record[name] = {"value": float(value), "step": step}
                    self.ckpts[name].save(step, state, None, self.meta)
                    write_json(self.path, self.record)
                r = self.record[name]
                best_text = (
                    "none" if r["value"] is None else f"{r['value']:.4f} at step {r['step']}"
                )
                log(f"val{'_' + name if name else ''} {self.metric} {value:.4f} (best {best_text})")
            return result.metrics

        return eval_fn

    def step(self, name: str = "") -> int | None:
        return self.record[name]["step"]

    def value(self, name: str = "") -> float | None:
        return self.record[name]["value"]

    def restore(self, name: str, state: TrainState) -> TrainState:
        """The selected weights of `name`, or `state` if validation never saved any. A damaged best
        checkpoint is handled as the run's own: moved aside (never deleted), named in a warning, and
        `state` (the final weights) tested instead; `best_step` then reads None in results.json."""
        ckpt = self.ckpts[name]
        step = ckpt.latest_step()
        if step is None:
            return state
        try:
            return ckpt.restore(self.abstract_state, None, step)
        except Exception as e:  # Orbax/TensorStore raise many types for a damaged checkpoint.
            moved = ckpt.move_aside(step, prefix=os.path.basename(ckpt.directory) + "_")
            log(
                f"WARNING: the best checkpoint {step} in {ckpt.directory} is damaged "
                f"({checkpoint.short_error(e)}); moved it to {moved} and tested the final weights "
                f"(step {int(state.step)}) instead."
            )
            self.record[name] = {"value": None, "step": None, "damaged": moved}
            return state

    def wait(self) -> None:
        for c in self.ckpts.values():
            c.wait()

    def close(self) -> None:
        for c in self.ckpts.values():
            c.close()


def read_json(path: str) -> Any:
    """The JSON at `path`, or None if there is none."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _restore_or_init(workdir, checkpointer, built: Built, data_iter, starts) -> tuple[Any, Any]:
    """(state, resumed step or None): the latest intact checkpoint, else init + pretrained starts."""
    resume_step = checkpointer.latest_step()
    if resume_step is not None:
        state = checkpointer.restore(built.abstract_state, data_iter)
        resume_step = checkpointer.latest_step()  # A damaged latest one was moved aside.
        log(f"resumed from step {resume_step} in {checkpointer.directory}")
        return state, resume_step
    state, records = built.init(), {}
    for s in starts:
        state, name, step = pretrained.load_encoder(state, s.init_from, s.init_encoder, s.prefix)
        records[s.prefix] = {"init_from": s.init_from, "encoder": name, "step": step}
        log(f"{s.prefix} initialised from {s.init_from}: {name} (step {step})")
    if records:  # One `config.init_from` start is recorded flat, several by where they went.
        one = len(starts) == 1 and starts[0].key == "config.init_from"
        write_json(os.path.join(workdir, INIT_FROM), records[starts[0].prefix] if one else records)
    return state, None


INIT_FROM = "init_from.json"


def config_start(config: ml_collections.ConfigDict, prefix: str = "encoder") -> tuple[Start, ...]:
    """The start `config.init_from` (+ `config.init_encoder`) asks for, if any."""
    if not config.get("init_from"):
        return ()
    return (Start(prefix, config.init_from, config.get("init_encoder")),)


def _entries(workdir: str) -> set[str]:
    """The names in `workdir` (none if it does not exist yet)."""
    try:
        return set(os.listdir(workdir))
    except OSError:
        return set()


def _remove_what_a_failed_start_wrote(workdir: str, before: set[str]) -> None:
    """A start that failed before its first step leaves nothing that would block its fix (a
    config.json of the failed config, an empty checkpoints/): remove what it added to the workdir.
    Entries that were there before it (an earlier run's, anything of the user's) are kept."""
    if jax.process_index() != 0:
        return
    import shutil

    for name in sorted(_entries(workdir) - before):
        if name.startswith(".lock"):
            continue  # The lock's own file: its release removes it.
        path = os.path.join(workdir, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError:
            pass  # Best effort: the error being raised says what went wrong.


def run(config: ml_collections.ConfigDict, workdir: str, trainer: Trainer) -> dict:
    """Trains `trainer`'s task in `workdir` (resuming it if it holds a checkpoint), then validates,
    tests and writes results.json; returns its dict, or {} if the run stopped early (SIGTERM,
    `halt_at_step`: rerunning resumes; Ctrl-C raises `interrupt.Interrupted` after saving).

    Everything that can be checked before step 1 is checked before the workdir is written (the data,
    the mesh and batch, the pretrained starts against the model's shapes); a start that still fails
    before its first checkpoint removes what it wrote (`_remove_what_a_failed_start_wrote`)."""
    t_start = time.time()
    data = trainer.load_data(config)  # Validates the data before anything is written.
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_size(config.batch_size, mesh)
    task = trainer.task(config, data, mesh)
    for s in task.starts:
        pretrained.resolve(s.init_from, s.key)  # Fails now, before anything is written.
    built = build(config, mesh, task, data)
    fresh = not os.path.exists(os.path.join(workdir, "config.json"))
    if fresh:  # Shapes and names of each start against the model, still before anything is written.
        for s in task.starts:
            pretrained.check_encoder(
                built.abstract_state,
                s.init_from,
                s.init_encoder,
                s.prefix,
                model=config.get("model"),
            )
    step_fn = train_state.jit_step(built.step, train_state.shardings_of(built.abstract_state), mesh)
    data_iter = task.make_iterator()

    before, progress = _entries(workdir), {"first_step": False}
    try:
        prepare_workdir(workdir, config, data=dict(data.sources))
        if data.manifest is not None:
            data.manifest.save(os.path.join(workdir, "manifest.json"))
        checkpointer = Checkpointer.for_run(workdir, config)
        state, resume_step = _restore_or_init(workdir, checkpointer, built, data_iter, task.starts)
        return _train_and_test(
            config, workdir, task, data, mesh, built, step_fn, data_iter, checkpointer, state,
            resume_step, t_start, progress,
        )  # fmt: skip
    except BaseException as e:
        if fresh and not progress["first_step"]:
            _remove_what_a_failed_start_wrote(workdir, before)
        if isinstance(e, OSError) and e.errno in _CANNOT_WRITE:
            raise S4MIError(
                _cannot_write(workdir, e, progress["first_step"] or not fresh)
            ) from None
        raise


_CANNOT_WRITE = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
)  # A full disk, a quota, a read-only mount.


def _cannot_write(workdir: str, error: OSError, started: bool) -> str:
    """One line for a full disk (quota, read-only mount) under the workdir: what is left to resume."""
    steps = checkpoint.Checkpointer.saved_steps(workdir) if started else []
    if steps:
        then = f"the latest checkpoint (step {steps[-1]}) is intact; free space and rerun to resume"
    elif started:
        then = "no checkpoint was saved yet; free space and rerun (it starts again)"
    else:
        then = "nothing of this start was kept; free space and rerun"
    where = f" ({error.filename})" if error.filename else ""
    return f"cannot write to workdir {workdir}: {error.strerror}{where}; {then}."


def _train_and_test(
    config, workdir, task, data, mesh, built, step_fn, data_iter, checkpointer, state, resume_step,
    t_start, progress,
) -> dict:  # fmt: skip
    """The loop, model selection and the test: `run` once the state exists."""
    writer = MetricWriter(workdir, resume_step=resume_step)
    evaluator = task.evaluator(Context(config, workdir, mesh, built, data, writer))
    best = BestCheckpoints(
        workdir,
        evaluator.networks,
        data.meta,
        built.abstract_state,
        config.get("select_metric"),
        resumed=resume_step is not None,
    )
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(
        f"{task.summary}; {n_params / 1e6:.2f}M trained params; global batch {config.batch_size} "
        f"on {mesh.devices.size} device(s); {built.total_steps} steps "
        f"({built.steps_per_epoch} per epoch)"
    )
    loop_step = step_fn
    if task.wrap_step is not None:
        loop_step = task.wrap_step(built, step_fn, int(state.step))
    state, stopped = train_loop(
        config,
        train_step=loop_step,
        state=state,
        data_iter=data_iter,
        mesh=mesh,
        checkpointer=checkpointer,
        writer=writer,
        total_steps=built.total_steps,
        images_per_step=task.examples_per_step * task.views_per_example,
        schedule=built.schedule,
        eval_fn=None if evaluator.validate is None else best.track(evaluator.validate),
        meta=dict(data.meta) or None,
        collapse_advice=task.collapse_advice,
        on_first_step=lambda: progress.update(first_step=True),
    )
    checkpointer.close()
    best.wait()
    if stopped:
        writer.close()
        best.close()
        return {}

    results = evaluator.test(state, best)
    best.close()
    results["init_from"] = read_json(os.path.join(workdir, INIT_FROM))
    prov = provenance.record(
        config,
        t_start=t_start,
        source=data.sources.get("dataset"),
        eval_source=data.sources.get("eval_dataset"),
        manifest_hash=None if data.manifest is None else data.manifest.hash,
        resumed_from_step=resume_step,
    )
    results.update(
        wall_time_s=prov["wall_time_s"],  # This invocation only (a resumed run counts its part).
        environment=prov["environment"],
        provenance=prov,
    )
    writer.close()
    write_json(os.path.join(workdir, "results.json"), results)
    return results
