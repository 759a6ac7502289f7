"""SimCLR model: encoder + projection head, as one NNX module so one optimizer/state covers both."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from s4mi_jax.models.heads import ProjectionHead


class SimCLRModel(nnx.Module):
    """Returns both features (kept for linear probing / fine-tuning) and projections (for loss)."""

    def __init__(self, encoder: nnx.Module, head: ProjectionHead):
        self.encoder = encoder
        self.head = head
        self.feature_dim: int = encoder.feature_dim

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """NHWC images -> ((N, feature_dim), (N, proj_out_dim)), both float32."""
        features = self.encoder(x)
        return features, self.head(features)


def build_simclr_model(model_cfg: Any, in_channels: int, rngs: nnx.Rngs) -> SimCLRModel:
    """Build from ``config.model``: encoder fields + proj_hidden_dim/proj_out_dim/proj_layers."""
    # Imported here: the registry lives in the package __init__, which itself imports this module.
    from s4mi_jax.models import build_encoder
    from s4mi_jax.models.dtypes import param_dtype_for, parse_dtype

    encoder = build_encoder(model_cfg, in_channels, rngs)
    dtype = parse_dtype(model_cfg.get("dtype", "float32"))
    head = ProjectionHead(
        encoder.feature_dim,
        int(model_cfg.proj_hidden_dim),
        int(model_cfg.proj_out_dim),
        num_layers=int(model_cfg.get("proj_layers", 2)),
        dtype=dtype,
        param_dtype=param_dtype_for(dtype),
        rngs=rngs,
    )
    return SimCLRModel(encoder, head)
