"""Compute and parameter dtypes from `config.model.dtype`.

`bfloat16` is mixed precision: bf16 compute, float32 parameters, BatchNorm and outputs. `float64` (needs
`jax_enable_x64`) runs everything in double precision; it exists for numerical tests, where float32
reduction-order noise through ReLUs would hide the differences a test is looking for.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from s4mi_jax.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def parse_dtype(name: str) -> Any:
    """`config.model.dtype` string -> jnp compute dtype."""
    if name not in DTYPES:
        raise ConfigError(
            f"config.model.dtype={name!r} is not supported; choose one of {sorted(DTYPES)}"
        )
    return DTYPES[name]


def at_least_float32(dtype: Any) -> Any:
    """float32 for bf16/float32, float64 for float64: the precision of statistics and losses."""
    return jnp.promote_types(dtype, jnp.float32)


def param_dtype_for(dtype: Any) -> Any:
    """Parameters are float32 unless the whole model runs in float64."""
    return at_least_float32(dtype)
