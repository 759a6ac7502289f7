"""Mini-batch k-means on device (PiCIE's clustering; Cho et al., CVPR 2021), in plain JAX.

PiCIE clusters per-pixel features with faiss; here the same job is three jittable pieces so the whole
clustering stays on the accelerator, next to the features:

* `assign`: nearest centroid (squared Euclidean; on L2-normalised features and centroids this is the
  cosine-nearest centroid, PiCIE's `metric="cosine"`).
* `lloyd`: `iters` full Lloyd iterations on one batch of points (scikit-learn `KMeans` with that
  `init`, `n_init=1`, `tol=0`); a centroid that loses all its points keeps its place.
* `minibatch_update`: one Sculley / scikit-learn `MiniBatchKMeans` step: each centroid becomes the
  running mean of every point ever assigned to it (`counts` = points so far), c ← (v·c + Σx) / (v + n).

`valid` masks let padded points take no part (a fixed-shape batch with fewer real points).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sq_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """(N, D), (K, D) -> (N, K) squared Euclidean distances (‖x‖² − 2x·c + ‖c‖², clipped at 0)."""
    d = (
        jnp.sum(x * x, -1, keepdims=True)
        - 2.0 * x @ centroids.T
        + jnp.sum(centroids * centroids, -1)[None, :]
    )
    return jnp.maximum(d, 0.0)


def assign(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Index of the nearest centroid for each row of `x` (ties: the lowest index, as NumPy argmin)."""
    return jnp.argmin(sq_distances(x, centroids), axis=-1).astype(jnp.int32)


def _sums(x: jax.Array, labels: jax.Array, k: int, valid: jax.Array | None):
    onehot = jax.nn.one_hot(labels, k, dtype=x.dtype)
    if valid is not None:
        onehot = onehot * valid[:, None].astype(x.dtype)
    return onehot.T @ x, jnp.sum(onehot, 0)


def lloyd(
    x: jax.Array, init: jax.Array, iters: int, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """`iters` Lloyd iterations from `init` on the points `x` (N, D). Returns (centroids, counts)."""
    k = init.shape[0]

    def body(_, c):
        sums, n = _sums(x, assign(x, c), k, valid)
        return jnp.where(n[:, None] > 0, sums / jnp.maximum(n, 1.0)[:, None], c)

    c = jax.lax.fori_loop(0, iters, body, init)
    return c, _sums(x, assign(x, c), k, valid)[1]


def minibatch_update(
    centroids: jax.Array, counts: jax.Array, x: jax.Array, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """One mini-batch k-means step on the points `x`. Returns (centroids, counts)."""
    sums, n = _sums(x, assign(x, centroids), centroids.shape[0], valid)
    total = counts + n
    new = (centroids * counts[:, None] + sums) / jnp.maximum(total, 1.0)[:, None]
    return jnp.where(n[:, None] > 0, new, centroids), total


def random_init(rng: jax.Array, x: jax.Array, k: int) -> jax.Array:
    """`k` distinct rows of `x` drawn uniformly (the first centroids)."""
    return x[jax.random.choice(rng, x.shape[0], (k,), replace=False)]
