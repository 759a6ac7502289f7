"""Optimizers and learning-rate schedules from `config.optim`.

Weight decay (and LARS's trust-ratio adaptation) apply to kernels only: BatchNorm scales/offsets and biases
are 1-D, so the rule is simply `ndim > 1` (SimCLR excludes BN and bias; methods.md §6.1 and §7.12).
"""

from __future__ import annotations

import math

import jax
import ml_collections
import optax

from s4mi_jax.errors import ConfigError


def decay_mask(params):
    """True for leaves that get weight decay: conv/dense kernels, not BN parameters or biases."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def peak_learning_rate(cfg: ml_collections.ConfigDict, batch_size: int) -> float:
    """`base_lr` scaled by the global batch: linear (lr·B/256), sqrt (lr·√B) or none."""
    if cfg.lr_scaling == "linear":
        return cfg.base_lr * batch_size / 256
    if cfg.lr_scaling == "sqrt":
        return cfg.base_lr * math.sqrt(batch_size)
    if cfg.lr_scaling == "none":
        return cfg.base_lr
    raise ConfigError(
        f"config.optim.lr_scaling={cfg.lr_scaling!r}: expected 'linear', 'sqrt' or 'none'."
    )


def make_schedule(
    cfg: ml_collections.ConfigDict, *, batch_size: int, total_steps: int, steps_per_epoch: int
) -> optax.Schedule:
    """Linear warm-up from 0 over `warmup_epochs`, then cosine decay to 0 at `total_steps`."""
    peak = peak_learning_rate(cfg, batch_size)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(total_steps, 1)
    )


def make_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule):
    """`config.optim.name`: lars | sgd | adam (coupled L2, as torch Adam) | adamw."""
    wd = cfg.weight_decay
    if cfg.name == "lars":
        tx = optax.lars(
            schedule,
            weight_decay=wd,
            weight_decay_mask=decay_mask,
            trust_coefficient=cfg.trust_coefficient,
            momentum=cfg.momentum,
            trust_ratio_mask=decay_mask,
        )
    elif cfg.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(wd, decay_mask),
            optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
        )
    elif cfg.name == "adam":
        tx = optax.chain(optax.add_decayed_weights(wd, decay_mask), optax.adam(schedule))
    elif cfg.name == "adamw":
        tx = optax.adamw(schedule, weight_decay=wd, mask=decay_mask)
    else:
        raise ConfigError(
            f"config.optim.name={cfg.name!r}: expected one of 'lars', 'sgd', 'adam', 'adamw'."
        )
    if cfg.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx


def for_run(
    config: ml_collections.ConfigDict, num_examples: int
) -> tuple[optax.GradientTransformation, optax.Schedule, int, int]:
    """(tx, schedule, total_steps, steps_per_epoch) for a run over `num_examples` training examples.

    `config.total_steps` wins over `config.total_epochs`; epochs are counted in global batches.
    """
    steps_per_epoch = max(num_examples // config.batch_size, 1)
    total_steps = config.total_steps or int(round(config.total_epochs * steps_per_epoch))
    schedule = make_schedule(
        config.optim,
        batch_size=config.batch_size,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )
    return make_optimizer(config.optim, schedule), schedule, total_steps, steps_per_epoch
