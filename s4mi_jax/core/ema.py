"""Exponential moving averages of parameter trees (DINO's teacher; later FixMatch's EMA model)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def ema_update(average: Any, new: Any, momentum: jax.Array | float) -> Any:
    """average ← m·average + (1 - m)·new, leaf by leaf, in each leaf's own dtype. No gradient flows."""
    new = jax.lax.stop_gradient(new)
    return jax.tree.map(
        lambda a, n: (momentum * a + (1.0 - momentum) * n).astype(jnp.result_type(a)), average, new
    )
