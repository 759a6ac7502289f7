"""CASS pretraining: a CNN and a ViT trained together, each other's positive pair (Singh et al. 2023).

The same augmented image goes through both networks; the loss is `2 - 2 cos` between their outputs, with
gradients into both and no stop-gradient, momentum encoder or negatives. One train state holds both
networks; `optim.per_branch` gives each its own optimizer state, as the reference's two torch optimizers.

Both networks start pretrained (`config.model.{cnn,vit}.init_from`), as the original always does (timm
ImageNet weights): the loss has no negatives, predictor or stop-gradient, so "both output one constant" is
an exact minimum, and from random initialisation the two networks reach it (the collapse alarm fires).
Defaults are the method as described (gradients fresh every step, SSL on every training image, labeled or
not, never on validation/test patients). `configs/cass_chest.py:reference` reproduces the released
notebook's settings, including its missing `zero_grad()` (`optim.never_zero_grad`); its other quirk,
pretraining on the labeled subset only, is not reproduced.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from s4mi_jax.core import collapse, optim, run, train_state
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import augment, device_augment
from s4mi_jax.losses.contrastive import cosine_regression, embedding_std
from s4mi_jax.models.cass import BRANCHES, build_cass_model
from s4mi_jax.trainers import pretrain


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pure CASS step `(state, batch, rng) -> (state, metrics)`; `rng` drives ViT drop-path."""

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        x = batch["image"]

        def loss_fn(params):
            model = nnx.merge(graphdef, params, train_state.fresh(state.model_state))
            model.train()
            _, z_cnn = model.cnn(x, rng)
            _, z_vit = model.vit(x, rng)
            loss, aux = cosine_regression(z_cnn, z_vit)
            aux.update(
                embedding_std_cnn=embedding_std(z_cnn), embedding_std_vit=embedding_std(z_vit)
            )
            # The alarm reads the more collapsed branch: `2 - 2 cos` is minimal when both agree on
            # one constant, so the branch cosine alone cannot tell learning from collapse.
            cnn, vit = collapse.embedding_monitors(z_cnn), collapse.embedding_monitors(z_vit)
            aux.update({k: jnp.minimum(cnn[k], vit[k]) for k in cnn})
            return loss, (train_state.split_model(model)[2], aux)

        (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = state.apply_gradients(tx, grads, model_state)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
        metrics.update({f"grad_norm_{b}": optax.global_norm(grads[b]) for b in BRANCHES})
        return new_state, metrics

    return train_step


def task(config: ml_collections.ConfigDict, data: run.RunData, mesh) -> run.Task:
    s = config.aug.image_size
    return pretrain.task(
        config,
        data,
        name="CASS",
        model_name=f"{config.model.cnn.name} + {config.model.vit.name}",
        build_model=lambda rngs, channels: build_cass_model(config.model, channels, rngs),
        make_step=lambda a: make_train_step(a.graphdef, a.tx),
        transform=augment.OneView(config.aug),
        device_views=device_augment.one_view(config.aug),
        views={"image": (s, s, data.channels)},
        views_per_image=1,
        probes={b: (lambda m, b=b: getattr(m, b).encoder) for b in BRANCHES},
        wrap_tx=lambda tx: optim.per_branch(tx, BRANCHES),
        starts=tuple(
            run.Start(
                f"{b}/encoder",
                config.model[b].init_from,
                config.model[b].get("init_encoder") or None,
                key=f"config.model.{b}.init_from",
            )
            for b in BRANCHES
            if config.model[b].get("init_from")
        ),
        collapse_advice=(
            "CASS has no negatives, predictor or stop-gradient, so both networks agreeing on a "
            "constant is a minimum of its loss: start both from pretrained weights "
            "(config.model.cnn.init_from / config.model.vit.init_from), as the original does."
        ),
    )


TRAINER = run.Trainer(pretrain.load_data, pretrain.abstract_data, task)

train_and_evaluate = TRAINER.train_and_evaluate
