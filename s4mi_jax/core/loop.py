"""The generic training loop every trainer shares: resume, step, log, checkpoint, stop on SIGTERM/Ctrl-C.

Everything method-specific lives in the jitted `train_step(state, batch, rng) -> (state, metrics)`; the
loop only moves batches to devices, keeps time and decides when to log and save (big_vision's `itstime`).

Preemption: in a single process, a Python SIGTERM/SIGINT handler (`interrupt.StopFlag`) raises a flag
checked between steps; a Ctrl-C then raises `interrupt.Interrupted` once the step's checkpoint is saved. Under
`jax.distributed`, JAX's preemption service catches SIGTERM on any process instead and all processes
agree on the step to stop at (`reached_preemption_sync_point`), so they save the same checkpoint together
(a save is collective: one process saving alone would wait for the others forever).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from s4mi_jax import interrupt
from s4mi_jax.core import collapse, sharding
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.core.metric_writer import MetricWriter
from s4mi_jax.data.prefetch import DevicePrefetch
from s4mi_jax.errors import S4MIError


def log(msg: str) -> None:
    """User-facing progress, printed by process 0 only."""
    if jax.process_index() == 0:
        print(msg, flush=True)


def itstime(step: int, every: int, total: int) -> bool:
    """True every `every` steps and at the last step (`every <= 0` means only at the end)."""
    return step == total or (every > 0 and step % every == 0)


def format_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


class Tally(NamedTuple):
    """What the loop keeps between logs, on the devices: the metrics' running averages (non-finite
    steps masked out) and the skipped-step bookkeeping (`first_bad` is -1 until a step is bad)."""

    averages: clu_metrics.Collection
    skipped: jax.Array
    first_bad: jax.Array
    first_kind: jax.Array


def tally_fn(metric_names) -> tuple[Callable[[], Tally], Callable[..., Tally]]:
    """(empty, update) for a step's metrics. One jitted update per step, not ~100 eager ops: the clu
    update and the bookkeeping dispatched op by op cost 75 ms a step on a CPU, more than a small step."""
    collection = clu_metrics.Collection.create(
        **{k: clu_metrics.Average.from_output(k) for k in metric_names}
    )

    def empty() -> Tally:
        return Tally(collection.empty(), jnp.int32(0), jnp.int32(-1), jnp.float32(0))

    @jax.jit
    def update(tally: Tally, metrics: dict, bad: jax.Array, step: jax.Array) -> Tally:
        single = collection.single_from_model_output(
            mask=(bad == 0).reshape(1), **{k: jnp.reshape(v, (1,)) for k, v in metrics.items()}
        )
        new_bad = (bad > 0) & (tally.first_bad < 0)
        return Tally(
            tally.averages.merge(single),
            tally.skipped + (bad > 0).astype(jnp.int32),
            jnp.where(new_bad, step, tally.first_bad).astype(jnp.int32),
            jnp.where(new_bad, bad, tally.first_kind).astype(jnp.float32),
        )

    return empty, update


def train_loop(
    config: ml_collections.ConfigDict,
    *,
    train_step: Callable[[Any, dict, jax.Array], tuple[Any, dict]],
    state: Any,
    data_iter: Iterator[dict[str, np.ndarray]],
    mesh: Mesh,
    checkpointer: Checkpointer,
    writer: MetricWriter,
    total_steps: int,
    images_per_step: int,
    schedule: Callable[[int], Any] | None = None,
    eval_fn: Callable[[Any, int], dict[str, float]] | None = None,
    meta: dict | None = None,
    collapse_advice: str = "",
    on_first_step: Callable[[], None] | None = None,
) -> tuple[Any, bool]:
    """Runs `train_step` until `total_steps`. Returns (state, stopped_early).

    Cadence from `config`: `log_every`, `ckpt_every`, `eval_every` (if present), `halt_at_step`,
    `nonfinite`, `collapse` (the alarm on the step's `collapse_*` monitors; `collapse_advice` says what
    to change). On SIGTERM, or at `halt_at_step`, it saves a checkpoint and returns early; on Ctrl-C it
    saves and raises `interrupt.Interrupted`; rerunning resumes. `eval_fn(state, step)` runs every `eval_every` steps and at the end (validation, model
    selection); what it returns is written with the metrics. `meta` is stored with every checkpoint.
    `on_first_step()` is called once the first step of this invocation has run (training started).

    Steps with a non-finite loss or gradient (reported by `guard_nonfinite`) changed nothing; at the
    next log the loop either stops naming the first such step (`nonfinite_policy="stop"`) or counts
    them in `train/skipped_steps` and goes on ("skip").
    """
    log_every, ckpt_every = config.log_every, config.ckpt_every
    eval_every, halt_at_step = config.get("eval_every", 0), config.halt_at_step
    nonfinite_policy = config.nonfinite
    if nonfinite_policy not in ("stop", "skip"):
        raise S4MIError(f"config.nonfinite={nonfinite_policy!r}: expected 'stop' or 'skip'.")
    alarm = collapse.Alarm(
        config.get("collapse", "warn"),
        int(config.get("collapse_after", 0.1) * total_steps),
        collapse_advice,
        log,
    )
    step = int(state.step)
    empty = update = tally = None  # Built at the first step, from its metrics' names.
    reported = 0
    t_last, step_last = time.perf_counter(), step
    preempted = False
    # Under jax.distributed, JAX's own SIGTERM handler feeds the preemption sync point: keep it, and
    # pass Ctrl-C on to it as SIGTERM.
    multi = jax.distributed.is_initialized()
    stop_flag = interrupt.StopFlag(forward_to_sigterm=multi, announce=jax.process_index() == 0)
    # The next batches are read and put on the devices in a thread while the step runs; a save
    # rewinds the host iterator to the batches consumed (data/prefetch.py), so resume stays exact.
    put = lambda b: sharding.put_batch(b, mesh)  # noqa: E731
    with stop_flag as stop, DevicePrefetch(data_iter, put) as batches:
        while step < total_steps:
            batch = next(batches)
            state, metrics = train_step(state, batch, jax.random.fold_in(state.rng, step))
            step += 1
            # Steps from `guard_nonfinite` report `nonfinite` (0 = fine, 1 = loss, 2 = gradients).
            bad = metrics.pop("nonfinite", np.float32(0))
            if update is None:  # First step of this invocation: it includes compilation.
                empty, update = tally_fn(metrics)
                tally = empty()
                jax.block_until_ready(metrics)
                log(f"first step (trace + compile + run): {time.perf_counter() - t_last:.1f}s")
                t_last, step_last = time.perf_counter(), step  # Throughput excludes compile.
                if on_first_step is not None:
                    on_first_step()
            tally = update(tally, metrics, bad, step)

            if itstime(step, log_every, total_steps):
                values = {f"train/{k}": float(v) for k, v in tally.averages.compute().items()}
                tally = tally._replace(averages=empty().averages)  # Skipped steps stay counted.
                now = time.perf_counter()
                speed = ""
                if step > step_last:  # Not right after the compile step: nothing timed yet.
                    rate = (step - step_last) * images_per_step / (now - t_last)
                    eta = (total_steps - step) * (now - t_last) / (step - step_last)
                    values["train/images_per_sec"] = rate
                    speed = f" | {rate:.1f} img/s | ETA {format_seconds(eta)}"
                t_last, step_last = now, step
                if schedule is not None:
                    values["train/lr"] = float(schedule(step - 1))
                loss = values.get("train/loss", 0.0)
                n_skipped = int(tally.skipped)
                if n_skipped:
                    what = "loss" if float(tally.first_kind) == 1 else "gradients"
                    message = (
                        f"non-finite {what} at step {int(tally.first_bad)} ({n_skipped} update(s) skipped "
                        f"so far, parameters untouched)"
                    )
                    if nonfinite_policy == "stop":
                        checkpointer.wait()
                        raise S4MIError(
                            f"{message}; stopping. The last checkpoint in {checkpointer.directory} "
                            "is intact: lower config.optim.base_lr, check the data, or set "
                            "config.nonfinite=skip, then rerun to resume."
                        )
                    values["train/skipped_steps"] = n_skipped
                    if n_skipped > reported:
                        log(f"warning: {message}")
                        reported = n_skipped
                writer.write(step, values)
                log(f"step {step}/{total_steps} | loss {loss:.4f}{speed}")
                alarm(step, values, checkpointer)

            if eval_fn is not None and eval_every > 0 and itstime(step, eval_every, total_steps):
                t_eval = time.perf_counter()
                writer.write(step, eval_fn(state, step))
                t_last += time.perf_counter() - t_eval  # Throughput counts training time only.

            synced = multi and multihost_utils.reached_preemption_sync_point(step)
            if stop.raised or synced or step == halt_at_step:
                checkpointer.save(step, state, batches.rewound(), meta)
                checkpointer.wait()  # Say "saved" only once it is (a full disk raises here).
                if stop.interrupted:  # Ctrl-C: the command says so and exits 130.
                    raise interrupt.Interrupted(step)
                why = "SIGTERM" if stop.raised or synced else "config.halt_at_step"
                log(f"{why}: saved checkpoint at step {step}; rerun the same command to resume.")
                preempted = True
                break
            if itstime(step, ckpt_every, total_steps):
                checkpointer.save(step, state, batches.rewound(), meta)
    checkpointer.wait()
    return state, preempted
