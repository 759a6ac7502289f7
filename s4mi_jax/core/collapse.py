"""Representation collapse: monitors computed in the train step, and the alarm the loop raises on them.

A self-supervised method collapses when the representation its loss sees stops depending on the image
(every image maps to one point) or, for DINO, when the teacher's distribution goes uniform or one
prototype takes every image. The loss alone can look fine through it (CASS's `2 - 2 cos` is at its
minimum), so each method reports, on that representation:

- `collapse_spread`: mean per-dimension std of the L2-normalised embeddings times sqrt(d). Embeddings
  spread over the sphere give about 1; all rows at one point give 0.
- `collapse_rank`: effective rank (exp of the entropy of the normalised singular values, RankMe) of the
  L2-normalised embeddings, uncentred so that "one point plus noise" counts as rank ~1; between 1 and d.
- DINO only: `collapse_entropy_ratio` (teacher entropy / log K: -> 1 when the teacher is uniform) and
  `collapse_prototypes` (distinct teacher argmax prototypes in the batch: 1 when one prototype wins).

The loop averages them over each log interval and, past a grace period (`config.collapse_after`, as a
fraction of the run: a random network's embeddings are not yet spread), checks them against `RULES`. The
first reading past a threshold is reported once, naming the step, the figure and what to change;
`config.collapse="stop"` stops the run there instead (the last checkpoint stays intact), `"off"` skips it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from s4mi_jax.errors import ConfigError, S4MIError

POLICIES = ("warn", "stop", "off")


def _normalized(z: jax.Array) -> jax.Array:
    z = z.astype(jnp.promote_types(z.dtype, jnp.float32)).reshape(-1, z.shape[-1])
    return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-24))


def spread(z: jax.Array) -> jax.Array:
    """sqrt(d) · mean_j std_i(ẑ_ij) over the rows i of the L2-normalised embeddings ẑ: ~1 spread, 0 one point."""
    zn = _normalized(z)
    return jnp.mean(jnp.std(zn, axis=0)) * math.sqrt(zn.shape[-1])


def effective_rank(z: jax.Array) -> jax.Array:
    """RankMe (Garrido et al. 2023): exp(H(σ / Σσ)) of the L2-normalised, uncentred embeddings."""
    zn = _normalized(z)
    gram = zn.T @ zn if zn.shape[0] >= zn.shape[1] else zn @ zn.T  # The smaller side.
    sigma = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram), 0.0))
    p = sigma / jnp.maximum(jnp.sum(sigma), 1e-12)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-30)), 0.0)))


def distinct(labels: jax.Array) -> jax.Array:
    """Number of distinct values in an integer array (sort-based: no (N, K) one-hot for large K)."""
    s = jnp.sort(labels.reshape(-1))
    return 1 + jnp.sum(s[1:] != s[:-1])


def embedding_monitors(z: jax.Array) -> dict[str, jax.Array]:
    """The collapse monitors of one embedding batch (N, d): what SimCLR's and CASS's losses see."""
    return {"collapse_spread": spread(z), "collapse_rank": effective_rank(z)}


@dataclasses.dataclass(frozen=True)
class Rule:
    metric: str  # Key in the step's metrics (the loop sees it as train/<metric>).
    threshold: float
    below: bool  # True: alarm when the value is below the threshold; False: above.
    meaning: str


RULES = (
    Rule(
        "collapse_spread",
        0.1,
        True,
        "the embeddings the loss sees are nearly the same for every image",
    ),
    Rule("collapse_rank", 1.5, True, "the embeddings the loss sees span about one direction"),
    Rule("collapse_entropy_ratio", 0.9, False, "the teacher's distribution is nearly uniform"),
    Rule("collapse_prototypes", 1.5, True, "one prototype takes every image"),
)


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ConfigError(f"config.collapse={policy!r}: expected one of {', '.join(POLICIES)}.")
    return policy


def first_alarm(values: dict[str, float]) -> str | None:
    """The first rule that `values` (train/<metric> -> value) break, as a sentence; None if healthy."""
    for rule in RULES:
        value = values.get(f"train/{rule.metric}")
        if value is None or not math.isfinite(value):
            continue
        if (value < rule.threshold) if rule.below else (value > rule.threshold):
            side = "<" if rule.below else ">"
            return f"{rule.metric} {value:.4g} {side} {rule.threshold:g}: {rule.meaning}"
    return None


class Alarm:
    """Checks each logged interval once the grace period is over; warns once or stops."""

    def __init__(self, policy: str, after_step: int, advice: str, log):
        self.policy = check_policy(policy)
        self.after_step = after_step
        self.advice = advice
        self.log = log
        self.fired = False

    def __call__(self, step: int, values: dict[str, float], checkpointer) -> None:
        if self.policy == "off" or self.fired or step < self.after_step:
            return
        what = first_alarm(values)
        if what is None:
            return
        self.fired = True
        message = f"representation collapse at step {step}: {what}. {self.advice}"
        if self.policy == "stop":
            checkpointer.wait()  # An async save in flight completes: the last checkpoint is whole.
            raise S4MIError(
                f"{message} Stopping (config.collapse=stop); the last checkpoint in "
                f"{checkpointer.directory} is intact."
            )
        self.log(
            f"warning: {message} (config.collapse=stop stops the run here; =off silences this.)"
        )
