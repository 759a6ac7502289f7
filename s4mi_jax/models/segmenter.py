"""Segmentation model registry (`config.model` -> NNX module), the DEDL autoencoder post-processing
head and the cross-teaching pair.

`config.model.name`: "unet" (SSL4MIS U-Net, channels `width`·[1, 2, 4, 8, 16][:levels], width 16 = the
reference), "swin_unet" (Swin-UNet), or a classification encoder name ("resnet18", "resnet50"): a
U-Net decoder on that encoder, whose `encoder` sub-tree loads SSL-pretrained weights
(`config.init_from`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from s4mi_jax.errors import ConfigError
from s4mi_jax.models.dtypes import param_dtype_for, parse_dtype
from s4mi_jax.models.swin_unet import SwinUNet
from s4mi_jax.models.unet import SSL4MIS_DROPOUT, EncoderUNet, UNet

SEGMENTERS = ("unet", "swin_unet")
BRANCHES = ("cnn", "transformer")


def build_segmenter(cfg: Any, in_channels: int, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    from s4mi_jax.models import RESNETS, build_encoder

    dtype = parse_dtype(cfg.get("dtype", "float32"))
    kw = dict(dtype=dtype, param_dtype=param_dtype_for(dtype), rngs=rngs)
    if cfg.name == "unet":
        w = int(cfg.width)
        if w < 1:
            raise ConfigError(f"config.model.width must be a positive integer, got {w}")
        rates = tuple(cfg.dropout) if cfg.get("dropout") is not None else SSL4MIS_DROPOUT
        levels = int(cfg.get("levels", 5))
        if not 2 <= levels <= len(rates):
            raise ConfigError(
                f"config.model.levels={levels}: need 2 <= levels <= len(config.model.dropout)="
                f"{len(rates)}"
            )
        channels = tuple(w * 2**i for i in range(levels))
        return UNet(
            in_channels, num_classes, channels, rates[:levels], remat=bool(cfg.get("remat")), **kw
        )
    if cfg.name == "swin_unet":
        try:
            return SwinUNet(
                in_channels,
                num_classes,
                image_size=int(cfg.image_size),
                patch_size=int(cfg.patch_size),
                embed_dim=int(cfg.embed_dim),
                depths=tuple(cfg.depths),
                num_heads=tuple(cfg.swin_heads),
                window_size=int(cfg.window_size),
                mlp_ratio=float(cfg.mlp_ratio),
                drop_path_rate=float(cfg.drop_path),
                **kw,
            )
        except ValueError as e:
            raise ConfigError(f"config.model: {e}") from None
    if cfg.name in RESNETS:
        return EncoderUNet(build_encoder(cfg, in_channels, rngs), num_classes, **kw)
    raise ConfigError(
        f"config.model.name={cfg.name!r} is not a segmenter; choose one of "
        f"{[*SEGMENTERS, *RESNETS]} (a ResNet name = U-Net on that encoder)."
    )


class AutoencoderPostProcessing(nnx.Module):
    """DEDL's APP (autoencoder post-processing, `Segmentation using APP.ipynb`): Linear layers along the width axis of the segmenter's logits,
    W -> `expand`·W -> hidden... -> W, ReLU after every layer (the last included, as written).
    Used in training only: L = CE_w(U(x), y) + CE_w(APP(U(x)), y)."""

    def __init__(self, width: int, expand: int, hidden: tuple[int, ...], *, rngs: nnx.Rngs):
        dims = [width, expand * width, *hidden, width]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )

    def __call__(self, logits: jax.Array) -> jax.Array:
        x = jnp.swapaxes(logits, 2, 3)  # (N, H, C, W): Linear over W.
        for layer in self.layers:
            x = nnx.relu(layer(x))
        return jnp.swapaxes(x, 2, 3)


def build_supervised(
    cfg: Any, app_cfg: Any, image_size: int, in_channels: int, num_classes: int, rngs
):
    """The segmenter; with `app_cfg.enabled`, an `app` attribute holding the APP head beside it
    (top-level, so the segmenter's `encoder` sub-tree keeps its place for `init_from`)."""
    model = build_segmenter(cfg, in_channels, num_classes, rngs)
    if app_cfg.enabled:
        model.app = AutoencoderPostProcessing(
            image_size, int(app_cfg.expand), tuple(app_cfg.hidden), rngs=rngs
        )
    return model


class CrossTeaching(nnx.Module):
    """S4MI's two networks (a CNN and a transformer) in one module: one train state, one optimizer
    state per branch (`optim.per_branch`), as CASS does."""

    def __init__(self, cnn: nnx.Module, transformer: nnx.Module):
        self.cnn = cnn
        self.transformer = transformer


def build_cross_teaching(model_cfg: Any, in_channels: int, num_classes: int, rngs) -> CrossTeaching:
    return CrossTeaching(
        build_segmenter(model_cfg.cnn, in_channels, num_classes, rngs),
        build_segmenter(model_cfg.transformer, in_channels, num_classes, rngs),
    )
