"""The PiCIE model and its clustering (Cho et al., CVPR 2021): a ResNet + FPN with a 128-d feature per
pixel, two sets of K centroids held as non-trainable state (set by k-means, saved with checkpoints),
the two views' aligned features, the on-device k-means refresh and the cluster-map prediction."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from s4mi_jax import kmeans, ops
from s4mi_jax.core import train_state
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.models.fpn import build_fpn


class Centroids(nnx.Variable):
    """Cluster centroids: state, not parameters (set by k-means, never by the optimizer)."""


def build_model(config: ml_collections.ConfigDict, in_channels: int, rngs: nnx.Rngs) -> nnx.Module:
    """The FPN with `centroids1`/`centroids2` (K, D) beside its `encoder` (so `init_from` finds it)."""
    model = build_fpn(config.model, in_channels, rngs)
    k, d = int(config.picie.num_clusters), int(config.model.get("feature_dim", 128))
    model.centroids1 = Centroids(jnp.zeros((k, d), jnp.float32))
    model.centroids2 = Centroids(jnp.zeros((k, d), jnp.float32))
    return model


def make_features_fn(graphdef: nnx.GraphDef, crop_scale: tuple[float, float]) -> Callable:
    """`(params, model_state, batch, rng) -> (f1, f2)`: L2-normalised, aligned feature maps of the
    two views (f1 of T(view1), T of view 2's features) in train mode; also the model after the pass
    (its BatchNorm statistics updated)."""

    def features(params, model_state, batch, rng):
        model = nnx.merge(graphdef, params, train_state.fresh(model_state))
        model.train()
        x1, x2 = batch["view1"], batch["view2"]
        boxes, flips = ops.random_boxes(rng, x1.shape[0], x1.shape[1], crop_scale)
        n = x1.shape[0]
        f = model(jnp.concatenate([ops.crop_flip(x1, boxes, flips), x2]))  # One pass, shared BN.
        f1, f2 = f[:n], ops.crop_flip(f[n:], boxes, flips)
        return ops.l2_normalize(f1), ops.l2_normalize(f2), model

    return features


def make_kmeans_fn(graphdef: nnx.GraphDef, crop_scale: tuple[float, float], iters: int) -> Callable:
    """Jitted `(state, batch, rng, (c1, n1, c2, n2), first, fresh) -> (c1, n1, c2, n2)`, one batch of
    the centroid refresh: the first batch (`first`, static) runs Lloyd from the given centroids, or
    from random pixels if `fresh` (a traced flag: one compilation for every epoch); later batches take
    one mini-batch step."""
    features = make_features_fn(graphdef, crop_scale)

    @functools.partial(jax.jit, static_argnames="first")
    def step(state, batch, rng, clusters, first: bool, fresh: jax.Array):
        k_view, k1, k2 = jax.random.split(rng, 3)
        f1, f2, _ = features(state.params, state.model_state, batch, k_view)
        out = []
        for f, (c, n), k_init in zip((f1, f2), (clusters[:2], clusters[2:]), (k1, k2), strict=True):
            x = f.reshape(-1, f.shape[-1])
            if first:
                init = jnp.where(fresh, kmeans.random_init(k_init, x, c.shape[0]), c)
                out += kmeans.lloyd(x, init, iters)
            else:
                out += kmeans.minibatch_update(c, n, x)
        return tuple(out)

    return step


@jax.jit
def set_centroids(state: TrainState, c1: jax.Array, c2: jax.Array) -> TrainState:
    ms = train_state.fresh(state.model_state)
    ms["centroids1"].value = ops.l2_normalize(c1)
    ms["centroids2"].value = ops.l2_normalize(c2)
    return state.replace(model_state=ms)


def make_predict_fn(graphdef: nnx.GraphDef):
    """Jitted `(params, model_state, images) -> cluster map` (nearest view-1 centroid, eval mode)."""

    @jax.jit
    def predict(params, model_state, images):
        model = nnx.merge(graphdef, params, model_state)
        model.eval()
        f = ops.l2_normalize(model(images))
        labels = kmeans.assign(f.reshape(-1, f.shape[-1]), model.centroids1.value)
        return labels.reshape(f.shape[:-1])

    return predict
