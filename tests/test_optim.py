"""Optimizers: which parameters get weight decay, the schedule, and coupled-L2 Adam."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from s4mi_jax.core import optim
from s4mi_jax.errors import ConfigError
from s4mi_jax.models.simclr import build_simclr_model
from tests.helpers import local_config


def _cfg(**kw):
    base = dict(
        name="lars",
        base_lr=0.1,
        lr_scaling="none",
        weight_decay=0.1,
        momentum=0.0,
        nesterov=False,
        trust_coefficient=0.001,
        warmup_epochs=1.0,
        grad_clip_norm=0.0,
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


@pytest.fixture(scope="module")
def params():
    model = build_simclr_model(local_config().model, 1, nnx.Rngs(0))
    return nnx.split(model, nnx.Param, ...)[1]


def test_decay_mask_selects_kernels_only(params):
    flat = jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]
    for path, decay in flat:
        name = jax.tree_util.keystr(path)
        assert decay == ("kernel" in name), name


@pytest.mark.parametrize("name", ["lars", "sgd", "adam", "adamw"])
def test_no_weight_decay_on_bn_and_bias(params, name):
    tx = optim.make_optimizer(_cfg(name=name), lambda s: 0.1)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    for (path, u), p in zip(
        jax.tree_util.tree_flatten_with_path(updates)[0], jax.tree.leaves(params), strict=True
    ):
        moved = float(jnp.abs(u).max()) > 0
        # With zero gradients only weight decay moves a parameter: kernels move, BN/bias don't
        # (a zero-initialised kernel has nothing to decay).
        assert moved == (p.ndim > 1 and float(jnp.abs(p).max()) > 0), jax.tree_util.keystr(path)


def test_adam_is_coupled_l2():
    p = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([0.5])}
    g = {"w": jnp.array([[0.3, 0.1]]), "b": jnp.array([0.2])}
    tx = optim.make_optimizer(_cfg(name="adam", weight_decay=0.01), lambda s: 0.1)
    u, _ = tx.update(g, tx.init(p), p)
    ref = optax.adam(0.1)
    g_l2 = {"w": g["w"] + 0.01 * p["w"], "b": g["b"]}
    u_ref, _ = ref.update(g_l2, ref.init(p), p)
    np.testing.assert_allclose(u["w"], u_ref["w"], rtol=1e-6)
    np.testing.assert_allclose(u["b"], u_ref["b"], rtol=1e-6)


def test_schedule_warmup_cosine_and_scaling():
    cfg = _cfg(base_lr=0.075, lr_scaling="sqrt", warmup_epochs=2.0)
    sched = optim.make_schedule(cfg, batch_size=64, total_steps=100, steps_per_epoch=5)
    peak = 0.075 * 8
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(5)), peak / 2, rtol=1e-6)
    np.testing.assert_allclose(float(sched(10)), peak, rtol=1e-6)
    mid = 10 + (100 - 10) / 2
    np.testing.assert_allclose(float(sched(mid)), peak / 2, rtol=1e-5)
    assert abs(float(sched(100))) < 1e-9
    linear = optim.peak_learning_rate(_cfg(base_lr=0.3, lr_scaling="linear"), 4096)
    assert linear == pytest.approx(4.8)


def test_bad_optimizer_names_the_key():
    with pytest.raises(ConfigError, match="config.optim.name"):
        optim.make_optimizer(_cfg(name="rmsprop"), lambda s: 0.1)
    with pytest.raises(ConfigError, match="config.optim.lr_scaling"):
        optim.peak_learning_rate(_cfg(lr_scaling="cubic"), 64)


def _torch_cosine_annealing(base, eta_min, t_max, steps):
    """torch.optim.lr_scheduler.CosineAnnealingLR's recursive (chainable) form, stepped `steps` times."""
    lrs, lr = [base], base
    for t in range(1, steps):
        if (t - 1 - t_max) % (2 * t_max) == 0:
            lr = lr + (base - eta_min) * (1 - np.cos(np.pi / t_max)) / 2
        else:
            lr = (1 + np.cos(np.pi * t / t_max)) / (1 + np.cos(np.pi * (t - 1) / t_max)) * (
                lr - eta_min
            ) + eta_min
        lrs.append(lr)
    return np.array(lrs)


def test_periodic_cosine_is_torch_per_iteration_cosine_annealing():
    cfg = _cfg(schedule="periodic_cosine", cosine_period_steps=16, min_lr=1e-6, base_lr=1e-3)
    sched = optim.make_schedule(cfg, batch_size=16, total_steps=100, steps_per_epoch=10)
    got = np.array([float(sched(t)) for t in range(100)])
    np.testing.assert_allclose(got, _torch_cosine_annealing(1e-3, 1e-6, 16, 100), rtol=1e-5)
    # Period 2·T_max: back at the peak at 32 and 64, at the floor at 16 and 48.
    np.testing.assert_allclose(got[[0, 32, 64]], 1e-3, rtol=1e-5)
    np.testing.assert_allclose(got[[16, 48]], 1e-6, rtol=1e-3)


def test_weight_decay_cosine_schedule_and_min_lr():
    cfg = _cfg(weight_decay=0.04, weight_decay_end=0.4)
    wd = optim.weight_decay_schedule(cfg, 100)
    np.testing.assert_allclose(
        [float(wd(0)), float(wd(50)), float(wd(100))], [0.04, 0.22, 0.4], rtol=1e-6
    )
    assert optim.weight_decay_schedule(_cfg(weight_decay=0.1), 100) == 0.1
    sched = optim.make_schedule(
        _cfg(min_lr=1e-6, warmup_epochs=0.0), batch_size=16, total_steps=10, steps_per_epoch=5
    )
    np.testing.assert_allclose(float(sched(10)), 1e-6, rtol=1e-5)


def test_per_parameter_clipping_and_never_zero_grad():
    grads = {"a": jnp.full((4,), 3.0), "b": jnp.full((2,), 0.1)}
    clipped, _ = optim.clip_per_parameter(1.0).update(grads, optax.EmptyState())
    # Each leaf on its own: a (norm 6) scaled to norm 1, b (norm 0.14) untouched.
    np.testing.assert_allclose(np.linalg.norm(clipped["a"]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(clipped["b"], grads["b"])
    tx = optim.never_zero_grad()
    state = tx.init(grads)
    g2 = {"a": jnp.ones((4,)), "b": -jnp.ones((2,))}
    _, state = tx.update(grads, state)
    out, _ = tx.update(g2, state)  # The second step sees g1 + g2, as torch without zero_grad().
    np.testing.assert_allclose(out["a"], 4.0)
    np.testing.assert_allclose(out["b"], -0.9)


def test_per_branch_optimizers_are_independent():
    params = {"cnn": {"w": jnp.ones((3,))}, "vit": {"w": jnp.ones((3,))}}
    tx = optim.per_branch(optax.adam(0.1), ("cnn", "vit"))
    state = tx.init(params)
    grads = {"cnn": {"w": jnp.ones((3,))}, "vit": {"w": jnp.zeros((3,))}}
    updates, state = tx.update(grads, state, params)
    assert float(jnp.abs(updates["cnn"]["w"]).min()) > 0.0
    assert float(jnp.abs(updates["vit"]["w"]).max()) == 0.0  # No gradient, no move: own moments.
    assert set(state.inner_states) == {"cnn", "vit"}
