"""DINO pretraining (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers") with a ViT or ResNet backbone.

Follows official `main_dino.py`: multi-crop (G global + L local crops; the teacher sees the globals, the
student every crop), teacher = EMA of the student with momentum on a cosine from `teacher_momentum` to 1,
centring with its own EMA, teacher temperature warm-up, AdamW with warm-up + cosine lr and a cosine
weight-decay schedule, per-parameter gradient clipping, and the head's last layer frozen for the first
`freeze_last_layer_epochs`. Choices where we differ: the teacher's BatchNorm (ResNet backbones) runs on
batch statistics as in the official code, and its running statistics are its own, not an EMA; freezing
zeroes the last layer's *updates* (its Adam moments still see its gradients), where PyTorch skips
the parameter.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from s4mi_jax.core import collapse, run, train_state
from s4mi_jax.core.ema import ema_update
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import augment, device_augment
from s4mi_jax.errors import ConfigError
from s4mi_jax.losses import dino as dino_losses
from s4mi_jax.losses.contrastive import embedding_std
from s4mi_jax.models.dino import TRAINABLE, build_dino_model
from s4mi_jax.trainers import pretrain


def _examples_first(x: jax.Array) -> jax.Array:
    """(B, V, H, W, C) crops -> (B*V, H, W, C), example-major: each device keeps its own examples'
    crops, so no data moves between devices (the BN statistics cover the same set in any order)."""
    return x.reshape((-1,) + x.shape[2:])


def _crops_first(y: jax.Array, crops: int) -> jax.Array:
    """(B*V, K) example-major outputs -> (V, B, K), the layout `dino_loss` takes."""
    return jnp.swapaxes(y.reshape((-1, crops) + y.shape[1:]), 0, 1)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    total_steps: int,
    steps_per_epoch: int,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pure DINO step `(state, batch, rng) -> (state, metrics)`; `rng` drives drop-path."""
    lc = config.loss
    temp_warmup = int(round(lc.teacher_temp_warmup_epochs * steps_per_epoch))
    freeze_steps = int(round(config.optim.freeze_last_layer_epochs * steps_per_epoch))
    momentum_schedule = lc.get("teacher_momentum_schedule", "cosine")
    if momentum_schedule not in ("cosine", "constant"):
        raise ConfigError(
            f"config.loss.teacher_momentum_schedule={momentum_schedule!r}: expected 'cosine' "
            "(official DINO) or 'constant' (lucidrains' Dino, S4MI)."
        )

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        n_global = batch["global"].shape[1]
        xg = _examples_first(batch["global"])
        xl = _examples_first(batch["local"]) if "local" in batch else None
        teacher_temp = dino_losses.teacher_temperature(
            state.step, lc.warmup_teacher_temp, lc.teacher_temp, temp_warmup
        )
        rng_g, rng_l = jax.random.split(rng)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, train_state.fresh(state.model_state))
            model.train()
            # The teacher's weights are not in `params`: no gradient can reach them.
            _, t_out = model.teacher(xg)
            t_out = _crops_first(jax.lax.stop_gradient(t_out), n_global)
            feats = model.student.encoder(xg, rng_g)
            bottleneck = model.student.head.bottleneck(feats)  # What the collapse alarm reads.
            s_out = [_crops_first(model.student.head.logits(bottleneck), n_global)]
            if xl is not None:
                s_out.append(_crops_first(model.student(xl, rng_l)[1], batch["local"].shape[1]))
            loss, aux = dino_losses.dino_loss(
                jnp.concatenate(s_out), t_out, model.center[...], lc.student_temp, teacher_temp
            )
            aux["embedding_std"] = embedding_std(feats)  # The encoder's features.
            aux.update(collapse.embedding_monitors(bottleneck))
            return loss, (train_state.split_model(model, TRAINABLE)[2], t_out, aux)

        (loss, (model_state, t_out, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        frozen = state.step < freeze_steps
        updates = jax.tree_util.tree_map_with_path(
            lambda path, u: (
                jnp.where(frozen, jnp.zeros_like(u), u)
                if any(getattr(p, "key", None) == "last_layer" for p in path)
                else u
            ),
            updates,
        )
        params = optax.apply_updates(state.params, updates)

        # After the student's update: teacher ← m·teacher + (1-m)·student; centre ← EMA of t_out.
        model = nnx.merge(graphdef, params, model_state)
        momentum = (
            jnp.asarray(lc.teacher_momentum, jnp.float32)
            if momentum_schedule == "constant"
            else dino_losses.teacher_momentum(state.step, lc.teacher_momentum, total_steps)
        )
        nnx.update(
            model.teacher,
            ema_update(
                nnx.state(model.teacher, nnx.Param), nnx.state(model.student, nnx.Param), momentum
            ),
        )
        model.center[...] = dino_losses.update_center(model.center[...], t_out, lc.center_momentum)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            model_state=train_state.split_model(model, TRAINABLE)[2],
            opt_state=opt_state,
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "teacher_temp": teacher_temp,
            "teacher_momentum": momentum,
            **aux,
        }
        return new_state, metrics

    return train_step


def task(config: ml_collections.ConfigDict, data: run.RunData, mesh) -> run.Task:
    a, c = config.aug, data.channels
    return pretrain.task(
        config,
        data,
        name="DINO",
        model_name=config.model.name,
        build_model=lambda rngs, channels: build_dino_model(config.model, channels, rngs),
        make_step=lambda s: make_train_step(
            s.graphdef, s.tx, config, s.total_steps, s.steps_per_epoch
        ),
        transform=augment.MultiCrop(a),
        device_views=device_augment.multi_crop(a),
        views={
            "global": (a.num_global_crops, a.image_size, a.image_size, c),
            "local": (a.num_local_crops, a.local_image_size, a.local_image_size, c),
        },
        views_per_image=a.num_global_crops + a.num_local_crops,
        # Official DINO evaluates the teacher; the student is probed too for comparison.
        probes={"": lambda m: m.teacher.encoder, "student": lambda m: m.student.encoder},
        trainable=TRAINABLE,
        # `config.init_from`: the same pretrained encoder for the student and the teacher.
        starts=tuple(
            s for net in ("student", "teacher") for s in run.config_start(config, f"{net}/encoder")
        ),
        collapse_advice=(
            "DINO: check the head (a narrow head needs the fan-in-aware init of models/dino.py). "
            "At narrow ResNet widths the head drifts this way while the encoder still learns: "
            "judge the run by its probe; freezing the prototypes for the whole run "
            "(config.optim.freeze_last_layer_epochs) let the head recover (docs/self_supervised.md)."
        ),
    )


TRAINER = run.Trainer(pretrain.load_data, pretrain.abstract_data, task)

train_and_evaluate = TRAINER.train_and_evaluate
