"""Shared config pieces: `:variant,key=value` arguments and the defaults every trainer uses."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """`"local"` or `"research,seed=3"` -> ConfigDict over `defaults` (big_vision's `parse_arg`).

    A bare word sets a boolean default to True; `key=value` sets a default of the same type. Unknown
    words are errors, so `:lcoal` fails instead of silently running the default.
    """
    cfg = ml_collections.ConfigDict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if not value:
            value = True
        elif isinstance(default, bool):
            value = value.lower() in ("1", "true", "yes")
        elif default is not None:
            value = type(default)(value)
        cfg[key] = value
    return cfg


def aug_config(image_size: int) -> ml_collections.ConfigDict:
    """SimCLR view augmentation (methods.md §6.1), with colour strength 0.5 (CIFAR/medical)."""
    return ml_collections.ConfigDict(
        dict(
            image_size=image_size,
            crop_scale=(0.08, 1.0),
            hflip=True,
            jitter_prob=0.8,
            jitter_strength=0.5,
            grayscale_prob=0.2,  # RGB only.
            blur_prob=0.5,
            blur_sigma=(0.1, 2.0),
            mean=0.5,  # Per channel or one value for all; applied after scaling to [0, 1].
            std=0.25,
        )
    )


def run_config() -> ml_collections.ConfigDict:
    """Loop, checkpoint and mesh settings."""
    return ml_collections.ConfigDict(
        dict(
            seed=0,
            batch_size=64,  # Global batch (all devices, all hosts).
            total_epochs=10.0,
            total_steps=ml_collections.config_dict.placeholder(int),  # Overrides total_epochs.
            # Stop (with a checkpoint, as on preemption) after this step; rerun to continue.
            halt_at_step=ml_collections.config_dict.placeholder(int),
            log_every=10,
            ckpt_every=100,
            keep_ckpts=2,
            mesh=dict(data=-1),  # -1: all devices.
        )
    )
