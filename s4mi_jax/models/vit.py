"""Vision Transformer encoders (Dosovitskiy et al. 2021) in Flax NNX, with what DINO and CASS need.

* Returns the final-LayerNorm CLS token (the representation DINO/CASS probe and fine-tune), float32.
* Position embeddings are learned for the ``image_size`` grid and bicubically interpolated for any
  other input size, so DINO's small local crops go through the same network as its global crops.
* Stochastic depth (drop-path) is on only when the caller passes ``rng`` (training); without it the
  network is deterministic. Passing the key explicitly keeps random state out of the module, so the
  train step stays a pure function of ``(state, batch, rng)``.
* Layout mirrors timm's ``VisionTransformer`` (``patch_embed``, ``cls_token``, ``pos_embed``,
  ``blocks[i].{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``), so ImageNet weights
  can be mapped by name. Kernels are the only ``ndim > 1`` parameters besides the CLS token and
  position embedding, which ``optim.decay_mask`` therefore decays; timm/DINO exclude them, a
  negligible difference at the default decay that we accept for one simple rule.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from s4mi_jax.models import remat
from s4mi_jax.models.dtypes import at_least_float32

# (embed_dim, depth, num_heads): the DeiT/timm presets.
PRESETS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}

_trunc = nnx.initializers.truncated_normal(stddev=0.02)


def _linear(d_in: int, d_out: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in, d_out, kernel_init=_trunc, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )


def _layer_norm(dim: int, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Normalisation statistics in (at least) float32 even under bf16 compute.
    return nnx.LayerNorm(
        dim, epsilon=1e-6, dtype=at_least_float32(param_dtype), param_dtype=param_dtype, rngs=rngs
    )


def drop_path(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Stochastic depth: zero the whole residual branch of an example with probability `rate`."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, dim: int, num_heads: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = _linear(dim, 3 * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj = _linear(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, d = x.shape
        head_dim = d // self.num_heads
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        # Written out rather than jax.nn.dot_product_attention, whose XLA path takes the softmax in
        # float32 even for float64 inputs; here it runs in at least float32 and in float64 for tests.
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
        probs = jax.nn.softmax(logits.astype(at_least_float32(logits.dtype)), axis=-1)
        out = jnp.einsum("nhqk,nkhd->nqhd", probs.astype(v.dtype), v)
        return self.proj(out.reshape(n, t, d))


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        self.fc1 = _linear(dim, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = _linear(hidden, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # Exact (erf) GELU, as torch's nn.GELU default used by timm.
        return self.fc2(nnx.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    """Pre-norm transformer block with drop-path on both residual branches."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path_rate: float,
        *,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = _layer_norm(dim, param_dtype, rngs)
        self.attn = Attention(dim, num_heads, **kw)
        self.norm2 = _layer_norm(dim, param_dtype, rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)
        self.drop_path_rate = drop_path_rate
        self.dtype = dtype

    def __call__(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
        r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
        x = x + drop_path(self.attn(self.norm1(x).astype(self.dtype)), self.drop_path_rate, r1)
        return x + drop_path(self.mlp(self.norm2(x).astype(self.dtype)), self.drop_path_rate, r2)


class ViT(nnx.Module):
    """ViT encoder: images (N, H, W, C) -> CLS features (N, embed_dim) float32."""

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        self.patch_size = patch_size
        self.remat = remat  # Recompute each block's activations in the backward pass (remat.py).
        self.grid = image_size // patch_size
        self.dtype = dtype
        self.feature_dim = embed_dim
        self.patch_embed = nnx.Conv(
            in_channels,
            embed_dim,
            kernel_size=(patch_size, patch_size),
            strides=(patch_size, patch_size),
            padding="VALID",
            kernel_init=nnx.initializers.lecun_normal(),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.cls_token = nnx.Param(_trunc(rngs.params(), (1, 1, embed_dim), param_dtype))
        self.pos_embed = nnx.Param(
            _trunc(rngs.params(), (1, 1 + self.grid**2, embed_dim), param_dtype)
        )
        # Linearly increasing drop-path rate over depth, as DeiT/DINO.
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nnx.List(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    r,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for r in rates
            ]
        )
        self.norm = _layer_norm(embed_dim, param_dtype, rngs)

    def position_embedding(self, h: int, w: int) -> jax.Array:
        """(1, 1 + h*w, D): the learned grid, bicubically resized when the token grid differs."""
        pos = self.pos_embed[...]
        if (h, w) == (self.grid, self.grid):
            return pos
        cls, grid = pos[:, :1], pos[:, 1:].reshape(1, self.grid, self.grid, -1)
        grid = jax.image.resize(grid, (1, h, w, grid.shape[-1]), "bicubic")
        return jnp.concatenate([cls, grid.reshape(1, h * w, -1)], axis=1)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """`rng` turns on drop-path (training); None runs deterministically."""
        if x.shape[1] % self.patch_size or x.shape[2] % self.patch_size:
            raise ValueError(
                f"input {x.shape[1]}x{x.shape[2]} is not a multiple of patch_size {self.patch_size}"
            )
        x = self.patch_embed(jnp.asarray(x, self.dtype))
        n, h, w, d = x.shape
        cls = jnp.broadcast_to(self.cls_token[...], (n, 1, d)).astype(x.dtype)
        x = jnp.concatenate([cls, x.reshape(n, h * w, d)], axis=1)
        x = x + self.position_embedding(h, w).astype(x.dtype)
        keys = (
            jax.random.split(rng, len(self.blocks))
            if rng is not None
            else [None] * len(self.blocks)
        )
        for block, key in zip(self.blocks, keys, strict=True):
            x = remat.call(block, x, key, remat=self.remat)
        out = self.norm(x[:, 0])
        return out.astype(at_least_float32(out.dtype))
