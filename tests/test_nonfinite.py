"""Non-finite loss or gradients: never applied; the run stops naming the step, or skips and counts."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from s4mi_jax.core import sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.core.loop import train_loop
from s4mi_jax.core.metric_writer import MetricWriter
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.errors import S4MIError


def _toy(tmp_path, poison_steps, policy, total=8):
    """Linear regression; batch k (1-based step) is poisoned with inf if k in poison_steps."""
    mesh = sharding.make_mesh(ml_mesh(), devices=jax.devices()[:1])
    tx = optax.sgd(0.1)
    params = {"w": jnp.zeros((3,))}
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state={},
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(0),
    )

    def step_fn(state, batch, rng):
        def loss_fn(p):
            return jnp.mean((batch["x"] @ p["w"] - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state)
        return state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        ), {"loss": loss, "grad_norm": optax.global_norm(grads)}

    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), state)
    step = train_state.jit_step(step_fn, shardings, mesh)
    rng = np.random.default_rng(0)

    def batches():
        for k in itertools.count(1):
            x = rng.normal(size=(4, 3)).astype(np.float32)
            y = x.sum(1)
            if k in poison_steps:
                x[0, 0] = np.inf
            yield {"x": x, "y": y}

    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    writer = MetricWriter(str(tmp_path), tensorboard=False)
    try:
        config = ml_collections.ConfigDict(
            dict(log_every=4, ckpt_every=0, halt_at_step=None, nonfinite=policy)
        )
        state, _ = train_loop(
            config,
            train_step=step,
            state=state,
            data_iter=batches(),
            mesh=mesh,
            checkpointer=ckpt,
            writer=writer,
            total_steps=total,
            images_per_step=4,
        )
    finally:
        writer.close()
        ckpt.close()
    return state


def ml_mesh():
    import ml_collections

    return ml_collections.ConfigDict({"data": -1})


def test_stop_policy_names_step_and_quantity(tmp_path):
    with pytest.raises(S4MIError, match=r"non-finite loss at step 3 \(1 update\(s\) skipped"):
        _toy(tmp_path, {3}, "stop")


def test_skip_policy_skips_exactly_the_bad_updates(tmp_path):
    skipped = _toy(tmp_path / "a", {3, 6}, "skip")
    assert int(skipped.step) == 8 and np.isfinite(np.asarray(skipped.params["w"])).all()
    rows = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert '"train/skipped_steps": 2' in rows[-1]
    assert all("NaN" not in r and "nan" not in r for r in rows)  # Averages exclude bad steps.
    clean = _toy(tmp_path / "b", set(), "skip")
    assert not np.allclose(clean.params["w"], skipped.params["w"])  # Bad steps really skipped.


def test_tally_matches_numpy_masked_means_and_first_bad_step():
    """The loop's jitted per-step tally: means over the good steps only, bad steps counted, the first
    bad step and its kind kept across a log (only the averages reset)."""
    from s4mi_jax.core.loop import tally_fn

    rng = np.random.default_rng(0)
    loss, acc = rng.normal(size=7).astype(np.float32), rng.normal(size=7).astype(np.float32)
    bad = np.array([0, 0, 2, 0, 1, 0, 0], np.float32)
    empty, update = tally_fn({"loss": None, "acc": None})
    tally = empty()
    for i in range(4):
        tally = update(tally, {"loss": loss[i], "acc": acc[i]}, bad[i], i + 1)
    good = bad[:4] == 0
    got = tally.averages.compute()
    np.testing.assert_allclose(float(got["loss"]), loss[:4][good].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(got["acc"]), acc[:4][good].mean(), rtol=1e-6)
    tally = tally._replace(averages=empty().averages)
    for i in range(4, 7):
        tally = update(tally, {"loss": loss[i], "acc": acc[i]}, bad[i], i + 1)
    good = bad[4:] == 0
    np.testing.assert_allclose(
        float(tally.averages.compute()["loss"]), loss[4:][good].mean(), rtol=1e-6
    )
    assert (int(tally.skipped), int(tally.first_bad), float(tally.first_kind)) == (2, 3, 2.0)
