"""CASS: the loss against NumPy, both networks trained, the raw-logit variant as the reference describes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import cass_chest
from s4mi_jax.core import optim, run, sharding, train_state
from s4mi_jax.losses.contrastive import cosine_regression
from s4mi_jax.trainers import cass
from tests.helpers import max_abs_diff, override


def _np_cass_loss(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.mean(2 - 2 * np.sum(a * b, axis=-1))  # CASS.ipynb's loss_fn, averaged over the batch


def test_loss_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(9, 13)), rng.normal(size=(9, 13))
    loss, aux = cosine_regression(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(float(loss), _np_cass_loss(a, b), rtol=1e-6)
    np.testing.assert_allclose(float(aux["branch_cosine"]), 1 - _np_cass_loss(a, b) / 2, rtol=1e-5)
    # ||â - b̂||² form, and zero for identical directions.
    an, bn = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (a, b))
    np.testing.assert_allclose(float(loss), np.mean(np.sum((an - bn) ** 2, -1)), rtol=1e-6)
    assert float(cosine_regression(jnp.asarray(a), jnp.asarray(3 * a))[0]) < 1e-6


def _config(**kw):
    return override(cass_chest.get_config("local"), **{"model.vit.drop_path": 0.0, **kw})


def _setup(config, devices=None):
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    task = cass.task(config, run.RunData(channels=1, num_examples=16), mesh)
    tx = task.wrap_tx(optim.make_optimizer(config.optim, lambda s: 1e-3))
    graphdef, init, abstract = train_state.initializer(task.build_model, tx, config.seed, mesh)
    step = train_state.jit_step(
        task.make_step(run.StepArgs(graphdef, tx, 10, 2)), train_state.shardings_of(abstract), mesh
    )
    return mesh, graphdef, init, step


def _batch(config, dtype=np.float32, seed=0):
    s = config.aug.image_size
    return {"image": np.random.default_rng(seed).normal(size=(16, s, s, 1)).astype(dtype)}


@pytest.mark.parametrize("raw_logits", [False, True])
def test_step_trains_both_networks_on_their_cosine(raw_logits):
    config = _config(**{"model.head.raw_logits": raw_logits})
    mesh, graphdef, init, step = _setup(config)
    state0 = init()
    batch = _batch(config)
    # The loss the step reports, recomputed outside it in NumPy from each network's features and
    # its head's weights (train mode: BatchNorm on batch statistics, as in the step).
    model = nnx.merge(graphdef, state0.params, state0.model_state)
    model.train()
    x = jnp.asarray(batch["image"])
    f_cnn, f_vit = np.asarray(model.cnn.encoder(x)), np.asarray(model.vit.encoder(x))
    if raw_logits:
        # The reference compares the networks' own classifier outputs: one Linear each, 1000-way in
        # the reference (logit_dim), no projection MLP.
        heads = [state0.params[b]["head"]["layers"][0] for b in ("cnn", "vit")]
        assert all(len(state0.params[b]["head"]["layers"]) == 1 for b in ("cnn", "vit"))
        assert heads[0]["kernel"].shape[1] == config.model.head.logit_dim
        z = [
            f @ np.asarray(h["kernel"]) + np.asarray(h["bias"])
            for f, h in zip((f_cnn, f_vit), heads, strict=True)
        ]
        want = _np_cass_loss(*z)
    else:
        want = _np_cass_loss(np.asarray(model.cnn.head(f_cnn)), np.asarray(model.vit.head(f_vit)))

    state1, metrics = step(init(), sharding.put_batch(batch, mesh), state0.rng)
    np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)
    state0, state1 = jax.device_get((state0, state1))
    for branch in ("cnn", "vit"):  # Gradients reach both encoders and both heads.
        for part in ("encoder", "head"):
            assert max_abs_diff(state0.params[branch][part], state1.params[branch][part]) > 1e-5
        assert float(metrics[f"grad_norm_{branch}"]) > 0
    # Two optimizers: one Adam state per branch, each covering only its own network.
    inner = state1.opt_state.inner_states
    assert set(inner) == {"cnn", "vit"}


def test_eight_devices_match_one_device_float64():
    with jax.enable_x64(True):
        config = _config(
            **{"model.cnn.dtype": "float64", "model.vit.dtype": "float64", "optim.name": "sgd"}
        )
        batches = [_batch(config, np.float64, seed=i) for i in range(2)]
        out = {}
        for n in (1, 8):
            mesh, _, init, step = _setup(config, devices=jax.devices()[:n])
            state, losses = init(), []
            for i, b in enumerate(batches):
                state, m = step(
                    state, sharding.put_batch(b, mesh), jax.random.fold_in(state.rng, i)
                )
                losses.append(float(m["loss"]))
            out[n] = (jax.device_get(state), losses)
    np.testing.assert_allclose(out[1][1], out[8][1], rtol=1e-12)
    for part in ("params", "model_state", "opt_state"):
        assert max_abs_diff(getattr(out[1][0], part), getattr(out[8][0], part)) < 1e-10, part
