"""Optimizers and learning-rate schedules from `config.optim`.

Weight decay (and LARS's trust-ratio adaptation) apply to kernels only: BatchNorm scales/offsets and biases
are 1-D, so the rule is simply `ndim > 1` (SimCLR excludes BN and bias from both, as its paper and code do).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
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


def periodic_cosine(peak: float, min_lr: float, half_period: int) -> optax.Schedule:
    """PyTorch `CosineAnnealingLR(T_max=half_period, eta_min=min_lr)` stepped every iteration, past
    T_max: min + (peak - min)(1 + cos(π t / T_max)) / 2 for every t, a cosine that goes back up (period
    2·T_max). The S4MI/CASS reference code runs this with T_max=16 (a 32-iteration period)."""
    return lambda t: min_lr + (peak - min_lr) * (1 + jnp.cos(jnp.pi * t / half_period)) / 2


def make_schedule(
    cfg: ml_collections.ConfigDict, *, batch_size: int, total_steps: int, steps_per_epoch: int
) -> optax.Schedule:
    """`config.optim.schedule`: "warmup_cosine" (default: linear warm-up from 0 over `warmup_epochs`,
    then cosine to `min_lr` at `total_steps`) or "periodic_cosine" (`cosine_period_steps` = T_max)."""
    peak = peak_learning_rate(cfg, batch_size)
    min_lr = float(cfg.get("min_lr", 0.0))
    kind = cfg.get("schedule", "warmup_cosine")
    if kind == "periodic_cosine":
        return periodic_cosine(peak, min_lr, int(cfg.cosine_period_steps))
    if kind != "warmup_cosine":
        raise ConfigError(
            f"config.optim.schedule={kind!r}: expected 'warmup_cosine' or 'periodic_cosine'."
        )
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, 1),
        end_value=min_lr,
    )


def weight_decay_schedule(
    cfg: ml_collections.ConfigDict, total_steps: int
) -> optax.ScalarOrSchedule:
    """Constant `weight_decay`, or a cosine from it to `weight_decay_end` over the run (DINO: 0.04 ->
    0.4, official `cosine_scheduler`)."""
    start, end = cfg.weight_decay, cfg.get("weight_decay_end")
    if end is None or end == start:
        return start
    return lambda t: (
        end + (start - end) * (1 + jnp.cos(jnp.pi * jnp.minimum(t / total_steps, 1))) / 2
    )


def clip_per_parameter(max_norm: float) -> optax.GradientTransformation:
    """Each parameter's gradient clipped to norm `max_norm` on its own (official DINO's
    `clip_gradients`), unlike `clip_by_global_norm`, which scales all of them together."""

    def update(updates, state, params=None):
        del params

        def clip(g):
            return g * jnp.minimum(1.0, max_norm / (jnp.linalg.norm(g.ravel()) + 1e-6))

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def never_zero_grad() -> optax.GradientTransformation:
    """Reproduces a quirk of the released CASS loop: `zero_grad()` is never called, so each step's
    gradient is the sum of all gradients so far (CASS.ipynb's pretraining loop). Off by default; for parity runs only."""

    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(updates, total, params=None):
        del params
        total = jax.tree.map(jnp.add, total, updates)
        return total, total

    return optax.GradientTransformation(init, update)


def make_optimizer(
    cfg: ml_collections.ConfigDict, schedule: optax.Schedule, total_steps: int = 1
) -> optax.GradientTransformation:
    """`config.optim.name`: lars | sgd | adam (coupled L2, as torch Adam) | adamw; then optional
    clipping (`grad_clip_norm`, `grad_clip_mode` "global" or "per_param") applied first."""
    wd = weight_decay_schedule(cfg, total_steps)
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
        mode = cfg.get("grad_clip_mode", "global")
        if mode not in ("global", "per_param"):
            raise ConfigError(
                f"config.optim.grad_clip_mode={mode!r}: expected 'global' or 'per_param'."
            )
        clip = optax.clip_by_global_norm if mode == "global" else clip_per_parameter
        tx = optax.chain(clip(cfg.grad_clip_norm), tx)
    if cfg.get("never_zero_grad", False):
        tx = optax.chain(never_zero_grad(), tx)
    return tx


def per_branch(tx: optax.GradientTransformation, branches: tuple[str, ...]):
    """One independent optimizer per top-level sub-tree (CASS: one per network, as two torch
    optimizers): separate moments, clipping and trust ratios."""

    def labels(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: str(path[0].key), params)

    return optax.multi_transform({b: tx for b in branches}, labels)


def split_top_key(
    key: str,
    inside: tuple[str, optax.GradientTransformation],
    outside: tuple[str, optax.GradientTransformation],
) -> optax.GradientTransformation:
    """`inside` for the parameters under top-level `key` (a frozen encoder, DEDL's APP head),
    `outside` for the rest; each pair's label names its optimizer state in checkpoints."""

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: inside[0] if _top(path) == key else outside[0], params
        )

    return optax.multi_transform({inside[0]: inside[1], outside[0]: outside[1]}, labels)


def _top(path) -> str:
    entry = path[0]
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


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
    tx = make_optimizer(config.optim, schedule, total_steps)
    return tx, schedule, total_steps, steps_per_epoch
