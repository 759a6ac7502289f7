"""An encoder with a linear classification head: the model of supervised training, linear probing and
fine-tuning. The encoder sub-tree has the same names as in `EncoderWithHead`, so pretrained weights transfer by
copying the `encoder` sub-state."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from s4mi_jax.models.dtypes import at_least_float32


class Classifier(nnx.Module):
    def __init__(self, encoder: nnx.Module, num_classes: int, *, param_dtype: Any, rngs: nnx.Rngs):
        self.encoder = encoder
        self.head = nnx.Linear(
            encoder.feature_dim,
            num_classes,
            kernel_init=nnx.initializers.zeros,  # Zero head: the first step does not scramble features.
            param_dtype=at_least_float32(param_dtype),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Images -> logits (float32 or float64)."""
        return self.head(self.encoder(x))


def build_classifier(
    model_cfg: Any, in_channels: int, num_classes: int, rngs: nnx.Rngs
) -> Classifier:
    from s4mi_jax.models import build_encoder
    from s4mi_jax.models.dtypes import param_dtype_for, parse_dtype

    encoder = build_encoder(model_cfg, in_channels, rngs)
    dtype = parse_dtype(model_cfg.get("dtype", "float32"))
    return Classifier(encoder, num_classes, param_dtype=param_dtype_for(dtype), rngs=rngs)
