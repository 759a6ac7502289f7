"""DINO's networks: student and EMA teacher (encoder + DINO head) and the output centre, as one module.

The teacher's weights are `nnx.Param`s like the student's, so the two share one structure and the EMA is
a tree map; the trainer keeps them out of the optimizer by splitting with `TRAINABLE` (the student's
parameters only), which puts the teacher and the `Center` in `TrainState.model_state` — checkpointed,
sharded and restored with everything else, never differentiated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from s4mi_jax.losses.contrastive import l2_normalize
from s4mi_jax.models.dtypes import at_least_float32, param_dtype_for, parse_dtype
from s4mi_jax.models.heads import EncoderWithHead

TRAINABLE = nnx.All(nnx.Param, nnx.PathContains("student"))

_trunc = nnx.initializers.truncated_normal(stddev=0.02)


class Center(nnx.Variable):
    """DINO's running centre of the teacher outputs: state, not a parameter."""


class WeightNormLinear(nnx.Module):
    """Bias-free Linear with weight normalisation, w_k = g_k · v_k / ||v_k|| (torch `weight_norm`).

    `norm_last_layer=True` (official default) fixes g = 1, so only directions are learned; otherwise g is
    a parameter starting at 1.
    """

    def __init__(self, d_in: int, d_out: int, norm_last_layer: bool, param_dtype: Any, rngs):
        self.dtype = at_least_float32(param_dtype)  # Normalised in full precision.
        self.kernel = nnx.Param(_trunc(rngs.params(), (d_in, d_out), param_dtype))
        self.scale = None if norm_last_layer else nnx.Param(jnp.ones((d_out,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        v = self.kernel[...].astype(self.dtype)
        w = v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=0, keepdims=True), 1e-24))
        if self.scale is not None:
            w = w * self.scale[...]
        return x.astype(self.dtype) @ w


class DinoHead(nnx.Module):
    """MLP (GELU; `num_layers` Linears ending in the bottleneck) -> L2-normalise -> WeightNormLinear(K)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        dims = [in_dim] + [hidden_dim] * (max(num_layers, 1) - 1) + [bottleneck_dim]
        self.mlp = nnx.List(
            [
                nnx.Linear(
                    a, b, kernel_init=_trunc, dtype=dtype, param_dtype=param_dtype, rngs=rngs
                )
                for a, b in zip(dims[:-1], dims[1:], strict=True)
            ]
        )
        self.last_layer = WeightNormLinear(
            bottleneck_dim, out_dim, norm_last_layer, param_dtype, rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.mlp):
            x = layer(x)
            if i < len(self.mlp) - 1:
                x = nnx.gelu(x, approximate=False)
        return self.last_layer(l2_normalize(x))


class DinoModel(nnx.Module):
    def __init__(
        self, student: EncoderWithHead, teacher: EncoderWithHead, out_dim: int, dtype: Any
    ):
        self.student = student
        self.teacher = teacher
        self.center = Center(jnp.zeros((out_dim,), at_least_float32(dtype)))


def build_dino_model(model_cfg: Any, in_channels: int, rngs: nnx.Rngs) -> DinoModel:
    """Student and teacher from `config.model` (encoder fields + head_*), the teacher a copy of the
    student (official DINO loads the student's weights into the teacher at start)."""
    from s4mi_jax.models import build_encoder

    dtype = parse_dtype(model_cfg.get("dtype", "float32"))

    def net(rngs: nnx.Rngs) -> EncoderWithHead:
        encoder = build_encoder(model_cfg, in_channels, rngs)
        head = DinoHead(
            encoder.feature_dim,
            int(model_cfg.head_out_dim),
            hidden_dim=int(model_cfg.head_hidden_dim),
            bottleneck_dim=int(model_cfg.head_bottleneck_dim),
            num_layers=int(model_cfg.get("head_layers", 3)),
            norm_last_layer=bool(model_cfg.get("norm_last_layer", True)),
            dtype=dtype,
            param_dtype=param_dtype_for(dtype),
            rngs=rngs,
        )
        return EncoderWithHead(encoder, head)

    student = net(rngs)
    teacher = net(nnx.Rngs(0))
    nnx.update(teacher, nnx.state(student))
    return DinoModel(student, teacher, int(model_cfg.head_out_dim), dtype)
