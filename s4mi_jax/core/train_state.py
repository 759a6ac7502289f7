"""The train state as a plain pytree, and how a Flax NNX model moves in and out of it.

Why not `nnx.Optimizer` and stateful modules in the loop: a pure `(state, batch, rng) -> (state, metrics)`
step over a pytree is what `jax.jit` shards, donates and Orbax saves directly. The model's static structure
(`graphdef`) stays outside the state; `nnx.merge` rebuilds the module inside the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from s4mi_jax.core import optim, sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken.
    params: nnx.State  # nnx.Param leaves: what the optimizer updates.
    model_state: nnx.State  # everything else the model carries (BatchNorm statistics).
    opt_state: optax.OptState
    rng: jax.Array  # base key (raw uint32[2]); per-step keys are fold_in(rng, step).

    def model(self, graphdef: nnx.GraphDef) -> nnx.Module:
        return nnx.merge(graphdef, self.params, self.model_state)

    def apply_gradients(
        self, tx: optax.GradientTransformation, grads: nnx.State, model_state: nnx.State
    ) -> TrainState:
        """One optimizer step of every trainer: `tx` on `grads`, the forward pass's new model state
        (BatchNorm statistics, EMA teachers), step + 1."""
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            model_state=model_state,
            opt_state=opt_state,
        )


def fresh(tree: Any) -> Any:
    """New Variable objects for `tree`'s leaves, owned by the current trace.

    NNX refuses to mutate a Variable created at another trace level (e.g. BatchNorm statistics from the
    jit level updated inside `jax.grad`); a tree copy inside the inner function sidesteps that.
    """
    return jax.tree.map(lambda x: x, tree)


def split_model(
    model: nnx.Module, trainable: nnx.filterlib.Filter = nnx.Param
) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, params, model_state): `trainable` picks what the optimizer updates (default: every
    `nnx.Param`; DINO passes the student's only, so its EMA teacher rides in `model_state`)."""
    return nnx.split(model, trainable, ...)


def initializer(
    build_model: Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    seed: int,
    mesh: Mesh,
    trainable: nnx.filterlib.Filter = nnx.Param,
    *,
    rules: sharding.Rules | None = None,
) -> tuple[nnx.GraphDef, Callable[[], TrainState], Any]:
    """Returns (graphdef, init, abstract_state) without allocating anything yet.

    `init()` builds the state directly in its sharding (replicated, or split over the mesh's `fsdp` axis
    by `rules`: see `sharding.state_shardings`) as one compiled program (eager NNX init compiles each
    initializer separately: 10+ s for a ResNet on CPU). `abstract_state` holds
    ShapeDtypeStructs with the shardings: the target a checkpoint is restored into, so a resumed run
    never pays for an init it throws away.
    """
    rng = jax.random.PRNGKey(seed)
    graphdefs = []  # The (static) graphdef of the traced build: the model is built once here.

    def init_fn(rng):
        model_rng, state_rng = jax.random.split(rng)
        model = build_model(nnx.Rngs(model_rng))
        graphdef, params, model_state = split_model(model, trainable)
        graphdefs.append(graphdef)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=tx.init(params),
            rng=state_rng,
        )

    shapes = jax.eval_shape(init_fn, rng)
    graphdef = graphdefs[0]
    shardings = sharding.state_shardings(shapes, mesh, rules)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )
    jitted = jax.jit(init_fn, out_shardings=shardings)
    return graphdef, lambda: jitted(rng), abstract_state


def shardings_of(abstract_state: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, abstract_state)


def guard_nonfinite(step_fn: Callable) -> Callable:
    """A step that leaves the state unchanged (but for `step`) when its loss or gradient norm is not
    finite, and reports it as `metrics["nonfinite"]` (0: fine, 1: loss, 2: gradients).

    Costs one select per state leaf inside the compiled step; a NaN never reaches the parameters, so the
    loop can decide later (at the next log) whether to stop or go on without a host sync per step.
    """

    def guarded(state: TrainState, batch: Any, rng: jax.Array):
        new_state, metrics = step_fn(state, batch, rng)
        loss_bad = ~jnp.isfinite(metrics["loss"])
        grad_bad = ~jnp.isfinite(metrics.get("grad_norm", 0.0))
        bad = loss_bad | grad_bad
        kept = jax.tree.map(lambda old, new: jnp.where(bad, old, new), state, new_state)
        kept = kept.replace(step=new_state.step)
        metrics = {k: jnp.where(bad, jnp.zeros_like(v), v) for k, v in metrics.items()}
        metrics["nonfinite"] = jnp.where(loss_bad, 1.0, jnp.where(grad_bad, 2.0, 0.0))
        return kept, metrics

    return guarded


def jit_step(step_fn: Callable, shardings: Any, mesh: Mesh) -> Callable:
    """`jax.jit` of a `(state, batch, rng) -> (state, metrics)` step, guarded against non-finite
    updates, with explicit in/out shardings over the mesh (state as `shardings`, batch split over
    all devices, rng and metrics replicated); the old state is donated, so its buffers are reused."""
    return jax.jit(
        guard_nonfinite(step_fn),
        in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )


def for_method(config: Any, method: Any, channels: int, mesh: Mesh, num_examples: int):
    """(tx, schedule, total_steps, steps_per_epoch, graphdef, init, abstract_state) for a trainer's
    `method` (anything with `wrap_tx`, `build_model(rngs, channels)` and `trainable`): the optimizer
    of `config` for `num_examples` training examples and the sharded state it updates."""
    tx, schedule, total_steps, steps_per_epoch = optim.for_run(config, num_examples)
    tx = method.wrap_tx(tx)
    graphdef, init, abstract_state = initializer(
        lambda rngs: method.build_model(rngs, channels),
        tx,
        config.seed,
        mesh,
        trainable=method.trainable,
        rules=sharding.rules_from_config(config),
    )
    return tx, schedule, total_steps, steps_per_epoch, graphdef, init, abstract_state
