"""DINO's networks: student and EMA teacher (encoder + DINO head) and the output centre, as one module.

The teacher's weights are `nnx.Param`s like the student's, so the two share one structure and the EMA is
a tree map; the trainer keeps them out of the optimizer by splitting with `TRAINABLE` (the student's
parameters only), which puts the teacher and the `Center` in `TrainState.model_state` — checkpointed,
sharded and restored with everything else, never differentiated.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from s4mi_jax.errors import ConfigError
from s4mi_jax.models.dtypes import at_least_float32, param_dtype_for, parse_dtype
from s4mi_jax.models.heads import EncoderWithHead
from s4mi_jax.models.resnet import batch_norm
from s4mi_jax.ops import l2_normalize

TRAINABLE = nnx.All(nnx.Param, nnx.PathContains("student"))

# Official DINO initialises the head's MLP with trunc_normal_(std=0.02) (cut at ±2 in absolute value,
# i.e. a plain normal at this std, which is what we draw), chosen for its widths:
# in_dim (384 for ViT-S, 768 ViT-B, 2048 ResNet-50) -> 2048 -> 2048 -> 256. A Linear's signal gain is
# about std·sqrt(fan_in), so at those widths each layer keeps 0.4-0.9 of its input's scale; at width 32
# the same std keeps 0.11 and a 3-layer head passes ~1e-4 of the per-image signal: after a few Adam
# steps on the biases the bottleneck is a constant, L2-normalisation maps every image to one point and
# the teacher goes uniform (collapse). So each layer's std is raised until its gain is at least the
# official head's at the same position (first layer: ViT-S's 384 inputs; later: the 2048 hidden units).
OFFICIAL_STD = 0.02
OFFICIAL_FAN_IN = (384, 2048)  # (first layer, later layers)


HEAD_INITS = ("fan_in", "fixed")


def mlp_init_std(layer: int, fan_in: int, head_init: str = "fan_in") -> float:
    """`fan_in`: 0.02 at the official widths (and wider), 0.02·sqrt(n_official / fan_in) below them.
    `fixed`: 0.02 at every width (the official value; collapses narrow heads, kept for ablations)."""
    if head_init not in HEAD_INITS:
        raise ConfigError(
            f"config.model.head_init={head_init!r}: expected one of {', '.join(HEAD_INITS)}."
        )
    if head_init == "fixed":
        return OFFICIAL_STD
    ref = OFFICIAL_FAN_IN[0] if layer == 0 else OFFICIAL_FAN_IN[1]
    return OFFICIAL_STD * math.sqrt(max(1.0, ref / fan_in))


# `last_layer` is built after official DINOHead's `self.apply(_init_weights)`, so it keeps torch
# nn.Linear's default init, kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)). (Weight
# normalisation makes the forward pass scale-free; the scale sets the step size of the directions.)
_torch_linear_default = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class Center(nnx.Variable):
    """DINO's running centre of the teacher outputs: state, not a parameter."""


class WeightNormLinear(nnx.Module):
    """Bias-free Linear with weight normalisation, w_k = g_k · v_k / ||v_k|| (torch `weight_norm`).

    `norm_last_layer=True` (official default) fixes g = 1, so only directions are learned; otherwise g is
    a parameter starting at 1.
    """

    def __init__(self, d_in: int, d_out: int, norm_last_layer: bool, param_dtype: Any, rngs):
        self.dtype = at_least_float32(param_dtype)  # Normalised in full precision.
        self.kernel = nnx.Param(_torch_linear_default(rngs.params(), (d_in, d_out), param_dtype))
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
        head_init: str = "fan_in",
        use_bn: bool = False,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        dims = [in_dim] + [hidden_dim] * (max(num_layers, 1) - 1) + [bottleneck_dim]
        self.mlp = nnx.List(
            [
                nnx.Linear(
                    a,
                    b,
                    kernel_init=nnx.initializers.normal(stddev=mlp_init_std(i, a, head_init)),
                    dtype=dtype,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True))
            ]
        )
        # Official `--use_bn_in_head`: BatchNorm after each hidden Linear (batch statistics in the
        # teacher too, which runs in train mode).
        self.norms = nnx.List(
            [batch_norm(d, param_dtype=param_dtype, rngs=rngs) for d in dims[1:-1]]
            if use_bn
            else []
        )
        self.last_layer = WeightNormLinear(
            bottleneck_dim, out_dim, norm_last_layer, param_dtype, rngs
        )

    def bottleneck(self, x: jax.Array) -> jax.Array:
        """The MLP's output before L2-normalisation (what the collapse monitors and gain test read)."""
        for i, layer in enumerate(self.mlp):
            x = layer(x)
            if i < len(self.mlp) - 1:
                if self.norms:
                    x = self.norms[i](x)
                x = nnx.gelu(x, approximate=False)
        return x

    def logits(self, bottleneck: jax.Array) -> jax.Array:
        """Prototype scores of a bottleneck: L2-normalise, then the weight-normalised last layer."""
        return self.last_layer(l2_normalize(bottleneck))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.logits(self.bottleneck(x))


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
            head_init=str(model_cfg.get("head_init", "fan_in")),
            use_bn=bool(model_cfg.get("head_use_bn", False)),
            dtype=dtype,
            param_dtype=param_dtype_for(dtype),
            rngs=rngs,
        )
        return EncoderWithHead(encoder, head)

    student = net(rngs)
    teacher = net(nnx.Rngs(0))
    nnx.update(teacher, nnx.state(student))
    return DinoModel(student, teacher, int(model_cfg.head_out_dim), dtype)
