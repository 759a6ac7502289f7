"""U-Nets in Flax NNX: the SSL4MIS/S4MI U-Net (SSL4MIS `unet.py`) and a U-Net on any ResNet encoder.

Every segmenter is called `model(images, rng=None) -> logits (N, H, W, num_classes)`; `rng` switches
on dropout / drop-path (training), None runs deterministically (evaluation, with `model.eval()` for
BatchNorm running statistics). Passing the key keeps random state out of the module, as the encoders do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from s4mi_jax.models import remat
from s4mi_jax.models.dtypes import at_least_float32
from s4mi_jax.models.resnet import batch_norm

SSL4MIS_CHANNELS = (16, 32, 64, 128, 256)
SSL4MIS_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout (torch `nn.Dropout`), on only when `rng` is given."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _conv3(c_in: int, c_out: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        c_in,
        c_out,
        (3, 3),
        padding=((1, 1), (1, 1)),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class ConvBlock(nnx.Module):
    """[Conv3×3 → BN → LeakyReLU(0.01) → Dropout(p) → Conv3×3 → BN → LeakyReLU] (SSL4MIS)."""

    def __init__(self, c_in: int, c_out: int, p: float, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype, self.p = dtype, p
        self.conv1 = _conv3(c_in, c_out, **kw)
        self.bn1 = batch_norm(c_out, param_dtype=param_dtype, rngs=rngs)
        self.conv2 = _conv3(c_out, c_out, **kw)
        self.bn2 = batch_norm(c_out, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
        x = nnx.leaky_relu(self.bn1(self.conv1(x)), 0.01).astype(self.dtype)
        x = dropout(x, self.p, rng)
        return nnx.leaky_relu(self.bn2(self.conv2(x)), 0.01).astype(self.dtype)


class UpBlock(nnx.Module):
    """ConvTranspose(k=s=`factor`) from `c_deep` to `c_skip`, concatenate the skip, ConvBlock(p=0)."""

    def __init__(self, c_deep, c_skip, c_out, factor: int, *, dtype, param_dtype, rngs):
        self.up = nnx.ConvTranspose(
            c_deep,
            c_skip,
            (factor, factor),
            strides=(factor, factor),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.conv = ConvBlock(
            2 * c_skip, c_out, 0.0, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, deep: jax.Array, skip: jax.Array) -> jax.Array:
        return self.conv(jnp.concatenate([skip, self.up(deep).astype(skip.dtype)], axis=-1), None)


class UNet(nnx.Module):
    """SSL4MIS `UNet`: one level per entry of `channels` (default 5: [16, 32, 64, 128, 256]), encoder
    dropout per level (`dropout`, default [0.05, 0.1, 0.2, 0.3, 0.5]), max-pool down, transposed-conv up,
    Conv3×3 out. Input sides must be multiples of 2**(levels - 1)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = SSL4MIS_CHANNELS,
        dropout_rates: Sequence[float] = SSL4MIS_DROPOUT,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.remat = remat  # Recompute each block's activations in the backward pass (remat.py).
        ch = list(channels)
        self.down = nnx.List(
            [
                ConvBlock(
                    in_channels if i == 0 else ch[i - 1], ch[i], float(dropout_rates[i]), **kw
                )
                for i in range(len(ch))
            ]
        )
        self.up = nnx.List(
            [UpBlock(ch[i + 1], ch[i], ch[i], 2, **kw) for i in reversed(range(len(ch) - 1))]
        )
        self.out = _conv3(
            ch[0], num_classes, dtype=dtype, param_dtype=at_least_float32(param_dtype), rngs=rngs
        )

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        rngs = (
            list(jax.random.split(rng, len(self.down)))
            if rng is not None
            else [None] * len(self.down)
        )
        x = jnp.asarray(x, self.dtype)
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            x = remat.call(block, x, rngs[i], remat=self.remat)
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            x = remat.call(block, x, skips.pop(), remat=self.remat)
        return self.out(x).astype(at_least_float32(self.dtype))


class EncoderUNet(nnx.Module):
    """A U-Net decoder on a ResNet `encoder` (any `build_encoder` ResNet, so SimCLR/DINO/CASS weights
    load into `encoder` by `config.init_from`, as for classification): up-blocks from the deepest stage
    to the stem's resolution through every stage output, then a transposed conv back to the input size
    (the ImageNet stem halves it) and a Conv3×3 to the classes. Decoder widths = the skips' widths."""

    def __init__(self, encoder: nnx.Module, num_classes: int, *, dtype, param_dtype, rngs):
        if not hasattr(encoder, "feature_maps"):
            raise TypeError("EncoderUNet needs a ResNet encoder (feature_maps).")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.encoder = encoder
        widths = [encoder.stem_channels, *encoder.stage_channels]
        strides = [encoder.stem_stride, *encoder.stage_strides]
        self.up = nnx.List(
            [
                UpBlock(widths[i + 1], widths[i], widths[i], strides[i + 1] // strides[i], **kw)
                for i in reversed(range(len(widths) - 1))
            ]
        )
        self.final_factor = strides[0]
        self.final_up = (
            nnx.ConvTranspose(widths[0], widths[0], (2, 2), strides=(2, 2), **kw)
            if strides[0] == 2
            else None
        )
        self.out = _conv3(
            widths[0],
            num_classes,
            dtype=dtype,
            param_dtype=at_least_float32(param_dtype),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        del rng  # No dropout in ResNets.
        skips = self.encoder.feature_maps(x)
        y = skips.pop()
        for block in self.up:
            y = remat.call(block, y, skips.pop(), remat=getattr(self.encoder, "remat", False))
        if self.final_up is not None:
            y = nnx.leaky_relu(self.final_up(y), 0.01)
        return self.out(y).astype(at_least_float32(self.dtype))
