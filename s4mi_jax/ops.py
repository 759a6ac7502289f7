"""Small numerical primitives shared by models/ and losses/ (both import this; it imports neither).

Here rather than in losses/ so a model (the DINO head normalises its bottleneck) does not import upward
from the losses, and so the losses have one version instead of two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Unit vectors along the last axis, in at least float32: torch `F.normalize(p=2, eps=eps)`.

    `x / max(|x|, eps)` written as `x * rsqrt(max(|x|², eps²))`: the same value, but a zero row gives
    zeros with a finite gradient (the norm's sqrt has an infinite slope at 0, which turns into NaN). bf16
    inputs are normalised in float32 (the losses never run in bf16; eps² underflows nothing there).
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    squared = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(squared, eps * eps))
