"""Small numerical primitives shared by models/ and losses/ (both import this; it imports neither):
`l2_normalize`, and PiCIE's view geometry (`random_boxes`, `crop_flip`).

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


def random_boxes(
    rng: jax.Array, n: int, size: int, scale: tuple[float, float]
) -> tuple[jax.Array, jax.Array]:
    """(boxes (n, 3) = [y0, x0, side] in pixels, flips (n,) bool): square crops whose area is a
    fraction in `scale` of the image, placed uniformly, and a horizontal flip with p=0.5."""
    k_area, k_y, k_x, k_flip = jax.random.split(rng, 4)
    side = jnp.sqrt(jax.random.uniform(k_area, (n,), minval=scale[0], maxval=scale[1])) * size
    y0 = jax.random.uniform(k_y, (n,)) * (size - side)
    x0 = jax.random.uniform(k_x, (n,)) * (size - side)
    return jnp.stack([y0, x0, side], -1), jax.random.bernoulli(k_flip, 0.5, (n,))


def _interpolation(start: jax.Array, side: jax.Array, n: int) -> jax.Array:
    """(n, n) bilinear weights: output i samples input coordinate start + (i + ½)·side/n − ½
    (half-pixel centres, as torch `interpolate(align_corners=False)`), clamped to the edge pixels."""
    coord = jnp.clip(start + (jnp.arange(n) + 0.5) * side / n - 0.5, 0.0, n - 1.0)
    lo = jnp.floor(coord)
    frac = (coord - lo)[:, None]
    src = jnp.arange(n)[None, :]
    hi = jnp.minimum(lo + 1, n - 1)
    return (1 - frac) * (src == lo[:, None]) + frac * (src == hi[:, None])


def crop_flip(x: jax.Array, boxes: jax.Array, flips: jax.Array) -> jax.Array:
    """T on NHWC maps: each box (y0, x0, side) bilinearly resized to the full (H, W), then flipped
    left-right where `flips`. Two small interpolation matrices per image (rows, columns) applied
    by one einsum: cheap to trace and to differentiate, exact bilinear sampling."""
    h, w = x.shape[1:3]
    wy = jax.vmap(_interpolation, (0, 0, None))(boxes[:, 0], boxes[:, 2], h)
    wx = jax.vmap(_interpolation, (0, 0, None))(boxes[:, 1], boxes[:, 2], w)
    wx = jnp.where(flips[:, None, None], wx[:, ::-1], wx)
    return jnp.einsum("nih,nhwc,njw->nijc", wy.astype(x.dtype), x, wx.astype(x.dtype))
