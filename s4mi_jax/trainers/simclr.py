"""SimCLR pretraining (Chen et al. 2020, "A Simple Framework for Contrastive Learning"); the run is core/run.py's.

One forward pass over both views concatenated (BatchNorm statistics over all 2B images of the global batch,
as the official code), NT-Xent over the global batch, LARS with warm-up + cosine.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from s4mi_jax.core import collapse, run, train_state
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import augment, device_augment
from s4mi_jax.losses.contrastive import embedding_std, nt_xent
from s4mi_jax.models.simclr import build_simclr_model
from s4mi_jax.trainers import pretrain


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, temperature: float
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pure SimCLR step `(state, batch, rng) -> (state, metrics)`; `rng` is unused (host-side views)."""

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        del rng
        x = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, train_state.fresh(state.model_state))
            model.train()
            _, z = model(x)
            z1, z2 = jnp.split(z, 2, axis=0)
            loss, aux = nt_xent(z1, z2, temperature)
            aux["embedding_std"] = embedding_std(z)
            aux.update(collapse.embedding_monitors(z))
            return loss, (train_state.split_model(model)[2], aux)

        (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = state.apply_gradients(tx, grads, model_state)
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    return train_step


def task(config: ml_collections.ConfigDict, data: run.RunData, mesh) -> run.Task:
    s = config.aug.image_size
    return pretrain.task(
        config,
        data,
        name="SimCLR",
        model_name=config.model.name,
        build_model=lambda rngs, channels: build_simclr_model(config.model, channels, rngs),
        make_step=lambda a: make_train_step(a.graphdef, a.tx, config.loss.temperature),
        transform=augment.TwoViews(config.aug),
        device_views=device_augment.two_views(config.aug),
        views={"view1": (s, s, data.channels), "view2": (s, s, data.channels)},
        views_per_image=2,
        probes={"": lambda m: m.encoder},
        collapse_advice=(
            "SimCLR needs negatives: raise config.batch_size or config.loss.temperature, or check "
            "that the two views differ (config.aug)."
        ),
    )


TRAINER = run.Trainer(pretrain.load_data, pretrain.abstract_data, task)

train_and_evaluate = TRAINER.train_and_evaluate
