"""ResNet encoders (He et al. 2016) in Flax NNX, shaped for self-supervised pre-training.

The network returns globally average-pooled features, not logits: SSL methods attach their own
heads (projection MLPs, linear probes), so the classifier layer belongs to the caller.

Conventions that other modules rely on:

* Parameter names: convolutions are ``conv*`` / ``shortcut_conv`` (4-D ``kernel``, no bias, since a
  BatchNorm follows each one); BatchNorms are ``bn*`` / ``shortcut_bn`` / ``stem_bn`` (1-D
  ``scale`` and ``bias``). Hence "``ndim > 1``" selects exactly the conv kernels for weight decay.
* Train/eval is the NNX way: ``model.train()`` / ``model.eval()`` flip ``use_running_average``.
* Compute may run in bfloat16, but BatchNorm statistics and all parameters stay float32, and the
  returned features are float32 so losses are computed at full precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from s4mi_jax.models import remat
from s4mi_jax.models.dtypes import at_least_float32

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
BLOCKS = ("basic", "bottleneck")
STEMS = ("imagenet", "cifar")

# He / Kaiming normal with fan_out, as torchvision initialises ResNet convolutions: keeps
# activation variance stable through ReLUs from the first step, which matters for SSL warm-up.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int,
    *,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    # Explicit symmetric padding matches torchvision's (k-1)//2, whereas 'SAME' pads
    # asymmetrically for stride 2 and would shift the feature grid by half a pixel.
    pad = (kernel - 1) // 2
    return nnx.Conv(
        in_ch,
        out_ch,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,  # the following BatchNorm has its own bias
        kernel_init=_conv_init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def batch_norm(
    num_features: int, *, param_dtype: Any, zero_scale: bool = False, rngs: nnx.Rngs
) -> nnx.BatchNorm:
    """BatchNorm with statistics and affine params in at least float32 (bf16 variances are too coarse)."""
    bn_dtype = at_least_float32(param_dtype)
    bn = nnx.BatchNorm(
        num_features,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=bn_dtype,
        param_dtype=bn_dtype,
        scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
        rngs=rngs,
    )
    if bn_dtype != jnp.float32:  # nnx.BatchNorm always makes float32 running statistics.
        bn.mean = nnx.BatchStat(jnp.zeros((num_features,), bn_dtype))
        bn.var = nnx.BatchStat(jnp.ones((num_features,), bn_dtype))
    return bn


class _Shortcut(nnx.Module):
    """1x1 projection + BN, used only when a block changes resolution or width."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        *,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.conv = _conv(in_ch, out_ch, 1, stride, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bn = batch_norm(out_ch, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x)).astype(self.dtype)


class BasicBlock(nnx.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        *,
        zero_init_residual: bool,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        out_ch = planes * self.expansion
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = _conv(in_ch, planes, 3, stride, **kw)
        self.bn1 = batch_norm(planes, param_dtype=param_dtype, rngs=rngs)
        self.conv2 = _conv(planes, out_ch, 3, 1, **kw)
        self.bn2 = batch_norm(
            out_ch, param_dtype=param_dtype, zero_scale=zero_init_residual, rngs=rngs
        )
        self.shortcut = (
            _Shortcut(in_ch, out_ch, stride, **kw) if stride != 1 or in_ch != out_ch else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x))).astype(self.dtype)
        y = self.bn2(self.conv2(y))
        residual = x if self.shortcut is None else self.shortcut(x)
        return nnx.relu(y + residual).astype(self.dtype)


class BottleneckBlock(nnx.Module):
    """1x1 reduce, 3x3 (strided, "ResNet v1.5"), 1x1 expand by 4 (ResNet-50/101/152)."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        *,
        zero_init_residual: bool,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        out_ch = planes * self.expansion
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = _conv(in_ch, planes, 1, 1, **kw)
        self.bn1 = batch_norm(planes, param_dtype=param_dtype, rngs=rngs)
        self.conv2 = _conv(planes, planes, 3, stride, **kw)
        self.bn2 = batch_norm(planes, param_dtype=param_dtype, rngs=rngs)
        self.conv3 = _conv(planes, out_ch, 1, 1, **kw)
        self.bn3 = batch_norm(
            out_ch, param_dtype=param_dtype, zero_scale=zero_init_residual, rngs=rngs
        )
        self.shortcut = (
            _Shortcut(in_ch, out_ch, stride, **kw) if stride != 1 or in_ch != out_ch else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x))).astype(self.dtype)
        y = nnx.relu(self.bn2(self.conv2(y))).astype(self.dtype)
        y = self.bn3(self.conv3(y))
        residual = x if self.shortcut is None else self.shortcut(x)
        return nnx.relu(y + residual).astype(self.dtype)


_BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(nnx.Module):
    """ResNet trunk returning pooled features of size ``feature_dim``.

    ``stem="imagenet"`` (7x7/2 conv + 3x3/2 max-pool) suits >=128 px inputs; ``stem="cifar"``
    (3x3/1 conv, no pool) keeps resolution for 28-64 px images such as MedMNIST, where the
    ImageNet stem would throw away most of the spatial detail before the first block.
    """

    def __init__(
        self,
        *,
        stage_sizes: Sequence[int],
        block: str,
        in_channels: int,
        width: int = 64,
        stem: str = "imagenet",
        zero_init_residual: bool = True,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if block not in _BLOCK_TYPES:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        block_cls = _BLOCK_TYPES[block]
        self.dtype = dtype
        self.stem = stem
        self.remat = remat  # Recompute each block's activations in the backward pass (remat.py).
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        if stem == "imagenet":
            self.stem_conv = _conv(in_channels, width, 7, 2, **kw)
        else:
            self.stem_conv = _conv(in_channels, width, 3, 1, **kw)
        self.stem_bn = batch_norm(width, param_dtype=param_dtype, rngs=rngs)

        blocks = []
        in_ch = width
        for i, num_blocks in enumerate(stage_sizes):
            planes = width * 2**i
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(
                    block_cls(in_ch, planes, stride, zero_init_residual=zero_init_residual, **kw)
                )
                in_ch = planes * block_cls.expansion
        self.blocks = nnx.List(blocks)
        self.feature_dim: int = in_ch
        # For dense prediction (a U-Net on this encoder): where each stage ends, its width and stride.
        self.stage_ends = tuple(int(n) for n in np.cumsum(stage_sizes))
        self.stage_channels = tuple(
            width * 2**i * block_cls.expansion for i in range(len(stage_sizes))
        )
        first = 4 if stem == "imagenet" else 1
        self.stage_strides = tuple(first * 2**i for i in range(len(stage_sizes)))
        self.stem_channels, self.stem_stride = width, 2 if stem == "imagenet" else 1

    def feature_maps(self, x: jax.Array) -> list[jax.Array]:
        """The stem's output (before the max-pool) and each stage's last output: the skips of a U-Net
        decoder (widths `stem_channels`, `stage_channels`; strides `stem_stride`, `stage_strides`)."""
        x = jnp.asarray(x, self.dtype)
        x = nnx.relu(self.stem_bn(self.stem_conv(x))).astype(self.dtype)
        maps = [x]
        if self.stem == "imagenet":
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, blk in enumerate(self.blocks):
            x = remat.call(blk, x, remat=self.remat)
            if i + 1 in self.stage_ends:
                maps.append(x)
        return maps

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """NHWC images -> (N, feature_dim) float32 features. `rng` is unused (every encoder takes one:
        ViTs use it for drop-path)."""
        del rng
        x = self.feature_maps(x)[-1]
        # Pool in (at least) float32: a bf16 mean over many positions loses precision.
        return jnp.mean(x.astype(at_least_float32(x.dtype)), axis=(1, 2))


def resnet18(**kw: Any) -> ResNet:
    """ResNet-18: [2, 2, 2, 2] basic blocks, 512 features at width 64."""
    return ResNet(stage_sizes=[2, 2, 2, 2], block="basic", **kw)


def resnet50(**kw: Any) -> ResNet:
    """ResNet-50: [3, 4, 6, 3] bottleneck blocks, 2048 features at width 64."""
    return ResNet(stage_sizes=[3, 4, 6, 3], block="bottleneck", **kw)
