"""Projection heads for contrastive pre-training.

SimCLR showed the contrastive loss works much better on a nonlinear projection g(h) than on the
encoder features h directly; the head is thrown away after pre-training.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from s4mi_jax.models.dtypes import at_least_float32
from s4mi_jax.models.resnet import batch_norm


class ProjectionHead(nnx.Module):
    """SimCLR MLP head: (Linear -> BN -> ReLU) x (num_layers - 1), then a final Linear.

    ``num_layers=2`` is SimCLR v1 (e.g. 2048 -> 2048 -> 128), ``3`` is SimCLR v2. The final layer
    is a plain Linear with bias and no BatchNorm (v2's last-layer BN without affine params is
    left out for simplicity). Hidden Linears drop their bias when BN follows, since BN's own bias
    makes it redundant. Output is float32 so the loss runs at full precision.

    Parameter names: ``layers[i]`` (Linear, 2-D ``kernel``, 1-D ``bias``), ``norms[i]`` (BN, 1-D
    ``scale``/``bias``); ``ndim > 1`` selects exactly the Linear kernels.
    """

    def __init__(
        self,
        in_features: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        use_bn: bool = True,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.dtype = dtype
        dims = [in_features] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers = []
        norms = []
        for i in range(num_layers):
            last = i == num_layers - 1
            layers.append(
                nnx.Linear(
                    dims[i],
                    dims[i + 1],
                    use_bias=last or not use_bn,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
            )
            if not last and use_bn:
                norms.append(batch_norm(dims[i + 1], param_dtype=param_dtype, rngs=rngs))
        self.layers = nnx.List(layers)
        self.norms = nnx.List(norms)
        self.use_bn = use_bn
        self.out_dim = out_dim

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, in_features) -> (N, out_dim) float32 projections."""
        x = jnp.asarray(x, self.dtype)
        for i in range(len(self.layers) - 1):
            x = self.layers[i](x)
            if self.use_bn:
                x = self.norms[i](x)
            x = nnx.relu(x).astype(self.dtype)
        x = self.layers[-1](x)
        return x.astype(at_least_float32(x.dtype))


class EncoderWithHead(nnx.Module):
    """An encoder and a head as one module, returning both features (kept for probing and fine-tuning)
    and head outputs (for the loss): SimCLR's model, DINO's student and teacher, CASS's two branches."""

    def __init__(self, encoder: nnx.Module, head: nnx.Module):
        self.encoder = encoder
        self.head = head
        self.feature_dim: int = encoder.feature_dim

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """NHWC images -> ((N, feature_dim), (N, head_dim)), both float32; `rng`: see build_encoder."""
        features = self.encoder(x, rng)
        return features, self.head(features)
