"""Frozen-encoder features over a whole split, on the mesh, gathered to the host."""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from s4mi_jax.core import sharding
from s4mi_jax.data import pipeline


def make_embed_fn(graphdef: nnx.GraphDef, encoder: Callable[[nnx.Module], nnx.Module]):
    """A jitted `(params, model_state, images) -> features` using BatchNorm running statistics."""

    @jax.jit
    def embed(params, model_state, images):
        model = nnx.merge(graphdef, params, model_state)
        model.eval()
        return encoder(model)(images)

    return embed


def extract(
    embed_fn,
    params,
    model_state,
    source,
    aug_cfg: ml_collections.ConfigDict,
    *,
    batch_size: int,
    mesh: Mesh,
) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), labels (N,)) for every image of `source`, in order."""
    feats, labels = [], []
    for batch in pipeline.eval_batches(
        source,
        aug_cfg,
        batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        g = sharding.put_batch(batch, mesh)
        f = sharding.fetch(embed_fn(params, model_state, g["image"]))
        mask = sharding.fetch(g["mask"])
        feats.append(f[mask])
        labels.append(sharding.fetch(g["label"])[mask])
    return np.concatenate(feats), np.concatenate(labels)
