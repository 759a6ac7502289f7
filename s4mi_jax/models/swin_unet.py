"""Swin-UNet (Cao et al. 2021; `SwinTransformerSys` as used by SSL4MIS and S4MI) in NNX.

Encoder: patch embedding (conv, patch `patch_size`) + LayerNorm, then stages of Swin blocks (window
attention with relative position bias, shifted windows every second block) with patch merging between
stages; bottleneck LayerNorm. Decoder: patch expanding (×2) stages that mirror the encoder's depths,
each after concatenating the encoder's same-resolution tokens and a Linear(2d -> d); LayerNorm; final
patch expanding ×`patch_size` and a 1×1 conv (no bias) to the classes. As in the reference, a stage whose
resolution is not larger than the window uses one window of the whole resolution and no shift.
S4MI's "lite" Swin-T: patch 4, embed 96, depths [2,2,2,2], heads [3,6,12,24], window 7, MLP ratio 4,
drop-path 0.2. (ImageNet initialisation needs ported timm weights; not shipped.)

Called `model(images, rng=None) -> logits (N, H, W, C)`; `rng` switches drop-path on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from s4mi_jax.models.dtypes import at_least_float32
from s4mi_jax.models.vit import Mlp, _linear, _trunc, drop_path


def _norm(dim: int, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        dim, epsilon=1e-5, dtype=at_least_float32(param_dtype), param_dtype=param_dtype, rngs=rngs
    )


def _dense(d_in, d_out, *, dtype, param_dtype, rngs, bias: bool = True) -> nnx.Linear:
    if bias:
        return _linear(d_in, d_out, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=False,
        kernel_init=_trunc,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


@functools.cache
def _relative_index(window: int) -> np.ndarray:
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(
        2, -1
    )
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


@functools.cache
def _shift_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
    """(windows, window², window²) additive mask: -100 between tokens from different regions."""
    img = np.zeros((h, w), np.int32)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = einops.rearrange(img, "(a p) (b q) -> (a b) (p q)", p=window, q=window)
    return np.where(win[:, :, None] != win[:, None, :], -100.0, 0.0).astype(np.float32)


class WindowAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, window: int, *, dtype, param_dtype, rngs):
        self.heads, self.window = heads, window
        self.qkv = _dense(dim, 3 * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj = _dense(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bias_table = nnx.Param(
            _trunc(rngs.params(), ((2 * window - 1) ** 2, heads), param_dtype)
        )

    def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
        b, t, d = x.shape  # b = batch × windows, t = window².
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // self.heads).astype(q.dtype)
        bias = self.bias_table[...][_relative_index(self.window)]  # (t, t, heads)
        logits = logits + jnp.transpose(bias, (2, 0, 1))[None].astype(logits.dtype)
        if mask is not None:
            nw = mask.shape[0]
            logits = (
                logits.reshape(b // nw, nw, self.heads, t, t)
                + jnp.asarray(mask, logits.dtype)[None, :, None]
            )
            logits = logits.reshape(b, self.heads, t, t)
        probs = jax.nn.softmax(logits.astype(at_least_float32(logits.dtype)), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
        return self.proj(out.reshape(b, t, d))


class SwinBlock(nnx.Module):
    def __init__(self, dim, heads, resolution, window, shift, mlp_ratio, drop_path_rate, **kw):
        if min(resolution) <= window:  # One window covers the stage: no shift (reference rule).
            window, shift = min(resolution), 0
        if resolution[0] % window or resolution[1] % window:
            raise ValueError(
                f"Swin-UNet: a stage of {resolution[0]}x{resolution[1]} tokens is not a multiple of "
                f"window_size {window}; choose image_size / (patch_size · 2^stage) divisible by it."
            )
        self.window, self.shift, self.drop_path_rate = window, shift, drop_path_rate
        self.resolution = tuple(resolution)
        self.norm1 = _norm(dim, kw["param_dtype"], kw["rngs"])
        self.attn = WindowAttention(dim, heads, window, **kw)
        self.norm2 = _norm(dim, kw["param_dtype"], kw["rngs"])
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)
        self.dtype = kw["dtype"]

    def __call__(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
        h, w = self.resolution
        n, _, _, d = x.shape
        ws, s = self.window, self.shift
        r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
        y = self.norm1(x).astype(self.dtype)
        if s:
            y = jnp.roll(y, (-s, -s), axis=(1, 2))
        y = einops.rearrange(y, "n (a p) (b q) d -> (n a b) (p q) d", p=ws, q=ws)
        y = self.attn(y, _shift_mask(h, w, ws, s) if s else None)
        y = einops.rearrange(y, "(n a b) (p q) d -> n (a p) (b q) d", n=n, a=h // ws, p=ws, q=ws)
        if s:
            y = jnp.roll(y, (s, s), axis=(1, 2))
        x = x + drop_path(y, self.drop_path_rate, r1)
        return x + drop_path(self.mlp(self.norm2(x).astype(self.dtype)), self.drop_path_rate, r2)


class PatchMerging(nnx.Module):
    """2×2 neighbours concatenated (4d), LayerNorm, Linear(4d -> 2d, no bias)."""

    def __init__(self, dim, **kw):
        self.norm = _norm(4 * dim, kw["param_dtype"], kw["rngs"])
        self.reduction = _dense(4 * dim, 2 * dim, bias=False, **kw)

    def __call__(self, x):
        x0, x1 = x[:, 0::2, 0::2], x[:, 1::2, 0::2]
        x2, x3 = x[:, 0::2, 1::2], x[:, 1::2, 1::2]
        return self.reduction(self.norm(jnp.concatenate([x0, x1, x2, x3], -1)).astype(x.dtype))


class PatchExpand(nnx.Module):
    """Linear(d -> factor²·d/`shrink`) then pixel shuffle ×factor, LayerNorm (×2: d -> d/2; ×4: d)."""

    def __init__(self, dim, factor: int, out_dim: int, **kw):
        self.factor, self.out_dim = factor, out_dim
        self.expand = _dense(dim, factor * factor * out_dim, bias=False, **kw)
        self.norm = _norm(out_dim, kw["param_dtype"], kw["rngs"])

    def __call__(self, x):
        x = self.expand(x)
        f = self.factor
        x = einops.rearrange(x, "n h w (p q c) -> n (h p) (w q) c", p=f, q=f, c=self.out_dim)
        return self.norm(x).astype(x.dtype)


class SwinUNet(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        image_size: int,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        n = len(depths)
        grid = image_size // patch_size
        if image_size % patch_size or grid % 2 ** (n - 1):
            raise ValueError(
                f"Swin-UNet: image_size {image_size} must be a multiple of patch_size {patch_size} "
                f"x 2^{n - 1}."
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.patch_embed = nnx.Conv(
            in_channels,
            embed_dim,
            (patch_size, patch_size),
            strides=(patch_size, patch_size),
            padding="VALID",
            **kw,
        )
        self.embed_norm = _norm(embed_dim, param_dtype, rngs)
        dpr = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = np.cumsum([0, *depths]).tolist()

        def stage(i):
            dim, res = embed_dim * 2**i, grid // 2**i
            return nnx.List(
                [
                    SwinBlock(
                        dim,
                        num_heads[i],
                        (res, res),
                        window_size,
                        0 if j % 2 == 0 else window_size // 2,
                        mlp_ratio,
                        dpr[starts[i] + j],
                        **kw,
                    )
                    for j in range(depths[i])
                ]
            )

        self.down_stages = nnx.List([stage(i) for i in range(n)])
        self.merges = nnx.List([PatchMerging(embed_dim * 2**i, **kw) for i in range(n - 1)])
        self.norm = _norm(embed_dim * 2 ** (n - 1), param_dtype, rngs)
        # Decoder: level i (deep to shallow) expands embed·2^i -> embed·2^(i-1).
        self.expands = nnx.List(
            [
                PatchExpand(embed_dim * 2**i, 2, embed_dim * 2 ** (i - 1), **kw)
                for i in range(n - 1, 0, -1)
            ]
        )
        self.concat_back = nnx.List(
            [_dense(2 * embed_dim * 2**i, embed_dim * 2**i, **kw) for i in range(n - 2, -1, -1)]
        )
        self.up_stages = nnx.List([stage(i) for i in range(n - 2, -1, -1)])
        self.norm_up = _norm(embed_dim, param_dtype, rngs)
        self.final_expand = PatchExpand(embed_dim, patch_size, embed_dim, **kw)
        self.out = nnx.Conv(
            embed_dim,
            num_classes,
            (1, 1),
            use_bias=False,
            dtype=dtype,
            param_dtype=at_least_float32(param_dtype),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        x = jnp.asarray(x, self.dtype)
        blocks = [b for s in (*self.down_stages, *self.up_stages) for b in s]
        keys = list(jax.random.split(rng, len(blocks))) if rng is not None else [None] * len(blocks)
        keys = iter(keys)
        x = self.embed_norm(self.patch_embed(x)).astype(self.dtype)
        skips = []
        for i, blocks_i in enumerate(self.down_stages):
            skips.append(x)
            for block in blocks_i:
                x = block(x, next(keys))
            if i < len(self.merges):
                x = self.merges[i](x)
        x = self.norm(x).astype(self.dtype)
        skips.pop()  # The bottleneck's own input is not a skip (reference: x_downsample[3 - inx]).
        for expand, back, blocks_i in zip(
            self.expands, self.concat_back, self.up_stages, strict=True
        ):
            x = expand(x)
            x = back(jnp.concatenate([x, skips.pop()], axis=-1))
            for block in blocks_i:
                x = block(x, next(keys))
        x = self.norm_up(x).astype(self.dtype)
        return self.out(self.final_expand(x)).astype(at_least_float32(self.dtype))
