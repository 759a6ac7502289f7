"""SimCLR model: encoder + projection head, as one NNX module so one optimizer/state covers both."""

from __future__ import annotations

from typing import Any

from flax import nnx

from s4mi_jax.models.heads import EncoderWithHead, ProjectionHead


def build_simclr_model(model_cfg: Any, in_channels: int, rngs: nnx.Rngs) -> EncoderWithHead:
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
    return EncoderWithHead(encoder, head)
