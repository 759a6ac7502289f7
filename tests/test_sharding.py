"""The jitted SimCLR step on 8 simulated devices equals the same step on one device.

Compared in float64: in float32 the two programs differ only in reduction order (~1e-7 relative), but
a pre-activation that rounding pushes across zero flips a ReLU, so after a few steps single parameters
can differ by 1e-5 for no fault of the sharding. In float64 that noise is ~1e-16 and any real
difference (per-device BatchNorm statistics, per-device negatives) stands out by many orders.
"""

import jax
import numpy as np
import pytest

from s4mi_jax.core import optim, sharding, train_state
from s4mi_jax.models.simclr import build_simclr_model
from s4mi_jax.trainers import simclr
from tests.helpers import local_config, max_abs_diff


def _run(devices, batches, config):
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    tx = optim.make_optimizer(config.optim, lambda step: 0.1)
    graphdef, init, abstract = train_state.initializer(
        lambda rngs: build_simclr_model(config.model, 1, rngs), tx, config.seed, mesh
    )
    step = train_state.jit_step(
        simclr.make_train_step(graphdef, tx, config.loss.temperature),
        train_state.shardings_of(abstract),
        mesh,
    )
    state = init()
    losses = []
    for i, batch in enumerate(batches):
        rng = jax.random.fold_in(state.rng, i)
        state, metrics = step(state, sharding.put_batch(batch, mesh), rng)
        losses.append(float(metrics["loss"]))
    # Every output carries the replicated sharding over the whole mesh.
    assert all(x.sharding.mesh.devices.size == len(devices) for x in jax.tree.leaves(state))
    return jax.device_get(state), losses


def _batches(n, size, dtype):
    rng = np.random.default_rng(0)
    return [
        {
            "view1": rng.normal(size=(16, size, size, 1)).astype(dtype),
            "view2": rng.normal(size=(16, size, size, 1)).astype(dtype),
        }
        for _ in range(n)
    ]


def _sgd_config(dtype):
    return local_config(
        **{
            "optim.name": "sgd",
            "optim.momentum": 0.9,
            "optim.weight_decay": 1e-4,
            "model.dtype": dtype,
        }
    )


def test_eight_devices_match_one_device_float64():
    assert jax.device_count() == 8
    with jax.enable_x64(True):
        config = _sgd_config("float64")
        batches = _batches(3, config.aug.image_size, np.float64)
        one, losses_one = _run(jax.devices()[:1], batches, config)
        eight, losses_eight = _run(jax.devices(), batches, config)
        fresh = _run(jax.devices()[:1], [], config)[0]
    assert jax.tree.leaves(one.params)[0].dtype == np.float64
    np.testing.assert_allclose(losses_one, losses_eight, rtol=1e-12)
    assert max_abs_diff(one.params, eight.params) < 1e-10
    # BatchNorm running statistics were computed over the global batch on both meshes.
    assert max_abs_diff(one.model_state, eight.model_state) < 1e-10
    assert max_abs_diff(one.opt_state, eight.opt_state) < 1e-10
    # The steps did change the state: the comparison is not between two untouched inits.
    assert max_abs_diff(fresh.params, one.params) > 1e-3
    assert max_abs_diff(fresh.model_state, one.model_state) > 1e-3


@pytest.mark.parametrize("devices", [2, 8])
def test_float32_step_matches_to_rounding(devices):
    """The default float32 path: one step agrees to float32 rounding (relative 1e-5)."""
    config = _sgd_config("float32")
    batches = _batches(1, config.aug.image_size, np.float32)
    one, losses_one = _run(jax.devices()[:1], batches, config)
    many, losses_many = _run(jax.devices()[:devices], batches, config)
    np.testing.assert_allclose(losses_one, losses_many, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(one.opt_state), jax.tree.leaves(many.opt_state), strict=True):
        scale = float(np.abs(a).max()) or 1.0
        assert float(np.abs(a - b).max()) / scale < 1e-4  # Momentum = first gradient.


def test_bfloat16_step_keeps_float32_state():
    """Mixed precision (the research variant): bf16 compute, float32 params/BN stats/loss."""
    config = _sgd_config("bfloat16")
    batches = _batches(2, config.aug.image_size, np.float32)
    state, losses = _run(jax.devices(), batches, config)
    assert all(np.isfinite(losses))
    for leaf in jax.tree.leaves((state.params, state.model_state, state.opt_state)):
        assert leaf.dtype == np.float32 or not np.issubdtype(leaf.dtype, np.floating)
    ref, ref_losses = _run(jax.devices(), batches, _sgd_config("float32"))
    np.testing.assert_allclose(losses, ref_losses, rtol=0.05)  # bf16 has ~3 significant digits.
