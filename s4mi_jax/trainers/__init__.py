"""The trainers, by the name a config gives in `config.trainer`.

Each module defines `TRAINER` (a `core.run.Trainer`: how it reads its data and builds its task); `main`,
`aot`, `predict` and `benchmark` find it here, and only here. Adding a method is one new module, one
config and one line below (docs/adding_a_method.md).
"""

from __future__ import annotations

import importlib

from s4mi_jax.errors import ConfigError

ALL_TRAINERS = {
    "simclr": "s4mi_jax.trainers.simclr",
    "dino": "s4mi_jax.trainers.dino",
    "cass": "s4mi_jax.trainers.cass",
    "classify": "s4mi_jax.trainers.classify",
    "segment": "s4mi_jax.trainers.segment",
    "fixmatch_seg": "s4mi_jax.trainers.fixmatch_seg",
    "cross_teaching": "s4mi_jax.trainers.cross_teaching",
    "picie": "s4mi_jax.trainers.picie",
}


def get(name: str):
    """The registered `core.run.Trainer` named `name` (imported on first use: a run loads only its
    own models and losses)."""
    if name not in ALL_TRAINERS:
        raise ConfigError(f"config.trainer={name!r}: expected one of {sorted(ALL_TRAINERS)}.")
    return importlib.import_module(ALL_TRAINERS[name]).TRAINER
