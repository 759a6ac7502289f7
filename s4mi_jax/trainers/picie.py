"""Unsupervised segmentation, PiCIE (Cho et al., CVPR 2021; methods.md §4.6): `config.trainer = "picie"`.

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

import functools
import os
import time
from collections.abc import Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from s4mi_jax import kmeans, provenance
from s4mi_jax.core import optim, pretrained, sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.core.loop import log, train_loop
from s4mi_jax.core.metric_writer import MetricWriter, prepare_workdir, write_json
from s4mi_jax.core.train_state import TrainState
from s4mi_jax.data import augment, pipeline
from s4mi_jax.data import segmentation as segdata
from s4mi_jax.data.sources import FolderSource
from s4mi_jax.errors import ConfigError
from s4mi_jax.evaluators import clustering
from s4mi_jax.evaluators import segmentation as segmetrics
from s4mi_jax.losses import picie as L
from s4mi_jax.models.fpn import build_fpn
from s4mi_jax.trainers import segment


class Centroids(nnx.Variable):
    """Cluster centroids: state, not parameters (set by k-means, never by the optimizer)."""


def build_model(config: ml_collections.ConfigDict, in_channels: int, rngs: nnx.Rngs) -> nnx.Module:
    """The FPN with `centroids1`/`centroids2` (K, D) beside its `encoder` (so `init_from` finds it)."""
    model = build_fpn(config.model, in_channels, rngs)
    k, d = int(config.picie.num_clusters), int(config.model.get("feature_dim", 128))
    model.centroids1 = Centroids(jnp.zeros((k, d), jnp.float32))
    model.centroids2 = Centroids(jnp.zeros((k, d), jnp.float32))
    return model


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


def make_features_fn(graphdef: nnx.GraphDef, crop_scale: tuple[float, float]) -> Callable:
    """`(params, model_state, batch, rng) -> (f1, f2)`: L2-normalised, aligned feature maps of the
    two views (f1 of T(view1), T of view 2's features) in train mode; also the model after the pass
    (its BatchNorm statistics updated)."""

    def features(params, model_state, batch, rng):
        model = nnx.merge(graphdef, params, train_state.fresh(model_state))
        model.train()
        x1, x2 = batch["view1"], batch["view2"]
        boxes, flips = L.random_boxes(rng, x1.shape[0], x1.shape[1], crop_scale)
        n = x1.shape[0]
        f = model(jnp.concatenate([L.crop_flip(x1, boxes, flips), x2]))  # One pass, shared BN.
        f1, f2 = f[:n], L.crop_flip(f[n:], boxes, flips)
        return L.l2_normalize(f1), L.l2_normalize(f2), model

    return features


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    crop_scale: tuple[float, float],
    class_weights: str = "frequency",
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pure PiCIE step `(state, batch, rng) -> (state, metrics)`; `class_weights` is
    `config.loss.class_weights` (losses/picie.py)."""
    features = make_features_fn(graphdef, crop_scale)

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
def _set_centroids(state: TrainState, c1: jax.Array, c2: jax.Array) -> TrainState:
    ms = train_state.fresh(state.model_state)
    ms["centroids1"].value = L.l2_normalize(c1)
    ms["centroids2"].value = L.l2_normalize(c2)
    return state.replace(model_state=ms)


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


def make_predict_fn(graphdef: nnx.GraphDef):
    """Jitted `(params, model_state, images) -> cluster map` (nearest view-1 centroid, eval mode)."""

    @jax.jit
    def predict(params, model_state, images):
        model = nnx.merge(graphdef, params, model_state)
        model.eval()
        f = L.l2_normalize(model(images))
        labels = kmeans.assign(f.reshape(-1, f.shape[-1]), model.centroids1.value)
        return labels.reshape(f.shape[:-1])

    return predict


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


def score_clusters(
    clusters_val, y_val, clusters_test, y_test, num_clusters: int, num_classes: int
) -> dict:
    """Hungarian matching fit on validation, applied to test; PiCIE's matching on test itself.
    Returns {"mapping", "val", "test", "test_matched_on_test", "test_preds", "test_rows"}."""
    mapping = clustering.hungarian(
        clustering.confusion(clusters_val, y_val, num_clusters, num_classes)
    )
    out = {"mapping": [int(m) for m in mapping]}
    for split, c, y in (("val", clusters_val, y_val), ("test", clusters_test, y_test)):
        scores, preds = clustering.matched_scores(c, y, mapping, num_classes)
        summary, rows = segmetrics.dataset_metrics(preds, y, num_classes)
        out[split] = {**scores, **summary}
        if split == "test":
            out["test_preds"], out["test_rows"] = preds, rows
    own = clustering.hungarian(
        clustering.confusion(clusters_test, y_test, num_clusters, num_classes)
    )
    out["test_matched_on_test"] = clustering.matched_scores(
        clusters_test, y_test, own, num_classes
    )[0]
    return out


def baselines(val_images, test_images, y_val, y_test, num_classes: int) -> dict:
    """Label-free references: every pixel foreground (class 1), and a per-image threshold at the mean
    grey level (two "clusters", matched to classes on validation like PiCIE's)."""
    ones = np.ones_like(y_test)
    fg = clustering.matched_scores(ones, y_test, np.arange(2), num_classes)[0]
    fg.update(segmetrics.dataset_metrics(ones, y_test, num_classes)[0])

    def threshold(images):
        gray = images.astype(np.float32).mean(-1)
        return (gray > gray.mean(axis=(1, 2), keepdims=True)).astype(np.int32)

    thr = score_clusters(
        threshold(val_images), y_val, threshold(test_images), y_test, 2, num_classes
    )
    return {"all_foreground": fg, "mean_intensity_threshold": thr["test"]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    t_start = time.time()
    data = segdata.load(config.data, config.aug.image_size)
    manifest = segdata.make_manifest(data, config)
    num_classes, k = data.num_classes, int(config.picie.num_clusters)
    _check_config(config, num_classes)
    if config.init_from:
        pretrained.resolve(config.init_from)
    pool = np.sort(np.concatenate([manifest.train, manifest.unlabeled]))  # No labels used.
    mesh = sharding.make_mesh(config.mesh)
    local_batch = sharding.check_batch_size(config.batch_size, mesh)
    tx, schedule, total_steps, steps_per_epoch = optim.for_run(config, len(pool))
    graphdef, init, abstract_state = train_state.initializer(
        lambda rngs: build_model(config, data.channels, rngs),
        tx,
        config.seed,
        mesh,
        rules=sharding.rules_from_config(config),
    )
    crop_scale = tuple(config.picie.crop_scale)
    step_fn = train_state.jit_step(
        make_train_step(graphdef, tx, crop_scale, config.loss.class_weights),
        train_state.shardings_of(abstract_state),
        mesh,
    )
    kmeans_step = make_kmeans_fn(graphdef, crop_scale, int(config.picie.kmeans_iters))
    source = segdata.ArraySource(data, pool)
    views = PicieViews(config.aug)
    kw = dict(process_index=jax.process_index(), process_count=jax.process_count())
    data_iter = pipeline.train_iterator(
        source,
        views,
        batch_size=local_batch,
        seed=config.seed,
        num_workers=config.data.num_workers,
        **kw,
    )

    def refresh(state: TrainState, epoch: int) -> TrainState:
        it = pipeline.train_iterator(
            source, views, batch_size=local_batch, seed=config.seed + 7919 * (epoch + 1), **kw
        )
        rng = jax.random.fold_in(jax.random.fold_in(state.rng, 2**31 - 1), epoch)  # Not a step key.
        ms = state.model_state
        zeros = jnp.zeros((k,), jnp.float32)
        clusters = (ms["centroids1"].value, zeros, ms["centroids2"].value, zeros)
        fresh = jnp.asarray(epoch == 0)  # Random pixels first; the previous centroids after.
        for b in range(int(config.picie.kmeans_batches)):
            batch = sharding.put_batch(next(it), mesh)
            rng_b = jax.random.fold_in(rng, b)
            clusters = kmeans_step(state, batch, rng_b, clusters, first=b == 0, fresh=fresh)
        return _set_centroids(state, clusters[0], clusters[2])

    test_keys, test_images, test_y = segdata.test_split(config, data, manifest)  # Checked first.
    prepare_workdir(workdir, config)
    manifest.save(os.path.join(workdir, "manifest.json"))
    checkpointer = Checkpointer.for_run(workdir, config)
    meta = {"manifest_hash": manifest.hash, "label_fraction": 0.0}
    resume_step = checkpointer.latest_step()
    init_path = os.path.join(workdir, "init_from.json")
    if resume_step is not None:
        state = checkpointer.restore(abstract_state, data_iter)
        resume_step = checkpointer.latest_step()  # A damaged latest one was moved aside.
        log(f"resumed from step {resume_step} in {checkpointer.directory}")
    else:
        state = init()
        if config.init_from:
            state, encoder_path, init_step = pretrained.load_encoder(
                state, config.init_from, config.get("init_encoder")
            )
            write_json(
                init_path,
                {"init_from": config.init_from, "encoder": encoder_path, "step": init_step},
            )
            log(f"encoder initialised from {config.init_from}: {encoder_path} (step {init_step})")

    predict = make_predict_fn(graphdef)
    val_x, val_y = segdata.eval_arrays(data, manifest.val, config.aug)
    test_x = segdata.eval_images(test_images, config.aug)
    eval_batch = config.eval.batch_size
    sharding.check_batch_size(eval_batch, mesh, "config.eval.batch_size")

    def clusters_of(state, x):
        return segment.predict_all(predict, state, x, eval_batch, mesh)

    def validate(state: TrainState, step: int) -> dict[str, float]:
        c = clusters_of(state, val_x)  # Matching fit on validation, scored on it (monitoring only).
        mapping = clustering.hungarian(clustering.confusion(c, val_y, k, num_classes))
        scores, preds = clustering.matched_scores(c, val_y, mapping, num_classes)
        summary = segmetrics.dataset_metrics(preds, val_y, num_classes)[0]
        log(
            f"val pixel_accuracy {scores['pixel_accuracy']:.4f} miou {scores['miou']:.4f} "
            f"dice {summary['dice']:.4f} iou {summary['iou']:.4f}"
        )
        return {f"val/{m}": v for m, v in {**scores, **summary}.items()}

    log(
        f"picie: {len(pool)} training images (no masks used), val {len(val_x)}, test "
        f"{len(test_x)}; K={k}; {sum(x.size for x in jax.tree.leaves(state.params)) / 1e6:.2f}M "
        f"params; {total_steps} steps, {steps_per_epoch} per epoch"
    )
    writer = MetricWriter(workdir, resume_step=resume_step)
    state, stopped = train_loop(
        config,
        train_step=RefreshingStep(step_fn, refresh, steps_per_epoch, int(state.step)),
        state=state,
        data_iter=data_iter,
        mesh=mesh,
        checkpointer=checkpointer,
        writer=writer,
        total_steps=total_steps,
        images_per_step=config.batch_size,
        schedule=schedule,
        eval_fn=validate,
        meta=meta,
    )
    checkpointer.close()
    if stopped:
        writer.close()
        return {}

    scored = score_clusters(
        clusters_of(state, val_x), val_y, clusters_of(state, test_x), test_y, k, num_classes
    )
    preds = scored.pop("test_preds")
    per_image = [{"key": k, **r} for k, r in zip(test_keys, scored.pop("test_rows"), strict=True)]
    write_json(os.path.join(workdir, "test_per_image.json"), per_image)
    n_overlay = min(config.eval.overlays, len(test_x))
    if n_overlay and jax.process_index() == 0:
        segmetrics.write_overlays(
            os.path.join(workdir, "overlays", "test"),
            [k.replace("#", "_") for k in test_keys[:n_overlay]],
            test_images[:n_overlay],
            test_y[:n_overlay],
            preds[:n_overlay],
        )
    writer.write(int(state.step), {f"test/{m}": v for m, v in scored["test"].items()})
    writer.close()
    t = scored["test"]
    log(
        f"test (clusters matched on val as {scored['mapping']}): pixel_accuracy "
        f"{t['pixel_accuracy']:.4f}, miou {t['miou']:.4f}, dice {t['dice']:.4f}, iou {t['iou']:.4f}, "
        f"hd95 {t['hd95']:.2f}"
    )
    results = {
        "method": "picie",
        "label_fraction": 0.0,  # No training labels: the "unsupervised" row of the report.
        "seed": config.seed,
        "manifest_hash": manifest.hash,
        "dataset": os.path.basename(os.path.normpath(str(data.root))),
        "num_train": len(pool),
        "num_unlabeled": len(pool),
        "num_val": len(val_x),
        "num_test": len(test_x),
        "num_clusters": k,
        "cluster_to_class": scored["mapping"],
        "val": scored["val"],
        "test": t,
        "test_matched_on_test": scored["test_matched_on_test"],
        "baselines": baselines(data.images[manifest.val], test_images, val_y, test_y, num_classes),
        "init_from": segment._read_json(init_path),
    }
    for name, b in results["baselines"].items():
        log(
            f"baseline {name}: pixel_accuracy {b['pixel_accuracy']:.4f}, miou {b['miou']:.4f}, "
            f"dice {b['dice']:.4f}, iou {b['iou']:.4f}"
        )
    prov = provenance.record(
        config,
        t_start=t_start,
        source=FolderSource(data.root, verify=False),
        eval_source=segdata.eval_folder(config),
        manifest_hash=manifest.hash,
        resumed_from_step=resume_step,
    )
    results["wall_time_s"] = prov["wall_time_s"]
    results["environment"] = prov["environment"]
    results["provenance"] = prov
    write_json(os.path.join(workdir, "results.json"), results)
    return results
