"""PiCIE's losses and geometric views (Cho et al., CVPR 2021, official PiCIE code), on device.

Two photometric views of each image (colour jitter, grayscale, blur: made on the host) go through the
network; one shared random geometric transform T (a square crop resized back to the full size, then a
horizontal flip with p=0.5) is drawn per image here. View 1 is T applied to the *image*; T is applied
to view 2's *feature map*, so both maps describe the same pixels (equivariance). PiCIE transforms the
untransformed view's features forward rather than mapping the transformed view's back through T⁻¹:
the two are the same on the crop, and a crop has no inverse outside it.

Loss (PiCIE `train`): features L2-normalised, logits = cosine similarity to each set of centroids
(PiCIE's frozen 1×1 classifiers), labels = the nearest centroid under stop-gradient (view 1 against
the view-1 centroids μ1, view 2 against μ2),
  within = ½[CE(f1·μ1, y1) + CE(f2·μ2, y2)],  cross = ½[CE(f1·μ2, y2) + CE(f2·μ1, y1)],
  loss = ½(within + cross);
CE is class-weighted as torch's `CrossEntropyLoss(weight=w)`: Σ w_y·nll / Σ w_y, with w from the
frequencies of the batch's labels (PiCIE counts them over the epoch). PiCIE's `compute_labels` passes
w = the label *frequency* (counts / counts.sum()), so the more frequent cluster weighs more; that is
the default here. `config.loss.class_weights` picks it ("frequency"), the class-balanced inverse
frequency ("inverse") or no weights ("none").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from s4mi_jax import kmeans
from s4mi_jax.errors import ConfigError

# Re-exported (redundant aliases): PiCIE's view geometry and normalisation live in ops.py, which the
# PiCIE model (models/picie.py) may import; the loss's callers know them as `L.<name>`.
from s4mi_jax.ops import crop_flip as crop_flip
from s4mi_jax.ops import l2_normalize as l2_normalize
from s4mi_jax.ops import random_boxes as random_boxes

CLASS_WEIGHTS = ("frequency", "inverse", "none")


def check_class_weights(scheme: str) -> None:
    """Raise a ConfigError naming `config.loss.class_weights` unless `scheme` is one of CLASS_WEIGHTS."""
    if scheme not in CLASS_WEIGHTS:
        raise ConfigError(
            f"config.loss.class_weights={scheme!r}: expected one of {', '.join(CLASS_WEIGHTS)}."
        )


def weighted_cross_entropy(
    logits: jax.Array, labels: jax.Array, class_weights: str = "frequency"
) -> jax.Array:
    """Σ w_y·(−log softmax(logits)_y) / Σ w_y, torch's weighted-mean CE, with w_k from the n_k pixels
    labelled k: n_k / Σn ("frequency", PiCIE's), 1 / n_k ("inverse", 0 if n_k = 0) or 1 ("none")."""
    check_class_weights(class_weights)
    k = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, k, dtype=logits.dtype)
    counts = jnp.sum(onehot.reshape(-1, k), 0)
    if class_weights == "frequency":
        w = counts / jnp.sum(counts)
    elif class_weights == "inverse":
        w = jnp.where(counts > 0, 1.0 / jnp.maximum(counts, 1.0), 0.0)
    else:
        w = jnp.ones_like(counts)
    nll = -jnp.sum(onehot * jax.nn.log_softmax(logits, -1), -1)
    wy = jnp.sum(onehot * w, -1)
    return jnp.sum(wy * nll) / jnp.sum(wy)


def picie_loss(
    f1: jax.Array,
    f2: jax.Array,
    mu1: jax.Array,
    mu2: jax.Array,
    class_weights: str = "frequency",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PiCIE's loss on aligned, L2-normalised feature maps f1, f2 (N, H, W, D) and centroids (K, D);
    `class_weights` as `weighted_cross_entropy`'s."""
    d = f1.shape[-1]
    y1 = jax.lax.stop_gradient(kmeans.assign(f1.reshape(-1, d), mu1)).reshape(f1.shape[:-1])
    y2 = jax.lax.stop_gradient(kmeans.assign(f2.reshape(-1, d), mu2)).reshape(f2.shape[:-1])

    def ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
        return weighted_cross_entropy(logits, labels, class_weights)

    within = (ce(f1 @ mu1.T, y1) + ce(f2 @ mu2.T, y2)) / 2
    cross = (ce(f1 @ mu2.T, y2) + ce(f2 @ mu1.T, y1)) / 2
    aux = {
        "loss_within": within,
        "loss_cross": cross,
        "label_agreement": jnp.mean(y1 == y2),  # Same cluster index in both views.
        "cluster1_fraction": jnp.mean(y1 == 1),
    }
    return (within + cross) / 2, aux
