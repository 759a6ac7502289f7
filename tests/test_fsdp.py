"""Meshes beyond data parallelism: FSDP rules, the FSDP step equal to the replicated one, the AOT report,
and checkpoints restored on other device counts and layouts."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from s4mi_jax import aot
from s4mi_jax.core import optim, sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.errors import ConfigError
from s4mi_jax.models.simclr import build_simclr_model
from s4mi_jax.trainers import simclr
from tests.helpers import local_config, max_abs_diff


def _mesh(devices, fsdp):
    return sharding.make_mesh(local_config(**{"mesh.fsdp": fsdp}).mesh, devices=devices)


def test_mesh_from_config():
    mesh = _mesh(jax.devices(), 4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
    with pytest.raises(ConfigError, match="config.mesh.fsdp=3"):
        _mesh(jax.devices(), 3)
    config = local_config(**{"mesh.data": 4, "mesh.fsdp": 4})
    with pytest.raises(ConfigError, match="config.mesh.data=4 x config.mesh.fsdp=4"):
        sharding.make_mesh(config.mesh)


def test_leaf_rules():
    mesh = _mesh(jax.devices(), 4)
    rules = sharding.Rules(fsdp_min_size=100)
    assert sharding.leaf_spec((3, 3, 16, 32), mesh, rules) == P(None, None, None, "fsdp")
    assert sharding.leaf_spec((64, 12), mesh, rules) == P("fsdp")  # Largest divisible dim.
    assert sharding.leaf_spec((7, 15), mesh, rules) == P()  # Nothing divisible by 4.
    assert sharding.leaf_spec((32,), mesh, rules) == P()  # Below fsdp_min_size.
    assert sharding.leaf_spec((), mesh, rules) == P()
    assert sharding.leaf_spec((64, 12), _mesh(jax.devices(), 1), rules) == P()  # fsdp=1.
    assert sharding.rules_from_config(local_config()).fsdp_min_size == 2**16
    with pytest.raises(ConfigError, match="config.sharding.fsdp_min_size"):
        sharding.rules_from_config(local_config(**{"sharding.fsdp_min_size": -1}))


def _setup(config, devices):
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    tx = optim.make_optimizer(config.optim, lambda step: 0.1)
    graphdef, init, abstract = train_state.initializer(
        lambda rngs: build_simclr_model(config.model, 1, rngs),
        tx,
        config.seed,
        mesh,
        rules=sharding.rules_from_config(config),
    )
    return mesh, tx, graphdef, init, abstract


def _train(config, devices, batches):
    mesh, tx, graphdef, init, abstract = _setup(config, devices)
    step = train_state.jit_step(
        simclr.make_train_step(graphdef, tx, config.loss.temperature),
        train_state.shardings_of(abstract),
        mesh,
    )
    state, losses = init(), []
    for i, batch in enumerate(batches):
        state, metrics = step(
            state, sharding.put_batch(batch, mesh), jax.random.fold_in(state.rng, i)
        )
        losses.append(float(metrics["loss"]))
    return state, losses


def _config(fsdp, dtype="float64", min_size=0):
    return local_config(
        **{
            "optim.name": "sgd",
            "optim.momentum": 0.9,
            "optim.weight_decay": 1e-4,
            "model.dtype": dtype,
            "mesh.fsdp": fsdp,
            "sharding.fsdp_min_size": min_size,
        }
    )


def test_fsdp_step_equals_replicated_step_float64():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        size = _config(1).aug.image_size
        batches = [
            {k: rng.normal(size=(16, size, size, 1)) for k in ("view1", "view2")} for _ in range(3)
        ]
        repl, losses_repl = _train(_config(1), jax.devices(), batches)
        fsdp, losses_fsdp = _train(_config(4), jax.devices(), batches)
        # The FSDP state really is split: a conv kernel's device shard holds a quarter of it.
        kernels = [x for x in jax.tree.leaves(fsdp.params) if x.ndim == 4]
        assert kernels and all(
            x.sharding.shard_shape(x.shape)[-1] * 4 == x.shape[-1] for x in kernels
        )
        assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(repl.params))
        repl, fsdp = jax.device_get(repl), jax.device_get(fsdp)
    np.testing.assert_allclose(losses_repl, losses_fsdp, rtol=1e-12)
    assert max_abs_diff(repl.params, fsdp.params) < 1e-10
    assert max_abs_diff(repl.model_state, fsdp.model_state) < 1e-10
    assert max_abs_diff(repl.opt_state, fsdp.opt_state) < 1e-10
    assert losses_repl[0] != losses_repl[-1]  # The steps did something.


def test_aot_report_param_memory_shrinks_with_fsdp():
    reports = {}
    for fsdp in (1, 2, 4, 8):
        config = local_config(**{"mesh.fsdp": fsdp, "sharding.fsdp_min_size": 1024})
        reports[fsdp] = aot.analyze(config, jax.devices())
    per_device = [reports[k]["param_bytes_per_device"] for k in (1, 2, 4, 8)]
    total = reports[1]["param_count"] * 4  # float32 parameters, all on every device.
    assert per_device[0] == total
    assert per_device[0] > per_device[1] > per_device[2] > per_device[3]
    # Leaves below fsdp_min_size stay whole; the rest split fsdp ways.
    assert per_device[3] < total / 4
    for r in reports.values():
        assert r["devices"] == 8 and r["flops_per_device"] > 0 and r["temp_bytes"] >= 0
        assert r["state_bytes_per_device"] > r["param_bytes_per_device"]
    assert "GFLOP per device" in aot.format_report(reports[4])


def test_aot_topology_without_libtpu_is_a_clear_error():
    try:
        import libtpu  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="--topology=v5e:2x2: .*libtpu"):
            aot.topology_devices("v5e:2x2")
    else:
        assert len(aot.topology_devices("v5e:2x2")) == 4


def test_checkpoint_restores_on_fewer_devices_and_other_layouts(tmp_path):
    """Saved FSDP-sharded on 8 devices; restored replicated on 4 and on 1, and FSDP on 4."""
    devices = jax.devices()
    _, _, _, init, _ = _setup(_config(2, "float32", 0), devices)
    saved = init()
    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    ckpt.save(7, saved, None)
    ckpt.close()
    expected = jax.device_get(saved)
    for n, fsdp in ((4, 1), (1, 1), (4, 4)):
        _, _, _, _, abstract = _setup(_config(fsdp, "float32", 0), devices[:n])
        ckpt = Checkpointer(str(tmp_path / "ckpt"))
        restored = ckpt.restore(abstract, None, step=7)
        ckpt.close()
        for x, a in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract), strict=True):
            assert x.sharding == a.sharding and len(x.sharding.device_set) == n
        assert max_abs_diff(expected, jax.device_get(restored)) == 0.0
