"""Segmentation losses against NumPy; FixMatch masking/normalisation on a hand-made batch; no gradient
through pseudo-labels; the ramp-up formula."""

import jax
import jax.numpy as jnp
import numpy as np

from s4mi_jax.losses import segmentation as L


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_weighted_ce_dice_and_median_frequency_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 6, 3))
    labels = rng.integers(0, 3, (2, 5, 6))
    w = np.array([0.2, 1.0, 3.0])
    logp = np.log(_softmax(logits))
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    want_ce = (w[labels] * nll).sum() / w[labels].sum()  # torch CrossEntropyLoss(weight=w)
    with jax.enable_x64(True):
        got_ce = L.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(w))
        p = _softmax(logits)
        got_dice = L.dice_loss(jnp.asarray(p), jnp.asarray(labels), 3)
    np.testing.assert_allclose(float(got_ce), want_ce, rtol=1e-12)
    y = np.eye(3)[labels]
    want_dice = np.mean(
        [
            1
            - (2 * (p[..., c] * y[..., c]).sum() + 1e-5)
            / ((p[..., c] ** 2).sum() + (y[..., c] ** 2).sum() + 1e-5)
            for c in range(3)
        ]
    )
    np.testing.assert_allclose(float(got_dice), want_dice, rtol=1e-12)
    masks = [np.array([[0, 0, 0, 1]]), np.array([[0, 2, 2, 0]])]  # freq 5/8, 1/8, 2/8; no class 3
    freq = np.array([5, 1, 2]) / 8
    np.testing.assert_allclose(
        L.median_frequency_weights(masks, 4), [*(np.median(freq) / freq), 0.0], rtol=1e-6
    )


def test_fixmatch_masks_by_threshold_and_normalises_by_all_pixels():
    # One image, 2x2 pixels, 2 classes. Weak-view confidences: 0.99, 0.97, 0.6, 0.5 (the last three
    # below / at / above tau=0.95 as built).
    conf = jnp.array([[[0.99, 0.97], [0.6, 0.5]]])
    targets = jnp.array([[[1, 0], [1, 0]]])
    strong = jnp.array([[[[0.0, 2.0], [1.0, 0.0]], [[3.0, 0.0], [0.0, 0.0]]]])
    nll = -np.log(_softmax(np.asarray(strong)))
    loss, frac = L.fixmatch_unlabeled_loss(strong, targets, conf, 0.95)
    # Only the two confident pixels count, but the sum is divided by all 4 pixels.
    want = (nll[0, 0, 0, 1] + nll[0, 0, 1, 0]) / 4
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    assert float(frac) == 0.5
    valid = jnp.array(
        [[[1.0, 0.0], [1.0, 1.0]]]
    )  # An ignored pixel leaves numerator and denominator.
    loss_v, _ = L.fixmatch_unlabeled_loss(strong, targets, conf, 0.95, valid)
    np.testing.assert_allclose(float(loss_v), nll[0, 0, 0, 1] / 3, rtol=1e-6)
    assert float(L.fixmatch_unlabeled_loss(strong, targets, conf, 1.0)[0]) == 0.0


def test_no_gradient_flows_through_pseudo_labels():
    rng = np.random.default_rng(1)
    weak = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    strong = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)

    def loss(weak, strong):
        target, conf = L.pseudo_labels(weak)
        return L.fixmatch_unlabeled_loss(strong, target, conf, 0.0)[0]

    g_weak, g_strong = jax.grad(loss, argnums=(0, 1))(weak, strong)
    assert float(jnp.abs(g_weak).max()) == 0.0
    assert float(jnp.abs(g_strong).max()) > 0.0


def test_sigmoid_rampup_matches_formula_and_s4mi_values():
    steps = np.array([0, 149, 150, 5000, 9999, 30000, 10**6])
    got = np.asarray(L.sigmoid_rampup(jnp.asarray(steps), weight=0.1, length=200, divisor=150))
    e = np.minimum(steps // 150, 200)
    np.testing.assert_allclose(got, 0.1 * np.exp(-5 * (1 - e / 200) ** 2), rtol=1e-6)
    # methods.md §4.5: 6.7e-4 at the start, 3.1e-3 at t=5000, 1.06e-2 at 10k, 0.1 from 30k on.
    np.testing.assert_allclose(got[[0, 3, 4, 6]], [6.74e-4, 3.1e-3, 1.06e-2, 0.1], rtol=0.02)
    assert got[1] == got[0] < got[2]
