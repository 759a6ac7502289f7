"""DINO's objective and schedules (Caron et al. 2021, official `main_dino.py`), as pure functions.

Follows the official `main_dino.py`: the teacher sees the global crops only, the student every crop; each
teacher crop is compared with every *other* student crop; the teacher's output is centred and sharpened,
the centre is an EMA of the teacher's mean output over the global batch (under `jax.jit` the mean is over
all devices, the official all-reduce). Everything here runs in at least float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from s4mi_jax.core.collapse import distinct


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def dino_loss(
    student: jax.Array,
    teacher: jax.Array,
    center: jax.Array,
    student_temp: float,
    teacher_temp: jax.Array | float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy between sharpened, centred teacher and student outputs over crop pairs.

    student: (V, B, K) head outputs for V crops, the first G of which are the global crops the teacher saw;
    teacher: (G, B, K); center: (K,) or (1, K). Loss = mean over the G*V - G pairs (g, v != g) of
    mean_b H(softmax((t_g - c) / τ_t), softmax(s_v / τ_s)); no gradient flows into the teacher.

    Monitors (collapse diagnostics, DINO paper §5.3): `teacher_entropy` (→ 0: one dimension dominates; → log K:
    uniform collapse), `kl_teacher_student` (→ 0 when both collapse), `kl_to_center`: mean over images of
    KL(t_b || t̄), t̄ the batch's mean teacher distribution (where the centre-subtracted teacher sits
    on average), i.e. how much the teacher's output says about the image: → 0 when the teacher ignores
    the image, whether it outputs its centre (uniform) or one constant (one prototype). Also the collapse
    alarm's `collapse_entropy_ratio` (teacher_entropy / log K) and `collapse_prototypes` (distinct argmax
    prototypes of the teacher over the batch).
    """
    g_crops = teacher.shape[0]
    t = jax.lax.stop_gradient(jax.nn.softmax((_f32(teacher) - _f32(center)) / teacher_temp, -1))
    log_s = jax.nn.log_softmax(_f32(student) / student_temp, -1)
    # ce[g, v] = mean_b -Σ_k t[g,b,k] log s[v,b,k]
    ce = -jnp.einsum("gbk,vbk->gv", t, log_s) / t.shape[1]
    pair = ~jnp.eye(g_crops, student.shape[0], dtype=bool)
    loss = jnp.sum(jnp.where(pair, ce, 0.0)) / jnp.sum(pair)

    log_t = jnp.log(jnp.maximum(t, 1e-30))
    entropy = -jnp.sum(t * log_t, -1)  # (G, B)
    kl_ts = jnp.sum(jnp.where(pair, ce, 0.0) - jnp.mean(entropy, -1)[:, None] * pair) / jnp.sum(
        pair
    )
    t_mean = jnp.mean(t, axis=(0, 1))
    kl_c = jnp.mean(jnp.sum(t * (log_t - jnp.log(jnp.maximum(t_mean, 1e-30))), -1))
    num_k = t.shape[-1]
    return loss, {
        "teacher_entropy": jnp.mean(entropy),
        "kl_teacher_student": kl_ts,
        "kl_to_center": kl_c,
        "collapse_entropy_ratio": jnp.mean(entropy) / math.log(num_k),
        "collapse_prototypes": distinct(jnp.argmax(t, -1)).astype(jnp.float32),
    }


def update_center(center: jax.Array, teacher: jax.Array, momentum: float) -> jax.Array:
    """c ← m·c + (1 - m)·mean(teacher outputs over every crop and example); shape of `center` kept."""
    batch_center = jnp.mean(_f32(teacher).reshape(-1, teacher.shape[-1]), axis=0)
    return (momentum * center + (1.0 - momentum) * batch_center.reshape(center.shape)).astype(
        center.dtype
    )


def teacher_temperature(
    step: jax.Array, warmup_temp: float, temp: float, warmup_steps: int
) -> jax.Array:
    """Linear warm-up of the teacher temperature from `warmup_temp` to `temp`, then constant."""
    if warmup_steps <= 0:
        return jnp.asarray(temp)
    frac = jnp.clip(step / warmup_steps, 0.0, 1.0)
    return warmup_temp + frac * (temp - warmup_temp)


def teacher_momentum(step: jax.Array, base: float, total_steps: int) -> jax.Array:
    """Cosine from `base` at step 0 to 1 at `total_steps` (official `cosine_scheduler(m, 1, ...)`)."""
    frac = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * frac) + 1.0) / 2.0
