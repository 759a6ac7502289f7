"""Activation checkpointing (`config.model.remat`): recompute a block's activations in the backward pass.

A block's intermediate activations are then not kept from the forward to the backward pass; only its
input is. Memory per device falls from "every activation of the network" to "each block's input plus
one block's activations", for about one more forward pass of compute (~1.3x the step's FLOPs). It is
what lets a per-chip batch that `s4mi_jax.aot` reports as not fitting fit (the same loss and gradients:
tests/test_remat.py).
"""

from __future__ import annotations

from typing import Any

from flax import nnx


def _apply(module: nnx.Module, *args: Any) -> Any:
    return module(*args)


_REMAT_APPLY = nnx.remat(_apply)


def call(module: nnx.Module, *args: Any, remat: bool) -> Any:
    """`module(*args)`, its activations recomputed in the backward pass when `remat` (BatchNorm
    statistics are updated as without)."""
    return _REMAT_APPLY(module, *args) if remat else module(*args)
