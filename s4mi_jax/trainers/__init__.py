"""Trainers by name: `config.trainer = "simclr"` runs `s4mi_jax.trainers.simclr.train_and_evaluate`."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import ml_collections

from s4mi_jax.errors import ConfigError


def get(name: str) -> Callable[[ml_collections.ConfigDict, str], dict]:
    try:
        module = importlib.import_module(f"s4mi_jax.trainers.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"s4mi_jax.trainers.{name}":
            raise
        raise ConfigError(
            f"config.trainer={name!r}: no module s4mi_jax/trainers/{name}.py"
        ) from None
    return module.train_and_evaluate
