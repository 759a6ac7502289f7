"""The jitted SimCLR step on 8 simulated devices equals the same step on one device."""

import jax
import numpy as np

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
    step = simclr.jit_train_step(
        simclr.make_train_step(graphdef, tx, config.loss.temperature),
        train_state.shardings_of(abstract),
        mesh,
    )
    state = init()
    losses = []
    for i, batch in enumerate(batches):
        state, metrics = step(
            state,
            sharding.put_batch(batch, mesh),
            jax.random.key_data(jax.random.fold_in(jax.random.key(0), i)),
        )
        losses.append(float(metrics["loss"]))
    # Every output carries the replicated sharding over the whole mesh.
    assert all(x.sharding.mesh.devices.size == len(devices) for x in jax.tree.leaves(state))
    return jax.device_get(state), losses


def test_eight_devices_match_one_device():
    assert jax.device_count() == 8
    config = local_config(
        **{"optim.name": "sgd", "optim.momentum": 0.9, "optim.weight_decay": 1e-4}
    )
    rng = np.random.default_rng(0)
    size = config.aug.image_size
    batches = [
        {
            "view1": rng.normal(size=(16, size, size, 1)).astype(np.float32),
            "view2": rng.normal(size=(16, size, size, 1)).astype(np.float32),
        }
        for _ in range(3)
    ]
    one, losses_one = _run(jax.devices()[:1], batches, config)
    eight, losses_eight = _run(jax.devices(), batches, config)
    np.testing.assert_allclose(losses_one, losses_eight, rtol=1e-6)
    assert max_abs_diff(one.params, eight.params) < 1e-6
    # BatchNorm running statistics were computed over the global batch on both meshes.
    assert max_abs_diff(one.model_state, eight.model_state) < 1e-6
    assert max_abs_diff(one.opt_state, eight.opt_state) < 1e-6
    # And the steps did change the state (the comparison is not between two untouched inits).
    fresh = _run(jax.devices()[:1], [], config)[0]
    assert max_abs_diff(fresh.params, one.params) > 1e-4
    assert max_abs_diff(fresh.model_state, one.model_state) > 1e-4
