"""Shared test utilities: small configs and tree comparisons."""

from __future__ import annotations

import jax
import numpy as np

from configs import simclr_chest


def local_config(**overrides):
    """The `:local` SimCLR config (tiny model, 32x32, a few steps) with overrides (dotted keys allowed)."""
    config = simclr_chest.get_config("local")
    config.eval.probe_at_init = False
    config.data.verify = False  # The embedded sample is verified once in its own test.
    return override(config, **overrides)


def override(config, **overrides):
    """Sets dotted keys (`**{"optim.name": "sgd"}`) on a ConfigDict, like `--config.optim.name=sgd`."""
    for key, value in overrides.items():
        node = config
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return config


def classification_config(method: str, **overrides):
    """The `:local` classification config with overrides (dotted keys allowed)."""
    from configs import common

    config = common.classification_config(method, "local")
    config.data.verify = False
    return override(config, **overrides)


def max_abs_diff(a, b) -> float:
    leaves_a = jax.tree.leaves(a)
    leaves_b = jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )
