"""Segmentation losses (DEDL's APP notebook, S4MI's cross-teaching script, UniMatch's
FixMatch): weighted cross-entropy, SSL4MIS Dice, the
FixMatch unlabeled term and the sigmoid ramp-up of consistency weights.

Logits are (N, H, W, C); labels integer class maps (N, H, W). All losses are computed in (at least)
float32 and are means over the pixels they cover, so they do not grow with the batch or image size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from s4mi_jax.models.dtypes import at_least_float32


def median_frequency_weights(masks: np.ndarray | list[np.ndarray], num_classes: int) -> np.ndarray:
    """w_c = median(freq) / freq_c over the pixels of `masks` (median-frequency balancing, as S4MI's
    cross-teaching script; there over every mask file, here over the masks given).

    A class absent from the masks gets weight 0 (nothing to balance) instead of a division by zero.
    """
    counts = np.zeros(num_classes, np.float64)
    for m in masks:
        counts += np.bincount(np.asarray(m).ravel(), minlength=num_classes)[:num_classes]
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    median = np.median(freq[present]) if present.any() else 0.0
    return np.where(present, median / np.where(present, freq, 1.0), 0.0).astype(np.float32)


def weighted_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array | None = None,
    pixel_mask: jax.Array | None = None,
) -> jax.Array:
    """torch `CrossEntropyLoss(weight=w)`: Σ w[y]·nll / Σ w[y] over the (masked) pixels."""
    logits = logits.astype(at_least_float32(logits.dtype))
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    w = jnp.ones_like(nll) if weights is None else jnp.asarray(weights, nll.dtype)[labels]
    if pixel_mask is not None:
        w = w * pixel_mask
    return jnp.sum(w * nll) / jnp.maximum(jnp.sum(w), 1e-12)


def dice_loss(
    probs: jax.Array,
    labels: jax.Array,
    num_classes: int,
    pixel_mask: jax.Array | None = None,
    eps: float = 1e-5,
) -> jax.Array:
    """SSL4MIS `DiceLoss`: mean over all classes (background included) of
    1 − (2Σ p_c y_c + ε) / (Σ p_c² + Σ y_c² + ε), sums over batch and pixels jointly; pixels where
    `pixel_mask` is 0 are left out of every sum (UniMatch's ignored low-confidence pixels)."""
    probs = probs.astype(at_least_float32(probs.dtype))
    target = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)
    if pixel_mask is not None:
        m = pixel_mask.astype(probs.dtype)[..., None]
        probs, target = probs * m, target * m
    axes = tuple(range(probs.ndim - 1))
    inter = jnp.sum(probs * target, axis=axes)
    denom = jnp.sum(probs * probs, axis=axes) + jnp.sum(target * target, axis=axes)
    return jnp.mean(1.0 - (2.0 * inter + eps) / (denom + eps))


def supervised_loss(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None, num_classes: int
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """S4MI's L_sup = ½ [CE_w + Dice(softmax)] (`train_CT_between_cnn_transformer_2D.py`)."""
    ce = weighted_cross_entropy(logits, labels, weights)
    dice = dice_loss(
        jax.nn.softmax(logits.astype(at_least_float32(logits.dtype))), labels, num_classes
    )
    return 0.5 * (ce + dice), {"ce": ce, "dice_loss": dice}


def pseudo_labels(weak_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(argmax class map, max-softmax confidence) of the weak view, under stop-gradient."""
    probs = jax.nn.softmax(jax.lax.stop_gradient(weak_logits).astype(jnp.float32))
    return jnp.argmax(probs, axis=-1), jnp.max(probs, axis=-1)


def fixmatch_unlabeled_loss(
    strong_logits: jax.Array,
    targets: jax.Array,
    confidence: jax.Array,
    threshold: float,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """UniMatch/FixMatch per-pixel term: Σ CE·[conf ≥ τ]·valid / Σ valid (UniMatch's
    `fixmatch.py`; FixMatch, Sohn et al. 2020, also divides by all unlabeled samples).

    The denominator counts **all** valid pixels, confident or not, so a step with few confident
    pixels contributes little. Returns (loss, fraction of valid pixels above τ).
    """
    logits = strong_logits.astype(at_least_float32(strong_logits.dtype))
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    valid = jnp.ones_like(nll) if valid is None else valid.astype(nll.dtype)
    confident = (confidence >= threshold).astype(nll.dtype) * valid
    n_valid = jnp.maximum(jnp.sum(valid), 1.0)
    return jnp.sum(nll * confident) / n_valid, jnp.sum(confident) / n_valid


def sigmoid_rampup(step: jax.Array, *, weight: float, length: float, divisor: float) -> jax.Array:
    """SSL4MIS consistency weight: weight · exp(−5 (1 − e/length)²), e = min(⌊step/divisor⌋, length)
    (Laine & Aila; S4MI: weight 0.1, length 200, divisor 150, from
    `train_CT_between_cnn_transformer_2D.py`; over its 10k iterations the weight stays below 0.011)."""
    if length <= 0:
        return jnp.asarray(weight, jnp.float32)
    e = jnp.minimum(jnp.floor(step / divisor), length)
    phase = 1.0 - e / length
    return weight * jnp.exp(-5.0 * phase * phase)
