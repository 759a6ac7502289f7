"""PiCIE: on-device k-means equals scikit-learn, the equivariance transform is exact, Hungarian
matching on a hand-made confusion matrix, the loss equals NumPy, and a tiny run writes its results."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.cluster import KMeans, MiniBatchKMeans

from configs import picie_ph2
from s4mi_jax import kmeans
from s4mi_jax.core import sharding, train_state
from s4mi_jax.data import segmentation as segdata
from s4mi_jax.evaluators import clustering
from s4mi_jax.losses import picie as L
from s4mi_jax.models import picie as picie_model
from s4mi_jax.trainers import picie
from tests.helpers import make_seg_folder, max_abs_diff, override


def _blobs(n=240, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    return centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))


def test_lloyd_matches_sklearn_kmeans():
    x = _blobs()
    init = x[[0, 1, 2]]
    ref = KMeans(3, init=init, n_init=1, max_iter=3, tol=0.0, algorithm="lloyd").fit(x)
    with jax.enable_x64(True):
        c, n = jax.jit(kmeans.lloyd, static_argnums=2)(jnp.asarray(x), jnp.asarray(init), 3)
        np.testing.assert_allclose(np.asarray(c), ref.cluster_centers_, rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(np.asarray(n), np.bincount(ref.labels_, minlength=3))
        np.testing.assert_array_equal(np.asarray(kmeans.assign(jnp.asarray(x), c)), ref.predict(x))


def test_minibatch_update_matches_sklearn_partial_fit_and_ignores_padding():
    x = _blobs(seed=1)
    init = x[[0, 5, 9]]
    ref = MiniBatchKMeans(3, init=init, n_init=1, reassignment_ratio=0.0, batch_size=60)
    with jax.enable_x64(True):
        c, n = jnp.asarray(init), jnp.zeros(3)
        update = jax.jit(kmeans.minibatch_update)
        for batch in np.split(x, 4):
            ref.partial_fit(batch)
            padded = jnp.asarray(np.concatenate([batch, np.full((7, 5), 1e3)]))
            valid = jnp.arange(67) < 60
            c, n = update(c, n, padded, valid)
            np.testing.assert_allclose(np.asarray(c), ref.cluster_centers_, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(np.asarray(n), ref._counts)


def test_crop_flip_samples_the_box_exactly():
    """Bilinear sampling of a linear ramp is exact: output pixel (i, j) of box (y0, x0, s) holds the
    ramp at (y0 + (i+½)s/H − ½, x0 + (j+½)s/W − ½); a flip reverses the columns."""
    h = w = 16
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    img = np.stack([3.0 * yy + 0.5 * xx, -xx], -1)[None]
    box = np.array([[2.5, 3.0, 9.0]])
    with jax.enable_x64(True):
        both = jax.jit(L.crop_flip)(
            jnp.asarray(np.repeat(img, 2, 0)),
            jnp.asarray(np.repeat(box, 2, 0)),
            jnp.array([0, 1]) > 0,
        )
        out, flipped = np.asarray(both[:1]), np.asarray(both[1:])
    sy = 2.5 + (np.arange(h) + 0.5) * 9.0 / h - 0.5
    sx = 3.0 + (np.arange(w) + 0.5) * 9.0 / w - 0.5
    expected = np.stack([3.0 * sy[:, None] + 0.5 * sx[None], -np.broadcast_to(sx, (h, w))], -1)
    np.testing.assert_allclose(out[0], expected, atol=1e-9)
    np.testing.assert_allclose(flipped[0], expected[:, ::-1], atol=1e-9)


class _Pointwise(nnx.Module):
    """A 1×1 linear feature map (commutes with any resampling) with PiCIE's centroid state."""

    def __init__(self, rngs):
        self.proj = nnx.Linear(3, 6, rngs=rngs)
        self.centroids1 = picie_model.Centroids(jnp.zeros((2, 6)))
        self.centroids2 = picie_model.Centroids(jnp.zeros((2, 6)))

    def __call__(self, x, rng=None):
        return self.proj(x)


def test_feature_maps_of_the_two_views_align():
    """Equivariance as the step computes it: features of the cropped/flipped view 1 and view 2's
    features put through the same transform coincide (one image as both views)."""
    graphdef, params, rest = nnx.split(_Pointwise(nnx.Rngs(0)), nnx.Param, ...)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 3)), jnp.float32)
    features = jax.jit(picie_model.make_features_fn(graphdef, (0.2, 0.6)))
    f1, f2, _ = features(params, rest, {"view1": x, "view2": x}, jax.random.PRNGKey(3))
    np.testing.assert_allclose(np.asarray(f1), np.asarray(f2), atol=1e-5)
    # Without the alignment, the maps differ: the test can fail.
    f_raw = L.l2_normalize(nnx.merge(graphdef, params, rest)(x))
    assert np.abs(np.asarray(f_raw) - np.asarray(f1)).max() > 0.1


def test_sharded_step_equals_single_device():
    """The step on 8 devices (batch split, class weights from the global batch) equals 1 device."""
    rng = np.random.default_rng(1)
    views = {f"view{i}": rng.normal(size=(8, 8, 8, 3)).astype(np.float32) for i in (1, 2)}
    mu = rng.normal(size=(2, 2, 6)).astype(np.float32)
    tx = optax.adam(1e-2)
    out = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)), devices)
        graphdef, init, abstract = train_state.initializer(_Pointwise, tx, 0, mesh)
        step = train_state.jit_step(
            picie.make_train_step(graphdef, tx, (0.3, 1.0)),
            train_state.shardings_of(abstract),
            mesh,
        )
        state = picie_model.set_centroids(init(), mu[0], mu[1])
        out.append(step(state, sharding.put_batch(views, mesh), jax.random.PRNGKey(0)))
    (s1, m1), (s8, m8) = out
    assert float(m1["loss"]) == pytest.approx(float(m8["loss"]), rel=1e-5)
    assert max_abs_diff(s1.params, s8.params) < 1e-6


def test_hungarian_on_a_hand_made_confusion_matrix():
    conf = np.array([[5, 40, 1], [30, 2, 3], [0, 1, 20], [4, 6, 3]])  # 4 clusters x 3 classes.
    mapping = clustering.hungarian(conf)
    # Best one-to-one: 0->1, 1->0, 2->2 (90 pixels); cluster 3 left over -> its majority class 1.
    np.testing.assert_array_equal(mapping, [1, 0, 2, 1])
    clusters = np.array([[0, 1, 2, 3], [3, 3, 1, 0]])
    labels = np.array([[1, 0, 2, 0], [1, 2, 0, 1]])
    scores, preds = clustering.matched_scores(clusters, labels, mapping, 3)
    np.testing.assert_array_equal(preds, [[1, 0, 2, 1], [1, 1, 0, 1]])
    # Correct: 6 of 8. IoU: class 0: tp 2 / (3 + 2 − 2) = 2/3; class 1: 3 / (5 + 3 − 3); class 2: 1/2.
    assert scores["pixel_accuracy"] == pytest.approx(6 / 8)
    assert scores["miou"] == pytest.approx((2 / 3 + 3 / 5 + 1 / 2) / 3)


def _picie_loss_numpy(f1, f2, mu1, mu2, weight_of_counts):
    """PiCIE's loss in float64, each CE torch's `CrossEntropyLoss(weight=w)`: Σ w_y·nll / Σ w_y."""
    d, k = f1.shape[-1], len(mu1)

    def ce(f, mu, y):
        z = f.reshape(-1, d) @ mu.T
        nll = -(z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(len(y)), y]
        w = weight_of_counts(np.bincount(y, minlength=k).astype(np.float64))[y]
        return (w * nll).sum() / w.sum()

    y1 = np.argmin(((f1.reshape(-1, 1, d) - mu1) ** 2).sum(-1), -1)
    y2 = np.argmin(((f2.reshape(-1, 1, d) - mu2) ** 2).sum(-1), -1)
    assert len(set(np.bincount(y1, minlength=k))) == k  # Unequal counts: the weightings differ.
    within = (ce(f1, mu1, y1) + ce(f2, mu2, y2)) / 2
    cross = (ce(f1, mu2, y2) + ce(f2, mu1, y1)) / 2
    return (within + cross) / 2, cross


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize(
    "class_weights,weight_of_counts",
    [
        (None, lambda n: n / n.sum()),  # The default: PiCIE's `compute_labels` frequencies.
        ("frequency", lambda n: n / n.sum()),
        ("inverse", lambda n: 1.0 / n),  # The former default, class-balanced.
        ("none", lambda n: np.ones_like(n)),
    ],
)
def test_picie_loss_matches_numpy(class_weights, weight_of_counts):
    rng = np.random.default_rng(0)
    f1, f2, mu1, mu2 = (
        _unit(rng, 2, 3, 4, 5),
        _unit(rng, 2, 3, 4, 5),
        _unit(rng, 3, 5),
        _unit(rng, 3, 5),
    )
    loss_fn = L.picie_loss
    if class_weights is not None:
        loss_fn = functools.partial(L.picie_loss, class_weights=class_weights)
    loss, aux = jax.jit(loss_fn)(*map(jnp.asarray, (f1, f2, mu1, mu2)))
    want, want_cross = _picie_loss_numpy(f1, f2, mu1, mu2, weight_of_counts)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(aux["loss_cross"]) == pytest.approx(want_cross, rel=1e-5)


def test_picie_inverse_weights_reproduce_the_former_default():
    """The "inverse" weighting gives what the loss gave before the default became PiCIE's frequencies
    (the value below is that code's output on these inputs); the default differs from it."""
    rng = np.random.default_rng(0)
    args = [jnp.asarray(_unit(rng, *s)) for s in ((2, 3, 4, 5), (2, 3, 4, 5), (3, 5), (3, 5))]
    inverse = float(L.picie_loss(*args, class_weights="inverse")[0])
    assert inverse == pytest.approx(0.9785426259040833, rel=1e-5)
    assert float(L.picie_loss(*args)[0]) == pytest.approx(0.9848442077636719, rel=1e-5)


def test_tiny_picie_run_writes_results(tmp_path):
    root = make_seg_folder(tmp_path / "data", n=20, size=16, unlabeled=(0, 1))
    config = override(
        picie_ph2.get_config("local"),
        **{
            "data.root": root,
            "data.verify": False,
            "aug.image_size": 16,
            "total_epochs": 2.0,  # 14 pool images: 2 epochs of 1 step, each re-clustered first.
            "picie.kmeans_batches": 1,
        },
    )
    workdir = str(tmp_path / "run")
    results = picie.train_and_evaluate(config, workdir)
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    assert on_disk["method"] == "picie" and on_disk["label_fraction"] == 0.0
    assert on_disk["num_train"] == 14  # Labeled and unlabeled training images; no val/test.
    assert sorted(on_disk["cluster_to_class"]) == [0, 1]
    for key in ("pixel_accuracy", "miou", "dice", "iou", "hd95"):
        assert np.isfinite(results["test"][key])
    assert set(results["baselines"]) == {"all_foreground", "mean_intensity_threshold"}
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert any("val/miou" in m for m in metrics)


def test_picie_eval_root_replaces_only_the_test_split(tmp_path):
    root = make_seg_folder(tmp_path / "data", n=20, size=16, unlabeled=(0, 1))
    folder = make_seg_folder(tmp_path / "external", n=4, size=16, unlabeled=(0,), seed=3)
    config = override(
        picie_ph2.get_config("local"),
        **{
            "data.root": root,
            "data.verify": False,
            "aug.image_size": 16,
            "total_epochs": 1.0,
            "picie.kmeans_batches": 1,
            "eval.overlays": 0,
        },
    )
    data = segdata.load(config.data, 16)
    plain = segdata.make_manifest(data, config)
    config.data.eval_root = folder
    results = picie.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["manifest_hash"] == plain.hash  # Train/val/unlabeled unchanged.
    assert results["num_test"] == 3  # The folder's images with a mask.
    per_image = json.load(open(tmp_path / "run" / "test_per_image.json"))
    assert [r["key"] for r in per_image] == ["im01.png", "im02.png", "im03.png"]


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("picie.num_clusters", 1, "config.picie.num_clusters"),
        ("picie.kmeans_batches", 0, "config.picie.kmeans_batches"),
        ("picie.crop_scale", (0.0, 1.0), "config.picie.crop_scale"),
        ("loss.class_weights", "balanced", "config.loss.class_weights='balanced'"),
    ],
)
def test_bad_picie_settings_name_the_key(key, value, match):
    from s4mi_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        picie._check_config(override(picie_ph2.get_config("local"), **{key: value}), 2)


def test_fpn_needs_a_resnet():
    from s4mi_jax.errors import ConfigError
    from s4mi_jax.models.fpn import build_fpn

    with pytest.raises(ConfigError, match="config.model.name='unet'"):
        build_fpn(override(picie_ph2.get_config("local"), **{"model.name": "unet"}).model, 3, None)


def test_ssl_encoder_loads_into_the_fpn_and_nothing_else(tmp_path):
    """`config.init_from=<weights file>` (as from an SSL run's export) sets the FPN's `encoder` only:
    the laterals and centroids keep their values."""
    from s4mi_jax.core import pretrained
    from s4mi_jax.core.train_state import TrainState
    from s4mi_jax.models import weights

    config = picie_ph2.get_config("local")
    graphdef, shapes = nnx.split(
        nnx.eval_shape(lambda: picie_model.build_model(config, 3, nnx.Rngs(0)))
    )

    def model(seed):  # Random values in every variable (positive: BatchNorm variances).
        rng = np.random.default_rng(seed)
        fill = lambda s: rng.uniform(0.1, 1.0, s.shape).astype(s.dtype)  # noqa: E731
        return nnx.merge(graphdef, jax.tree.map(fill, shapes))

    _, params, rest = nnx.split(model(1), nnx.Param, ...)
    params, rest = jax.device_put(params), jax.device_put(rest)
    fresh = TrainState(jnp.zeros((), jnp.int32), params, rest, {}, jax.random.PRNGKey(0))
    source = model(7)
    path = str(tmp_path / "ssl.safetensors")
    weights.export_encoder(weights.encoder_state(source.encoder), path)
    loaded, _, _ = pretrained.load_encoder(fresh, path)
    got = {**weights.flatten(loaded.params), **weights.flatten(loaded.model_state)}
    before = {**weights.flatten(fresh.params), **weights.flatten(fresh.model_state)}
    want = weights.encoder_state(source.encoder)
    for name, value in got.items():
        if name.startswith("encoder/"):
            np.testing.assert_array_equal(value, want[name.removeprefix("encoder/")])
        else:
            np.testing.assert_array_equal(value, before[name])
    assert any(n.startswith("centroids") for n in got) and any(n.startswith("lateral") for n in got)
