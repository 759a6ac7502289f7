"""Classification losses: softmax cross-entropy and the DEDL/CASS sigmoid focal loss
(as DEDL's `Classification/timm/Supervised.ipynb` and the CASS notebook define it).

Targets are one-hot (single-label) or multi-hot (multi-label) float arrays, never integer gathers, so the
losses shard cleanly under any mesh. Everything is computed in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from s4mi_jax.errors import ConfigError


def softmax_cross_entropy(
    logits: jax.Array, targets: jax.Array, class_weights: jax.Array | None = None
) -> jax.Array:
    """Mean over the batch of -Σ_c w_c y_c log softmax(z)_c (w = 1 without class weights)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    w = 1.0 if class_weights is None else class_weights
    return -jnp.mean(jnp.sum(w * targets * logp, axis=-1))


def sigmoid_focal_loss(
    logits: jax.Array,
    targets: jax.Array,
    class_weights: jax.Array | None = None,
    *,
    alpha: float = 1.0,
    gamma: float = 2.0,
) -> jax.Array:
    """The DEDL/CASS focal loss: FL = −α (1−p_t)^γ log p_t · w_c, averaged over batch × classes.

    log p_t = y·log σ(z) + (1−y)·log σ(−z). Used for multi-class data too, with one-hot targets.
    The reference code writes log(p+ε) and log(1−p+ε) with p = σ(z), ε = 1e-12; under `jax.jit`
    XLA folds 1−p+ε into (1+ε)−p, the ε rounds away in float32, and a saturated logit (|z| ≳ 17)
    gives log 0 and a NaN loss and gradient. Here log p and log(1−p) are `log_sigmoid(±z)` and
    1−p_t is −expm1(log p_t): this equals the reference formula's exact value to float32 precision
    wherever ε ≪ min(p, 1−p) (|z| ≲ 13), and stays finite and exact where the ε is rewritten away.
    One difference where the reference is finite: for a confidently wrong logit (|z| ≳ 20) its ε
    pulls log p_t up toward log ε ≈ −27.6, flattening the loss and its gradient; here log p_t keeps
    its true value (≈ −|z|), as in the focal loss's definition.
    """
    z = logits.astype(jnp.float32)
    logpt = targets * jax.nn.log_sigmoid(z) + (1 - targets) * jax.nn.log_sigmoid(-z)
    loss = -alpha * (-jnp.expm1(logpt)) ** gamma * logpt
    if class_weights is not None:
        loss = loss * class_weights
    return jnp.mean(loss)


def sigmoid_cross_entropy(
    logits: jax.Array, targets: jax.Array, class_weights: jax.Array | None = None
) -> jax.Array:
    """Binary cross-entropy per class (multi-label), averaged over batch × classes."""
    z = logits.astype(jnp.float32)
    loss = -(targets * jax.nn.log_sigmoid(z) + (1 - targets) * jax.nn.log_sigmoid(-z))
    if class_weights is not None:
        loss = loss * class_weights
    return jnp.mean(loss)


LOSSES = {
    "cross_entropy": softmax_cross_entropy,
    "focal": sigmoid_focal_loss,
    "sigmoid_cross_entropy": sigmoid_cross_entropy,
}


def get_loss(name: str, multilabel: bool = False):
    """The loss `config.loss.name`; with multi-label data, cross-entropy is the sigmoid one (softmax
    cross-entropy is single-label only)."""
    if multilabel and name == "cross_entropy":
        name = "sigmoid_cross_entropy"
    if name not in LOSSES:
        raise ConfigError(f"config.loss.name={name!r}: expected one of {sorted(LOSSES)}.")
    return LOSSES[name]


def class_weights(counts: np.ndarray, scheme: str) -> np.ndarray | None:
    """Per-class loss weights from training-set class counts.

    - "none": no weights.
    - "reference": the DEDL/CASS `normalize(freq, 0.2, 1)`: class frequencies min-max rescaled to
      [0.2, 1]. Note that this gives the *most frequent* class the largest weight; it is kept for parity.
    - "inverse": N / (C · n_c), the usual balanced weighting.
    """
    counts = np.asarray(counts, np.float64)
    if scheme == "none":
        return None
    if scheme == "reference":
        lo, hi = counts.min(), counts.max()
        if hi == lo:
            return np.ones_like(counts, np.float32)
        return (0.2 + (counts - lo) * (1.0 - 0.2) / (hi - lo)).astype(np.float32)
    if scheme == "inverse":
        return (counts.sum() / (len(counts) * np.maximum(counts, 1))).astype(np.float32)
    raise ConfigError(
        f"config.loss.class_weights={scheme!r}: expected 'none', 'reference' or 'inverse'."
    )
