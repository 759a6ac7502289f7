"""Pretrained encoder weights from another run's Orbax checkpoint (`config.init_from`).

Reads the checkpoint without a target (plain arrays, no need to rebuild the pretraining optimizer) and
copies every `encoder` parameter and BatchNorm statistic into the new state after checking its name and
shape, so a checkpoint from a different architecture fails with the first mismatched parameter named.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from s4mi_jax.core.train_state import TrainState
from s4mi_jax.errors import ConfigError


def resolve(init_from: str) -> tuple[str, int]:
    """A workdir (latest checkpoint), its `checkpoints/` folder, or one `checkpoints/<step>` folder."""
    path = os.path.abspath(init_from)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    base = os.path.basename(path)
    if base.isdigit() and os.path.isdir(path):
        return os.path.dirname(path), int(base)
    if not os.path.isdir(path):
        raise ConfigError(f"config.init_from={init_from}: no such run folder or checkpoint.")
    step = ocp.CheckpointManager(path).latest_step()
    if step is None:
        raise ConfigError(f"config.init_from={init_from}: no checkpoint in {path}.")
    return path, step


def _key(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _copy_subtree(target: Any, raw: dict, prefix: str, init_from: str) -> Any:
    """`target` with every leaf under `prefix` replaced by the matching checkpoint array."""

    def leaf(path, x):
        keys = [_key(p) for p in path]
        if keys[0] != prefix:
            return x
        node = raw
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                raise ConfigError(
                    f"config.init_from={init_from}: parameter {'/'.join(keys[:-1])} is not in the "
                    "checkpoint; was it trained with another config.model?"
                )
            node = node[k]
        value = np.asarray(node)
        name = "/".join(k for k in keys if k != "value")
        if value.shape != x.shape:
            raise ConfigError(
                f"config.init_from={init_from}: parameter {name} has shape {value.shape} "
                f"in the checkpoint but {x.shape} in this model; use the pretraining run's config.model."
            )
        return jax.device_put(value.astype(x.dtype), x.sharding)

    return jax.tree_util.tree_map_with_path(leaf, target)


def load_encoder(
    state: TrainState, init_from: str, prefix: str = "encoder"
) -> tuple[TrainState, int]:
    """Returns (state with the pretrained encoder, the checkpoint step it came from)."""
    directory, step = resolve(init_from)
    manager = ocp.CheckpointManager(directory)
    raw = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    params = _copy_subtree(state.params, raw["params"], prefix, init_from)
    model_state = _copy_subtree(state.model_state, raw["model_state"], prefix, init_from)
    return state.replace(params=params, model_state=model_state), step
