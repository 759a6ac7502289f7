"""Losses against plain NumPy references written from the papers' formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s4mi_jax.losses.contrastive import nt_xent


def _nt_xent_numpy(z1, z2, tau):
    """SimCLR eq. (1), averaged over all 2N anchors, written as loops."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        sims = np.array([z[i] @ z[k] / tau for k in range(n2)])
        denom = sum(np.exp(sims[k]) for k in range(n2) if k != i)
        total += -np.log(np.exp(sims[j]) / denom)
    return total / n2


@pytest.mark.parametrize(
    "seed,n,d,tau", [(0, 4, 8, 0.1), (1, 7, 16, 0.5), (2, 16, 3, 1.0), (3, 2, 5, 0.07)]
)
def test_nt_xent_matches_numpy(seed, n, d, tau):
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.1, 10)
    z2 = rng.normal(size=(n, d)).astype(np.float32)
    loss, _ = nt_xent(jnp.asarray(z1), jnp.asarray(z2), tau)
    np.testing.assert_allclose(float(loss), _nt_xent_numpy(z1, z2, tau), rtol=1e-5, atol=1e-5)


def test_nt_xent_perfect_pairs_accuracy_and_symmetry():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(8, 32)).astype(np.float32)
    loss_same, m = nt_xent(jnp.asarray(z), jnp.asarray(z), 0.1)
    assert float(m["contrastive_acc"]) == 1.0
    loss_swapped, _ = nt_xent(jnp.asarray(z), jnp.asarray(z[::-1]), 0.1)
    assert float(loss_same) < float(loss_swapped)
    # Swapping the two views changes nothing: the loss is symmetric in (z1, z2).
    z2 = rng.normal(size=(8, 32)).astype(np.float32)
    a, _ = nt_xent(jnp.asarray(z), jnp.asarray(z2), 0.2)
    b, _ = nt_xent(jnp.asarray(z2), jnp.asarray(z), 0.2)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def test_nt_xent_bf16_inputs_computed_in_float32():
    rng = np.random.default_rng(1)
    z1 = rng.normal(size=(6, 8)).astype(np.float32)
    z2 = rng.normal(size=(6, 8)).astype(np.float32)
    loss, _ = nt_xent(jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16), 0.5)
    assert loss.dtype == jnp.float32
    ref = _nt_xent_numpy(
        np.asarray(jnp.asarray(z1, jnp.bfloat16), np.float32),
        np.asarray(jnp.asarray(z2, jnp.bfloat16), np.float32),
        0.5,
    )
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def _focal_numpy(z, y, w, alpha=1.0, gamma=2.0):
    """methods.md §4.1, element by element."""
    total = 0.0
    for i in range(z.shape[0]):
        for c in range(z.shape[1]):
            p = 1 / (1 + np.exp(-np.float64(z[i, c])))
            logpt = y[i, c] * np.log(p + 1e-12) + (1 - y[i, c]) * np.log(1 - p + 1e-12)
            total += -alpha * (1 - np.exp(logpt)) ** gamma * logpt * w[c]
    return total / z.size


@pytest.mark.parametrize("seed,c", [(0, 2), (1, 5)])
def test_sigmoid_focal_loss_matches_numpy(seed, c):
    from s4mi_jax.losses.classification import sigmoid_focal_loss

    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(7, c)) * 3).astype(np.float32)
    y = np.eye(c, dtype=np.float32)[rng.integers(0, c, 7)]
    w = rng.uniform(0.2, 1.0, c).astype(np.float32)
    got = float(sigmoid_focal_loss(jnp.asarray(z), jnp.asarray(y), jnp.asarray(w)))
    np.testing.assert_allclose(got, _focal_numpy(z, y, w), rtol=1e-5)
    multi = (rng.uniform(size=(7, c)) < 0.4).astype(np.float32)  # Multi-label targets.
    got = float(sigmoid_focal_loss(jnp.asarray(z), jnp.asarray(multi)))
    np.testing.assert_allclose(got, _focal_numpy(z, multi, np.ones(c)), rtol=1e-5)


def _focal_stable_numpy(z, y, w, alpha=1.0, gamma=2.0):
    """Focal loss from its definition, −α(1−p_t)^γ log p_t · w_c, in float64 with log p_t and 1−p_t
    computed stably, and its gradient d(loss)/dz; both per element, unaveraged."""
    z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
    logp, log1mp = -np.logaddexp(0, -z), -np.logaddexp(0, z)  # log σ(z), log σ(−z)
    logpt = y * logp + (1 - y) * log1mp
    q = -np.expm1(logpt)  # 1 − p_t
    loss = -alpha * q**gamma * logpt * w
    dloss_dlogpt = -alpha * (q**gamma - gamma * q ** (gamma - 1) * np.exp(logpt) * logpt) * w
    return loss, dloss_dlogpt * (y - np.exp(logp))  # d log p_t / dz = y − σ(z)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sigmoid_focal_loss_saturated_logits_under_jit(dtype):
    """Under jit XLA folds the reference's log(1−p+ε) into log((1+ε)−p) and the ε vanishes in float32:
    saturated logits gave a NaN loss and gradient. Checked per element and on a weighted batch."""
    from s4mi_jax.losses.classification import sigmoid_focal_loss

    mags = np.array([0.5, 5.0, 17.0, 30.0, 100.0, 1e4])
    z = np.concatenate([mags, -mags])[None].repeat(2, 0)  # Both signs ...
    y = np.array([[1.0], [0.0]]).repeat(z.shape[1], 1)  # ... against positive and negative targets.
    zq = jnp.asarray(z, dtype)
    z64 = np.asarray(zq.astype(jnp.float32), np.float64)  # The logits the loss actually sees.
    rtol = 1e-5 if dtype == jnp.float32 else 1e-2  # bfloat16 gradients come back in bfloat16.

    one = jax.jit(
        jax.vmap(jax.value_and_grad(lambda zi, yi: sigmoid_focal_loss(zi[None], yi[None])))
    )
    val, grad = one(zq.reshape(-1), jnp.asarray(y.reshape(-1)))
    ref_val, ref_grad = _focal_stable_numpy(z64.reshape(-1), y.reshape(-1), 1.0)
    assert np.isfinite(val).all() and np.isfinite(np.asarray(grad, np.float32)).all()
    np.testing.assert_allclose(np.asarray(val), ref_val, rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(np.asarray(grad, np.float32), ref_grad, rtol=rtol, atol=1e-30)

    w = np.linspace(0.2, 1.0, z.shape[1])
    batch = jax.jit(jax.value_and_grad(sigmoid_focal_loss))
    val, grad = batch(zq, jnp.asarray(y), jnp.asarray(w, jnp.float32))
    ref_val, ref_grad = _focal_stable_numpy(z64, y, w)
    np.testing.assert_allclose(float(val), ref_val.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(grad, np.float32), ref_grad / z.size, rtol=rtol, atol=1e-30
    )


def test_cross_entropies_match_numpy():
    from s4mi_jax.losses.classification import sigmoid_cross_entropy, softmax_cross_entropy

    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 4)).astype(np.float64)
    y = np.eye(4)[rng.integers(0, 4, 6)]
    w = rng.uniform(0.5, 2, 4)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    ref = -np.mean(np.sum(w * y * logp, axis=1))
    got = softmax_cross_entropy(jnp.asarray(z, jnp.float32), jnp.asarray(y), jnp.asarray(w))
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)
    p = 1 / (1 + np.exp(-z))
    ref = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(
        float(sigmoid_cross_entropy(jnp.asarray(z), jnp.asarray(y))), ref, rtol=1e-5
    )


def test_class_weight_schemes():
    from s4mi_jax.losses.classification import class_weights

    counts = np.array([100, 40, 10])
    np.testing.assert_allclose(
        class_weights(counts, "reference"), [1.0, 0.2 + 0.8 * 30 / 90, 0.2], rtol=1e-6
    )
    np.testing.assert_allclose(class_weights(counts, "inverse"), 150 / (3 * counts), rtol=1e-6)
    assert class_weights(counts, "none") is None
