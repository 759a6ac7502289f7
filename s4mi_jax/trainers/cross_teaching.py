"""Cross teaching between a CNN and a transformer (S4MI `train_CT_between_cnn_transformer_2D.py`,
after Luo et al. 2022): `config.trainer = "cross_teaching"`.

Both networks see the labeled and unlabeled images in one train-mode pass each (shared BatchNorm,
dropout / drop-path on). Each is supervised on the labeled part (½[CE_w + Dice]) and taught on the
unlabeled part by the *other* network's hard argmax pseudo-labels (stop-gradient, no threshold, no
EMA), with Dice only:

    L = L_sup,cnn + λ(t)·Dice(p_cnn(u), ŷ_transformer) + L_sup,tr + λ(t)·Dice(p_tr(u), ŷ_cnn)

λ(t) = `consistency` · exp(−5(1 − e/`rampup_length`)²), e = min(⌊t / `rampup_divisor`⌋, length)
(S4MI: 0.1, 200, 150). One summed loss, one backward pass; each network has its own optimizer state
(`optim.per_branch`). Both networks are evaluated and selected separately; the CNN is the method's
result (`test`), the transformer's is `test_transformer`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from s4mi_jax.core import optim, run, train_state
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.losses import segmentation as seglosses
from s4mi_jax.models.segmenter import BRANCHES, build_cross_teaching
from s4mi_jax.trainers import segment


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    weights: jax.Array | None,
    num_classes: int,
    cfg: ml_collections.ConfigDict,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pure cross-teaching step; `cfg` = `config.cross_teaching`."""

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        xl, yl, u = batch["image"], batch["mask"], batch["u_weak"]
        nl = xl.shape[0]
        x = jnp.concatenate([xl, u])
        weight = seglosses.sigmoid_rampup(
            state.step, weight=cfg.consistency, length=cfg.rampup_length, divisor=cfg.rampup_divisor
        )
        keys = dict(zip(BRANCHES, jax.random.split(rng, len(BRANCHES)), strict=True))

        def loss_fn(params):
            model = nnx.merge(graphdef, params, train_state.fresh(state.model_state))
            model.train()
            logits = {b: getattr(model, b)(x, keys[b]) for b in BRANCHES}
            pseudo = {b: seglosses.pseudo_labels(logits[b][nl:])[0] for b in BRANCHES}
            other = {"cnn": "transformer", "transformer": "cnn"}
            total, aux = 0.0, {}
            for b in BRANCHES:
                sup, _ = seglosses.supervised_loss(logits[b][:nl], yl, weights, num_classes)
                probs_u = jax.nn.softmax(logits[b][nl:].astype(jnp.float32))
                cross = seglosses.dice_loss(
                    probs_u.astype(logits[b].dtype), pseudo[other[b]], num_classes
                )
                total = total + sup + weight * cross
                aux[f"loss_sup_{b}"], aux[f"loss_cross_{b}"] = sup, cross
                aux[f"pixel_accuracy_{b}"] = segment.pixel_accuracy(logits[b][:nl], yl)
            return total, (train_state.split_model(model)[2], aux)

        (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = state.apply_gradients(tx, grads, model_state)
        metrics = {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "consistency_weight": weight,
        }
        metrics.update({f"grad_norm_{b}": optax.global_norm(grads[b]) for b in BRANCHES})
        return new_state, {**metrics, **aux}

    return train_step


def task(config: ml_collections.ConfigDict, data: run.RunData, mesh) -> run.Task:
    c = config.data.num_classes
    return segment.task(
        config,
        data,
        mesh,
        name="cross_teaching",
        build_model=lambda rngs, ch: build_cross_teaching(config.model, ch, c, rngs),
        make_step=lambda a, w: make_train_step(a.graphdef, a.tx, w, c, config.cross_teaching),
        predictors={"": lambda m: m.cnn, "transformer": lambda m: m.transformer},
        unlabeled=("u_weak",),
        wrap_tx=lambda tx: optim.per_branch(tx, BRANCHES),
        init_prefix=None,
    )


TRAINER = run.Trainer(segment.load_data, segment.abstract_data, task)

train_and_evaluate = TRAINER.train_and_evaluate
