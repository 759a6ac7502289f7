"""A ResNet + FPN per-pixel feature extractor (PiCIE's backbone, Cho et al. 2021), in Flax NNX.

PiCIE's `FPNDecoder`: a 1×1 lateral convolution from each ResNet stage to `dim` (128) channels, a
top-down path that bilinearly upsamples the coarser map and adds the lateral (no normalisation or
activation, as PiCIE), ending at the first stage's resolution. Here the result is then bilinearly
upsampled to the input size, so every pixel gets a feature and labels need no resizing. The encoder
is any `build_encoder` ResNet under `encoder`, so `config.init_from` loads SimCLR/DINO/CASS weights as
for the ResNet U-Net.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from s4mi_jax.models.dtypes import at_least_float32, param_dtype_for, parse_dtype


def resize_to(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear (half-pixel centres, no antialiasing) resize of NHWC maps."""
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), "bilinear", antialias=False)


class FPN(nnx.Module):
    """`model(images, rng=None) -> (N, H, W, dim)` float32 features at the input resolution."""

    def __init__(self, encoder: nnx.Module, dim: int = 128, *, dtype, param_dtype, rngs: nnx.Rngs):
        if not hasattr(encoder, "feature_maps"):
            raise TypeError("FPN needs a ResNet encoder (feature_maps).")
        self.dtype = dtype
        self.encoder = encoder
        self.lateral = nnx.List(
            [
                nnx.Conv(c, dim, (1, 1), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for c in encoder.stage_channels
            ]
        )

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        del rng  # No dropout in ResNets.
        h, w = x.shape[1:3]
        stages = self.encoder.feature_maps(x)[1:]  # Drop the stem's map: PiCIE starts at layer1.
        y = self.lateral[-1](stages[-1])
        for lateral, skip in zip(list(self.lateral)[-2::-1], stages[-2::-1], strict=True):
            y = resize_to(y, *skip.shape[1:3]) + lateral(skip)
        return resize_to(y.astype(at_least_float32(self.dtype)), h, w)


def build_fpn(cfg: Any, in_channels: int, rngs: nnx.Rngs) -> FPN:
    """The FPN on the ResNet named by `cfg.name` (`cfg.feature_dim` channels out, default 128)."""
    from s4mi_jax.errors import ConfigError
    from s4mi_jax.models import RESNETS, build_encoder

    if cfg.name not in RESNETS:
        raise ConfigError(
            f"config.model.name={cfg.name!r}: PiCIE's FPN needs a ResNet, one of {list(RESNETS)}."
        )
    dim = int(cfg.get("feature_dim", 128))
    if dim < 1:
        raise ConfigError(f"config.model.feature_dim must be a positive integer, got {dim}")
    dtype = parse_dtype(cfg.get("dtype", "float32"))
    return FPN(
        build_encoder(cfg, in_channels, rngs),
        dim,
        dtype=dtype,
        param_dtype=param_dtype_for(dtype),
        rngs=rngs,
    )
