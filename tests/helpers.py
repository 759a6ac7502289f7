"""Shared test utilities: small configs and tree comparisons."""

from __future__ import annotations

import os

import jax
import numpy as np

from configs import simclr_chest

# Every subprocess / wait timeout in the tests: a guard against a true hang, never a speed check. A real
# run on a 2-core machine shared with other work (load 20-30) takes many minutes where it takes seconds
# on an idle one; a guard that fires there fails a test that would have passed.
HANG_GUARD_S = float(os.environ.get("S4MI_TEST_HANG_GUARD_S", 3600))


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


def make_seg_folder(root, n=16, size=32, unlabeled=(), channels=3, seed=0):
    """A synthetic segmentation folder: images with a bright disc on noise, masks = the disc (0/255);
    images listed in `unlabeled` (indices) get no mask. Returns the root path."""
    import os

    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        q = size // 4
        cy, cx, r = rng.integers(q, size - q + 1), rng.integers(q, size - q + 1), rng.integers(2, q)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = rng.integers(0, 80, (size, size, channels)) + 150 * disc[..., None]
        img = img.astype(np.uint8)
        Image.fromarray(img[..., 0] if channels == 1 else img).save(f"{root}/images/im{i:02d}.png")
        if i not in unlabeled:
            Image.fromarray((disc * 255).astype(np.uint8)).save(f"{root}/masks/im{i:02d}.png")
    return str(root)
