"""Model registry: maps ``config.model`` to NNX modules so trainers never name architectures."""

from __future__ import annotations

from typing import Any

from flax import nnx

from s4mi_jax.errors import ConfigError
from s4mi_jax.models.dtypes import DTYPES, param_dtype_for, parse_dtype
from s4mi_jax.models.heads import ProjectionHead
from s4mi_jax.models.resnet import STEMS, ResNet, resnet18, resnet50
from s4mi_jax.models.simclr import SimCLRModel, build_simclr_model

ENCODERS = {"resnet18": resnet18, "resnet50": resnet50}


def build_encoder(cfg: Any, in_channels: int, rngs: nnx.Rngs) -> nnx.Module:
    """Build the encoder named by ``config.model.name``; it exposes ``feature_dim``."""
    name = cfg.name
    if name not in ENCODERS:
        raise ConfigError(
            f"config.model.name={name!r} is not a known encoder; choose one of {sorted(ENCODERS)}"
        )
    stem = cfg.get("stem", "imagenet")
    if stem not in STEMS:
        raise ConfigError(f"config.model.stem={stem!r} is not supported; choose one of {STEMS}")
    width = int(cfg.get("width", 64))
    if width < 1:
        raise ConfigError(f"config.model.width must be a positive integer, got {width}")
    return ENCODERS[name](
        in_channels=in_channels,
        width=width,
        stem=stem,
        dtype=(dtype := parse_dtype(cfg.get("dtype", "float32"))),
        param_dtype=param_dtype_for(dtype),
        rngs=rngs,
    )


__all__ = [
    "DTYPES",
    "ENCODERS",
    "ProjectionHead",
    "ResNet",
    "SimCLRModel",
    "build_encoder",
    "build_simclr_model",
    "parse_dtype",
    "resnet18",
    "resnet50",
]
