"""CASS's two networks (Singh et al., arXiv 2206.04170; its `CASS.ipynb`): a CNN and a ViT, each with its own head, in
one module so one train state holds both (each branch still gets its own optimizer)."""

from __future__ import annotations

from typing import Any

from flax import nnx

from s4mi_jax.models.dtypes import param_dtype_for, parse_dtype
from s4mi_jax.models.heads import EncoderWithHead, ProjectionHead

BRANCHES = ("cnn", "vit")


class CASSModel(nnx.Module):
    def __init__(self, cnn: EncoderWithHead, vit: EncoderWithHead):
        self.cnn = cnn
        self.vit = vit


def build_cass_model(model_cfg: Any, in_channels: int, rngs: nnx.Rngs) -> CASSModel:
    """`config.model.cnn` / `.vit`: encoder fields; `.head`: the outputs compared by the loss.

    `head.raw_logits=False` (default): a SimCLR-style MLP projection head per branch (`layers`,
    `hidden_dim`, `out_dim`). `True`: the reference code's comparison of the networks' own classifier
    outputs, one Linear(features -> `logit_dim`) per branch (timm's 1000-way ImageNet `fc`/`head`).
    """
    from s4mi_jax.models import build_encoder

    head_cfg = model_cfg.head
    branches = {}
    for name in BRANCHES:
        cfg = model_cfg[name]
        encoder = build_encoder(cfg, in_channels, rngs)
        dtype = parse_dtype(cfg.get("dtype", "float32"))
        raw = bool(head_cfg.raw_logits)
        head = ProjectionHead(
            encoder.feature_dim,
            int(head_cfg.hidden_dim),
            int(head_cfg.logit_dim if raw else head_cfg.out_dim),
            num_layers=1 if raw else int(head_cfg.layers),
            dtype=dtype,
            param_dtype=param_dtype_for(dtype),
            rngs=rngs,
        )
        branches[name] = EncoderWithHead(encoder, head)
    return CASSModel(**branches)
