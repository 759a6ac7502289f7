"""Unsupervised segmentation, PiCIE (Cho et al., CVPR 2021): `config.trainer = "picie"`.

S4MI's unsupervised baseline. No mask is used for training: the network is trained on every image of
the training pool (the manifest's labeled and unlabeled training images alike; never validation or
test images). Masks are used only to score it:

* Model: a ResNet + FPN giving a 128-d feature per pixel (models/fpn.py; `config.init_from` loads an
  SSL-pretrained encoder), plus two sets of K centroids (`config.picie.num_clusters`, 2 =
  foreground/background) held as non-trainable state (`Centroids`) and saved with the checkpoints.
* Each epoch (`steps_per_epoch` = pool size // batch size) starts by re-clustering: the features of
  `config.picie.kmeans_batches` fresh batches of both views (train-mode BatchNorm, no statistics
  update) are clustered on device (s4mi_jax/kmeans.py): `kmeans_iters` Lloyd iterations on the first
  batch (from random pixels at the first epoch, from the previous centroids after), then one
  mini-batch k-means step per further batch; the centroids are L2-normalised (cosine metric).
* Train step: PiCIE's within- plus cross-view loss (losses/picie.py). Labels are the nearest centroid
  of the current features under stop-gradient (PiCIE labels the whole pool once per epoch in a
  separate pass; here they come from the same forward pass, with the epoch's centroids). The CE's
  class weights (`config.loss.class_weights`) are PiCIE's label frequencies by default.
* Evaluation: each pixel goes to its nearest view-1 centroid (eval mode). Clusters are matched to
  classes by the Hungarian algorithm **fit on the validation split** and that mapping is applied to
  the test split (`test`: pixel accuracy, mIoU and the segmentation metrics Dice/IoU/HD95/ASD);
  `test_matched_on_test` repeats PiCIE's own protocol (matching fit on the scored split itself).
  There is no model selection (it would use labels): the final model is tested. For context,
  `baselines` scores "all foreground" and a per-image mean-intensity threshold (its polarity matched
  on validation the same way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from s4mi_jax.core import run, sharding, train_state
from s4mi_jax.core.loop import log
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import augment, pipeline
from s4mi_jax.data import segmentation as segdata
from s4mi_jax.data.sources import FolderSource
from s4mi_jax.errors import ConfigError
from s4mi_jax.evaluators import clustering
from s4mi_jax.losses import picie as L
from s4mi_jax.models import picie as picie_model


class PicieViews(grain.transforms.RandomMap):
    """record -> {"view1", "view2"}: two independent photometric views (`config.aug.strong`: jitter,
    grayscale, blur), normalised; the geometric transform is drawn on device, in the step."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        x = element["image"].astype(np.float32) / 255.0
        return {
            f"view{i}": augment.normalize(
                segdata.strong_photometric(x, rng, self.cfg.strong), self.cfg
            )
            for i in (1, 2)
        }


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    crop_scale: tuple[float, float],
    class_weights: str = "frequency",
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pure PiCIE step `(state, batch, rng) -> (state, metrics)`; `class_weights` is
    `config.loss.class_weights` (losses/picie.py)."""
    features = picie_model.make_features_fn(graphdef, crop_scale)

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        def loss_fn(params):
            f1, f2, model = features(params, state.model_state, batch, rng)
            mu1, mu2 = model.centroids1.value, model.centroids2.value
            loss, aux = L.picie_loss(f1, f2, mu1, mu2, class_weights)
            return loss, (train_state.split_model(model)[2], aux)

        (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = state.apply_gradients(tx, grads, model_state)
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    return train_step


class RefreshingStep:
    """The train step, preceded at every epoch start (step % steps_per_epoch == 0) by the centroid
    refresh. The step count is kept in Python (no device sync); the refresh's batches come from an
    iterator seeded by (seed, epoch), so a resumed run refreshes exactly as an uninterrupted one."""

    def __init__(self, step_fn, refresh: Callable, steps_per_epoch: int, start_step: int):
        self.step_fn, self.refresh = step_fn, refresh
        self.steps_per_epoch, self.step = steps_per_epoch, start_step

    def __call__(self, state, batch, rng):
        if self.step % self.steps_per_epoch == 0:
            state = self.refresh(state, self.step // self.steps_per_epoch)
        self.step += 1
        return self.step_fn(state, batch, rng)


def _check_config(config: ml_collections.ConfigDict, num_classes: int) -> None:
    p = config.picie
    if int(p.num_clusters) < 2:
        raise ConfigError(f"config.picie.num_clusters={p.num_clusters}: need at least 2.")
    if int(p.kmeans_batches) < 1 or int(p.kmeans_iters) < 1:
        raise ConfigError(
            f"config.picie.kmeans_batches={p.kmeans_batches} and config.picie.kmeans_iters="
            f"{p.kmeans_iters} must be >= 1."
        )
    L.check_class_weights(config.loss.class_weights)
    lo, hi = tuple(p.crop_scale)
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"config.picie.crop_scale={tuple(p.crop_scale)}: need 0 < lo <= hi <= 1.")
    if int(p.num_clusters) < num_classes:
        log(
            f"warning: config.picie.num_clusters={p.num_clusters} < {num_classes} classes: some "
            "classes can never be predicted."
        )


class PicieContent(NamedTuple):
    data: Any  # data/segmentation.SegmentationData
    manifest: Any
    pool: np.ndarray  # Every training image, labeled or not (no mask is read for training).
    test: segdata.TestSplit  # The manifest's test split, or `data.eval_root`.


def load_data(config: ml_collections.ConfigDict) -> run.RunData:
    data = segdata.load(config.data, config.aug.image_size)
    manifest = segdata.make_manifest(data, config)
    _check_config(config, data.num_classes)
    pool = np.sort(np.concatenate([manifest.train, manifest.unlabeled]))
    test = segdata.test_split(config, data, manifest)  # Checked before anything is written.
    return run.RunData(
        channels=data.channels,
        num_examples=len(pool),
        manifest=manifest,
        sources={
            "dataset": FolderSource(data.root, verify=False),
            "eval_dataset": segdata.eval_folder(config),
        },
        meta={"manifest_hash": manifest.hash, "label_fraction": 0.0},
        content=PicieContent(data, manifest, pool, test),
    )


def abstract_data(config: ml_collections.ConfigDict) -> run.RunData:
    """No data read (AOT): channels from `config.data.channels` (default 3)."""
    return run.RunData(config.data.channels or 3, config.batch_size)


def task(config: ml_collections.ConfigDict, data: run.RunData, mesh) -> run.Task:
    _check_config(config, config.data.get("num_classes") or 2)
    c, k, b, s = (
        data.content,
        int(config.picie.num_clusters),
        config.batch_size,
        config.aug.image_size,
    )
    crop_scale, views = tuple(config.picie.crop_scale), PicieViews(config.aug)

    def refreshing(built: run.Built, step_fn, start_step: int) -> RefreshingStep:
        kmeans_step = picie_model.make_kmeans_fn(
            built.graphdef, crop_scale, int(config.picie.kmeans_iters)
        )
        source = segdata.ArraySource(c.data, c.pool)

        def refresh(state: TrainState, epoch: int) -> TrainState:
            seed = config.seed + 7919 * (epoch + 1)
            it = pipeline.run_iterator(config, source, views, seed=seed, num_workers=0)
            rng = jax.random.fold_in(
                jax.random.fold_in(state.rng, 2**31 - 1), epoch
            )  # No step key.
            ms, zeros = state.model_state, jnp.zeros((k,), jnp.float32)
            clusters = (ms["centroids1"].value, zeros, ms["centroids2"].value, zeros)
            fresh = jnp.asarray(epoch == 0)  # Random pixels first; the previous centroids after.
            for i in range(int(config.picie.kmeans_batches)):
                batch = sharding.put_batch(next(it), mesh)
                rng_b = jax.random.fold_in(rng, i)
                clusters = kmeans_step(state, batch, rng_b, clusters, first=i == 0, fresh=fresh)
            return picie_model.set_centroids(state, clusters[0], clusters[2])

        return RefreshingStep(step_fn, refresh, built.steps_per_epoch, start_step)

    summary = "picie"
    if c is not None:
        summary = (
            f"picie: {len(c.pool)} training images (no masks used), val {len(c.manifest.val)}, "
            f"test {len(c.test.keys)}; K={k}"
        )
    return run.Task(
        name="picie",
        build_model=lambda rngs: picie_model.build_model(config, data.channels, rngs),
        make_step=lambda a: make_train_step(
            a.graphdef, a.tx, crop_scale, config.loss.class_weights
        ),
        batch_shapes={v: ((b, s, s, data.channels), jnp.float32) for v in ("view1", "view2")},
        summary=summary,
        make_iterator=None
        if c is None
        else lambda: pipeline.run_iterator(config, segdata.ArraySource(c.data, c.pool), views),
        evaluator=clustering.picie_evaluator,
        starts=run.config_start(config),
        examples_per_step=b,
        wrap_step=refreshing,
    )


TRAINER = run.Trainer(load_data, abstract_data, task)

train_and_evaluate = TRAINER.train_and_evaluate
