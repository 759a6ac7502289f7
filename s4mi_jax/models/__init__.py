"""Model registry: maps ``config.model`` to NNX modules so trainers never name architectures.

Every encoder is called as ``encoder(images, rng=None) -> (N, feature_dim)`` float32 features;
``rng`` switches on stochastic regularisation (ViT drop-path) during training.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from s4mi_jax.errors import ConfigError
from s4mi_jax.models.dtypes import DTYPES, param_dtype_for, parse_dtype
from s4mi_jax.models.heads import EncoderWithHead, ProjectionHead
from s4mi_jax.models.resnet import STEMS, ResNet, resnet18, resnet50
from s4mi_jax.models.simclr import build_simclr_model
from s4mi_jax.models.vit import PRESETS as VIT_PRESETS
from s4mi_jax.models.vit import ViT

RESNETS = {"resnet18": resnet18, "resnet50": resnet50}
ENCODERS = (*RESNETS, "vit", *VIT_PRESETS)


def _positive(cfg: Any, key: str, default: Any) -> int:
    value = int(cfg.get(key, default) if default is not None else cfg[key])
    if value < 1:
        raise ConfigError(f"config.model.{key} must be a positive integer, got {value}")
    return value


def _build_vit(cfg: Any, in_channels: int, dtype: Any, rngs: nnx.Rngs) -> ViT:
    """`name="vit"` takes embed_dim/depth/num_heads from the config; presets fix them."""
    if cfg.name in VIT_PRESETS:
        embed_dim, depth, num_heads = VIT_PRESETS[cfg.name]
    else:
        missing = [k for k in ("embed_dim", "depth", "num_heads") if cfg.get(k) is None]
        if missing:
            raise ConfigError(f"config.model.name='vit' needs config.model.{missing[0]}")
        embed_dim, depth, num_heads = (
            _positive(cfg, "embed_dim", None),
            _positive(cfg, "depth", None),
            _positive(cfg, "num_heads", None),
        )
    patch = _positive(cfg, "patch_size", 16)
    image_size = _positive(cfg, "image_size", 224)
    if image_size % patch or embed_dim % num_heads:
        raise ConfigError(
            f"config.model: image_size {image_size} must be a multiple of patch_size {patch} and "
            f"embed_dim {embed_dim} of num_heads {num_heads}"
        )
    return ViT(
        in_channels=in_channels,
        image_size=image_size,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=float(cfg.get("mlp_ratio", 4.0)),
        drop_path_rate=float(cfg.get("drop_path", 0.0)),
        dtype=dtype,
        param_dtype=param_dtype_for(dtype),
        remat=bool(cfg.get("remat", False)),
        rngs=rngs,
    )


def build_encoder(cfg: Any, in_channels: int, rngs: nnx.Rngs) -> nnx.Module:
    """Build the encoder named by ``config.model.name``; it exposes ``feature_dim``."""
    name = cfg.name
    if name not in ENCODERS:
        raise ConfigError(
            f"config.model.name={name!r} is not a known encoder; choose one of {list(ENCODERS)}"
        )
    dtype = parse_dtype(cfg.get("dtype", "float32"))
    if name not in RESNETS:
        return _build_vit(cfg, in_channels, dtype, rngs)
    stem = cfg.get("stem", "imagenet")
    if stem not in STEMS:
        raise ConfigError(f"config.model.stem={stem!r} is not supported; choose one of {STEMS}")
    return RESNETS[name](
        in_channels=in_channels,
        width=_positive(cfg, "width", 64),
        stem=stem,
        dtype=dtype,
        param_dtype=param_dtype_for(dtype),
        remat=bool(cfg.get("remat", False)),
        rngs=rngs,
    )


__all__ = [
    "DTYPES",
    "ENCODERS",
    "ProjectionHead",
    "ResNet",
    "EncoderWithHead",
    "ViT",
    "build_encoder",
    "build_simclr_model",
    "parse_dtype",
    "resnet18",
    "resnet50",
]
