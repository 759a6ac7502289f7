"""FixMatch for segmentation, as UniMatch implements it (Yang et al. 2023): `config.trainer =
"fixmatch_seg"`.

Per step: a labeled batch (paired geometric augmentation) and an unlabeled batch of
`config.unlabeled_batch_size` images (the ratio μ is the two batch sizes' ratio), each as a weak view
(geometry only) and a strong view (the weak view + colour jitter / grayscale / blur, then CutMix with
probability `fixmatch.cutmix_prob`: a box pasted from the next image of the unlabeled batch).

- Pseudo-labels: argmax and max-softmax confidence of the weak view under stop-gradient, from the
  student's own train-mode pass over labeled + weak images together (one pass, shared BatchNorm, as
  UniMatch), or, with `fixmatch.ema_decay > 0`, from an EMA teacher in eval mode (FixMatch's EMA;
  the teacher is then also the evaluated network). Pasted CutMix regions take the partner image's
  pseudo-labels and confidences (UniMatch predicts the partner separately in eval mode; here the
  partner's weak prediction from the same pass is used).
- Loss: (L_x + λ_u·L_u) / 2 (UniMatch), L_x = ½[CE_w + Dice] on the labeled batch, L_u = Σ CE·[conf ≥ τ]
  / number of **all** unlabeled pixels (UniMatch divides by every pixel, not the confident ones).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from s4mi_jax.core import run, train_state
from s4mi_jax.core.ema import ema_update
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data.segmentation import cutmix_boxes
from s4mi_jax.losses import segmentation as seglosses
from s4mi_jax.models.segmenter import build_segmenter
from s4mi_jax.trainers import segment

TRAINABLE_WITH_TEACHER = nnx.All(nnx.Param, nnx.PathContains("student"))


class StudentTeacher(nnx.Module):
    """The student and its EMA teacher (the teacher's weights ride in `model_state`: no gradient)."""

    def __init__(self, student: nnx.Module, teacher: nnx.Module):
        self.student = student
        self.teacher = teacher


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    weights: jax.Array | None,
    num_classes: int,
    cfg: ml_collections.ConfigDict,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pure FixMatch step `(state, batch, rng) -> (state, metrics)`; `cfg` = `config.fixmatch`."""
    use_teacher = cfg.ema_decay > 0
    trainable = TRAINABLE_WITH_TEACHER if use_teacher else nnx.Param

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        xl, yl = batch["image"], batch["mask"]
        uw, us = batch["u_weak"], batch["u_strong"]
        nl, nu, h, w = xl.shape[0], uw.shape[0], uw.shape[1], uw.shape[2]
        k1, k2, k_mix = jax.random.split(rng, 3)
        box = cutmix_boxes(k_mix, nu, h, w, prob=cfg.cutmix_prob)
        us_mixed = jnp.where(box[..., None], jnp.roll(us, 1, axis=0), us)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, train_state.fresh(state.model_state))
            model.train()
            net = model.student if use_teacher else model
            logits = net(jnp.concatenate([xl, uw]), k1)
            logits_l, logits_w = logits[:nl], logits[nl:]
            if use_teacher:
                model.teacher.eval()
                logits_w = model.teacher(uw)
            target, conf = seglosses.pseudo_labels(logits_w)  # stop-gradient inside.
            target = jnp.where(box, jnp.roll(target, 1, axis=0), target)
            conf = jnp.where(box, jnp.roll(conf, 1, axis=0), conf)
            loss_x, aux = seglosses.supervised_loss(logits_l, yl, weights, num_classes)
            loss_u, confident = seglosses.fixmatch_unlabeled_loss(
                net(us_mixed, k2), target, conf, cfg.threshold
            )
            loss = (loss_x + cfg.unlabeled_weight * loss_u) / 2
            aux.update(
                loss_x=loss_x,
                loss_u=loss_u,
                confident_fraction=confident,
                pixel_accuracy=segment.pixel_accuracy(logits_l, yl),
            )
            return loss, (train_state.split_model(model, trainable)[2], aux)

        (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if use_teacher:  # teacher <- d·teacher + (1-d)·student (weights and BN statistics).
            model = nnx.merge(graphdef, params, model_state)
            nnx.update(
                model.teacher,
                ema_update(
                    nnx.state(model.teacher, (nnx.Param, nnx.BatchStat)),
                    nnx.state(model.student, (nnx.Param, nnx.BatchStat)),
                    cfg.ema_decay,
                ),
            )
            model_state = train_state.split_model(model, trainable)[2]
        new_state = state.replace(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
        )
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    return train_step


def task(config: ml_collections.ConfigDict, data: run.RunData, mesh) -> run.Task:
    c, fm = config.data.num_classes, config.fixmatch
    use_teacher = fm.ema_decay > 0

    def build(rngs, ch):
        student = build_segmenter(config.model, ch, c, rngs)
        if not use_teacher:
            return student
        teacher = build_segmenter(config.model, ch, c, rngs)
        nnx.update(teacher, nnx.state(student))  # The teacher starts as the student.
        return StudentTeacher(student, teacher)

    return segment.task(
        config,
        data,
        mesh,
        name="fixmatch_seg",
        build_model=build,
        make_step=lambda a, w: make_train_step(a.graphdef, a.tx, w, c, fm),
        predictors={"": (lambda m: m.teacher) if use_teacher else (lambda m: m)},
        unlabeled=("u_weak", "u_strong"),
        trainable=TRAINABLE_WITH_TEACHER if use_teacher else nnx.Param,
        init_prefix=None if use_teacher else "encoder",
    )


TRAINER = run.Trainer(segment.load_data, segment.abstract_data, task)

train_and_evaluate = TRAINER.train_and_evaluate
