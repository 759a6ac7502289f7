"""Losses between embeddings of positive pairs: NT-Xent (SimCLR, Chen et al. 2020) and the normalised
regression loss `2 - 2 cos` (BYOL; CASS, Singh et al., its `CASS.ipynb`).

Called on the *global* batch: under `jax.jit` with a data-sharded batch, `z1 @ z.T` is computed over all
devices' rows, so every anchor sees the negatives of every replica (the official code's cross-replica concat)
without any explicit collective.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from s4mi_jax.ops import l2_normalize

_LARGE_NUM = 1e9


def embedding_std(z: jax.Array) -> jax.Array:
    """Collapse monitor: mean per-dimension std of L2-normalised embeddings, ~1/sqrt(D) when spread
    out, -> 0 when all rows coincide."""
    return jnp.mean(jnp.std(l2_normalize(z), axis=0))


def nt_xent(
    z1: jax.Array, z2: jax.Array, temperature: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean over all 2N anchors of -log softmax(sim/τ)[positive], the anchor itself excluded.

    z1, z2: (N, D) projections of two views of the same N images (row i of z1 and z2 are a positive pair).
    Cosine similarity (rows are L2-normalised here). This is the paper's average over the 2N positive pairs;
    the official TF code returns the sum of the two directions' means, i.e. twice this value.
    Computed in float32 (float64 if given float64) whatever the compute dtype. Returns (loss, {"contrastive_acc"}).
    """
    z = l2_normalize(jnp.concatenate([z1, z2], axis=0))
    n2 = z.shape[0]
    n = n2 // 2
    logits = (z @ z.T) / temperature
    eye = jnp.eye(n2, dtype=bool)
    logits = jnp.where(eye, -_LARGE_NUM, logits)
    # One-hot targets instead of an integer gather: shards cleanly under any mesh.
    targets = jnp.roll(eye, n, axis=1).astype(z.dtype)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    loss = -jnp.mean(jnp.sum(targets * log_probs, axis=-1))
    acc = jnp.mean(jnp.sum(targets * (logits >= jnp.max(logits, axis=-1, keepdims=True)), axis=-1))
    return loss, {"contrastive_acc": acc}


def cosine_regression(z1: jax.Array, z2: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CASS's loss: mean over rows of `2 - 2 cos(z1_i, z2_i)` (= ||ẑ1 - ẑ2||²), gradients into both.

    No stop-gradient, negatives or predictor: CASS relies on the two architectures differing to avoid
    collapse. Returns (loss, {"branch_cosine": mean cosine}).
    """
    cos = jnp.sum(l2_normalize(z1) * l2_normalize(z2), axis=-1)
    return jnp.mean(2.0 - 2.0 * cos), {"branch_cosine": jnp.mean(cos)}
