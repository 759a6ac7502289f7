"""On-device augmentation (data/device_augment.py): each operation equals its host/SciPy reference for
the same random parameters, the views have the host's distribution (KS tests, with a control that the
test can reject), equal keys give equal views on any device count, and examples differ across a batch;
paired image+mask geometry and CutMix keep image and mask aligned."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import ndimage, stats

from configs import common
from s4mi_jax.data import augment, cache, manifests
from s4mi_jax.data import device_augment as da
from s4mi_jax.data.sources import open_source, source_keys


class _GivenDraws:
    """Stands in for np.random.Generator in the host code: returns the draws a test chose."""

    def __init__(self, order=(), values=()):
        self.order, self.values = list(order), list(values)

    def permutation(self, ops):
        return [ops[i] for i in self.order]

    def uniform(self, lo, hi):
        del lo, hi
        return self.values.pop(0)


def test_resized_crop_matches_pil_and_masks_keep_labels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 1), np.uint8)
    boxes_xy = [(3.3, 5.1, 40.2, 31.7), (0, 0, 50, 40), (10.5, 2.2, 20.1, 12.9)]  # down, down, up
    host = np.stack([augment._resize(img, 16, b) for b in boxes_xy]).astype(np.float32)
    boxes = jnp.asarray([[y0, x0, y1 - y0, x1 - x0] for x0, y0, x1, y1 in boxes_xy], jnp.float32)
    dev = np.asarray(jax.jit(da.resized_crop, static_argnums=2)(jnp.stack([img] * 3), boxes, 16))
    assert np.abs(dev - host).max() <= 1.0  # PIL rounds its fixed-point weights.
    assert np.abs(dev - host).mean() < 0.3

    mask = rng.integers(0, 3, (1, 40, 50)).astype(np.int32)
    nearest = jax.jit(lambda m, b, s: da.resized_crop(m, b, s, nearest=True), static_argnums=2)
    m = np.asarray(nearest(jnp.asarray(mask), boxes[:1], 16))
    assert set(np.unique(m)) <= {0, 1, 2}
    square = rng.integers(0, 3, (1, 24, 24)).astype(np.int32)
    same = nearest(jnp.asarray(square), da.full_boxes(1, 24, 24), 24)
    np.testing.assert_array_equal(np.asarray(same), square)  # Whole box, same size: identity.


@pytest.mark.parametrize("channels", [1, 3])
def test_colour_jitter_and_blur_match_host(channels):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (12, 12, channels)).astype(np.float32)
    n = len(da.jitter_ops(channels))
    strength = 0.5
    lo = np.array([1 - 0.4, 1 - 0.4, 1 - 0.4, -0.1][:n])
    hi = np.array([1 + 0.4, 1 + 0.4, 1 + 0.4, 0.1][:n])
    jitter = jax.jit(lambda u, x: da.color_jitter(u, x, strength, 0.8))
    blur = jax.jit(da.gaussian_blur)
    for _ in range(3):
        u = rng.uniform(0, 1, 1 + 2 * n).astype(np.float32)
        u[0] = 0.0  # Applied.
        order = np.argsort(u[1 : 1 + n])
        factors = lo + (hi - lo) * u[1 + n :]
        host = augment.color_jitter(x, _GivenDraws(order, factors[order]), strength)
        dev = jitter(jnp.asarray(u)[None], jnp.asarray(x)[None])[0]
        np.testing.assert_allclose(np.asarray(dev), host, atol=2e-6)
    u[0] = 0.9  # Not applied (prob 0.8).
    dev = jitter(jnp.asarray(u)[None], jnp.asarray(x)[None])[0]
    np.testing.assert_array_equal(np.asarray(dev), x)

    for size, sigma in [(12, 0.3), (32, 1.7)]:
        img = rng.uniform(0, 1, (size, size, channels)).astype(np.float32)
        host = augment.gaussian_blur(img, _GivenDraws(values=[sigma]), (0.1, 2.0))
        dev = blur(jnp.asarray(img)[None], jnp.asarray([sigma]))[0]
        np.testing.assert_allclose(np.asarray(dev), host, atol=1e-6)


def test_rotation_and_quarter_turns_match_scipy_numpy():
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 1, (2, 20, 20, 1)).astype(np.float32)
    mask = rng.integers(0, 4, (2, 20, 20)).astype(np.int32)
    deg = np.array([15.0, -30.0], np.float32)
    rot = np.asarray(jax.jit(da.rotate)(jnp.asarray(img), jnp.asarray(deg)))
    rot_m = np.asarray(jax.jit(lambda m, d: da.rotate(m, d, nearest=True))(mask, deg))
    for b in range(2):
        kw = dict(reshape=False, mode="grid-constant", cval=0.0)
        ref = ndimage.rotate(img[b, ..., 0], deg[b], order=1, **kw)
        np.testing.assert_allclose(rot[b, ..., 0], ref, atol=1e-5)
        np.testing.assert_array_equal(rot_m[b], ndimage.rotate(mask[b], deg[b], order=0, **kw))
    turned = np.asarray(jax.jit(da.rot90)(jnp.asarray(mask), jnp.asarray([1, 3])))
    np.testing.assert_array_equal(turned[0], np.rot90(mask[0], 1))
    np.testing.assert_array_equal(turned[1], np.rot90(mask[1], 3))


@functools.cache
def _tinted_sample(size: int) -> np.ndarray:
    """The embedded X-rays at size x size, tinted per image into RGB (every jitter op applies)."""
    src = open_source(None, verify=False)
    rng = np.random.default_rng(3)
    out = []
    for i in range(len(src)):
        g = augment.resize(src[i]["image"], size).astype(np.float32)
        out.append(np.clip(g * rng.uniform(0.6, 1.0, 3), 0, 255).astype(np.uint8))
    return np.stack(out)


def test_views_have_the_host_distribution(monkeypatch):
    """Crop area and aspect, and view brightness and contrast, host vs device: two-sample KS tests
    on 960 views each (same sources), and the test rejects a device path with stronger jitter."""
    size, views_per_image = 16, 3
    images = _tinted_sample(32)
    cfg = common.aug_config(size)
    cfg.update(source_size=32, grayscale_prob=0.2, solarize_prob=0.1)

    boxes = []
    real_resize = augment._resize
    monkeypatch.setattr(
        augment, "_resize", lambda im, s, box: boxes.append(box) or real_resize(im, s, box)
    )
    host = np.stack(
        [
            augment.random_view(im, np.random.default_rng(i * views_per_image + v), cfg)
            for i, im in enumerate(images)
            for v in range(views_per_image)
        ]
    )
    host_boxes = np.asarray(boxes)  # x0, y0, x1, y1
    host_area = (
        (host_boxes[:, 2] - host_boxes[:, 0]) * (host_boxes[:, 3] - host_boxes[:, 1]) / 32**2
    )
    host_aspect = (host_boxes[:, 2] - host_boxes[:, 0]) / (host_boxes[:, 3] - host_boxes[:, 1])

    batch = jnp.asarray(np.repeat(images, views_per_image, axis=0))
    keys = jax.random.split(jax.random.PRNGKey(0), len(batch))
    dev_boxes = np.asarray(jax.jit(lambda k: da.crop_boxes(k, 32, 32, tuple(cfg.crop_scale)))(keys))
    dev_area = dev_boxes[:, 2] * dev_boxes[:, 3] / 32**2
    dev_aspect = dev_boxes[:, 3] / dev_boxes[:, 2]
    views = jax.jit(lambda k, x: da.random_views(k, x, cfg))
    dev = np.asarray(views(keys, batch))
    assert dev.shape == host.shape == (len(batch), size, size, 3)

    def p(a, b):
        return stats.ks_2samp(a, b).pvalue

    assert p(host_area, dev_area) > 0.01
    assert p(host_aspect, dev_aspect) > 0.01
    assert p(host.mean(axis=(1, 2, 3)), dev.mean(axis=(1, 2, 3))) > 0.01
    assert p(host.std(axis=(1, 2, 3)), dev.std(axis=(1, 2, 3))) > 0.01
    sat = lambda v: (v.max(-1) - v.min(-1)).mean(axis=(1, 2))  # noqa: E731  (colourfulness)
    assert p(sat(host), sat(dev)) > 0.01

    strong = cfg.copy_and_resolve_references()
    strong.update(jitter_strength=1.0, jitter_prob=1.0)
    wrong = np.asarray(jax.jit(lambda k, x: da.random_views(k, x, strong))(keys, batch))
    assert p(host.std(axis=(1, 2, 3)), wrong.std(axis=(1, 2, 3))) < 1e-3


def test_equal_keys_equal_views_examples_differ_any_device_count():
    cfg = common.aug_config(16)
    images = jnp.asarray(np.repeat(_tinted_sample(32)[:1], 8, axis=0))  # One image, 8 times.
    fn = jax.jit(da.two_views(cfg))
    key = jax.random.PRNGKey(7)
    a, b = fn(key, images), fn(key, images)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    c = fn(jax.random.PRNGKey(8), images)
    assert not np.allclose(np.asarray(a["view1"]), np.asarray(c["view1"]))
    v1 = np.asarray(a["view1"]).reshape(8, -1)
    v2 = np.asarray(a["view2"]).reshape(8, -1)
    for i in range(8):  # Same image everywhere: only the per-example keys differ.
        assert not np.allclose(v1[i], v2[i])
        for j in range(i):
            assert not np.allclose(v1[i], v1[j])

    mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
    sharded = jax.jit(
        da.two_views(cfg),
        in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
    )(key, images)
    for k in a:
        np.testing.assert_allclose(np.asarray(sharded[k]), np.asarray(a[k]), atol=1e-5)


def test_source_transform_only_resizes():
    cfg = common.aug_config(16)
    assert da.source_size(cfg) == 32  # Default: 2 x image_size.
    rec = {"image": _tinted_sample(40)[0], "label": np.int32(1), "index": np.int32(5)}
    src = da.SourceImage(cfg).random_map(rec, np.random.default_rng(0))
    assert src["image"].shape == (32, 32, 3) and src["image"].dtype == np.uint8  # 2 x image_size
    np.testing.assert_array_equal(src["image"], augment.resize(rec["image"], 32))
    cfg.source_size = 24
    assert da.SourceImage(cfg).random_map(rec, None)["image"].shape == (24, 24, 3)
    # The multi-crop views themselves run inside the DINO step in tests/test_mixed_precision.py.
    same = {**rec, "image": augment.resize(rec["image"], 24)}  # Already S x S: passes as it is.
    np.testing.assert_array_equal(da.SourceImage(cfg).prepare(same)["image"], same["image"])


class _CountingSource:
    """Eleven random images of (40 + i) x 40 pixels; counts the reads of each record."""

    def __init__(self):
        self.reads = [0] * 11
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, (40 + i, 40, 3), np.uint8) for i in range(11)]

    def __len__(self):
        return 11

    def __getitem__(self, i):
        self.reads[i] += 1
        return {"image": self.images[i], "label": np.int32(i % 2), "index": np.int32(i)}


def _batches(keep: int, n: int = 9):
    from s4mi_jax.data import pipeline

    source = _CountingSource()
    it = pipeline.train_iterator(
        source,
        da.SourceImage(common.aug_config(8)),
        batch_size=4,
        seed=3,
        keep_in_memory_bytes=keep,
    )
    return [next(it) for _ in range(n)], source.reads


def test_small_dataset_is_decoded_once_with_the_same_batches():
    """Nine batches of 4 = 3+ epochs of 11 records: kept in memory, each record is read once (plus
    the first, measured for the budget) and the batches are those of the pipeline without it."""
    kept, reads = _batches(keep=2**20)
    plain, plain_reads = _batches(keep=0)
    for a, b in zip(kept, plain, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert reads == [2] + [1] * 10 and min(plain_reads) >= 3
    # Over the budget (11 x 16x16x3 bytes and the labels > 8000): read every epoch, as without it.
    assert min(_batches(keep=8000)[1]) >= 3


def test_paired_geometry_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(4)
    masks = np.zeros((6, 32, 32), np.int32)
    for b in range(6):  # Two random rectangles of classes 1 and 2.
        for c in (1, 2):
            y, x = rng.integers(0, 20, 2)
            masks[b, y : y + 12, x : x + 12] = c
    images = (masks * 100).astype(np.uint8)[..., None]
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    geometry = jax.jit(
        lambda k, x, m: da.paired_geometry(
            k, x, m, 24, scale=(0.3, 1.0), rot90_prob=0.5, max_degrees=20.0
        )
    )
    x, m = geometry(keys, jnp.asarray(images), jnp.asarray(masks))
    x, m = np.asarray(x)[..., 0], np.asarray(m)
    assert set(np.unique(m)) <= {0, 1, 2}
    agree = np.round(x / 100) == m
    assert agree.mean() > 0.9  # Only boundary pixels (bilinear vs nearest) may differ.

    # A full crop at the same size: exactly one of the 8 flips/turns, the same for image and mask.
    turns = jax.jit(
        lambda k, x, m: da.paired_geometry(k, x, m, 32, scale=(1, 1), ratio=(1, 1), rot90_prob=1)
    )
    x, m = turns(keys, jnp.asarray(images), jnp.asarray(masks))
    for b in range(6):
        dihedral = [t(np.rot90(masks[b], k)) for k in range(4) for t in (lambda a: a, np.fliplr)]
        match = [np.array_equal(np.asarray(m[b]), d) for d in dihedral]
        assert sum(match) >= 1
        np.testing.assert_array_equal(np.asarray(x[b, ..., 0]), dihedral[match.index(True)] * 100)


def test_cutmix_pastes_the_same_box_into_image_and_mask():
    b, h, w = 6, 20, 24
    images = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None], (b, h, w, 1))
    masks = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None, None], (b, h, w))
    keys = jax.random.split(jax.random.PRNGKey(2), b)
    x, m, box = (
        np.asarray(a)
        for a in jax.jit(lambda k, x, m: da.cutmix(k, x, m, area=(0.1, 0.3)))(keys, images, masks)
    )
    partner = (np.arange(b) + 1) % b
    for i in range(b):
        assert box[i].any() and not box[i].all()
        assert 0.03 <= box[i].mean() <= 0.31
        np.testing.assert_array_equal(m[i], np.where(box[i], partner[i], i))
        np.testing.assert_array_equal(x[i, ..., 0], m[i])
        ys, xs = np.nonzero(box[i])  # A box: its bounding rectangle is full.
        assert box[i][ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
    assert len({box[i].tobytes() for i in range(b)}) == b
    _, _, none = jax.jit(lambda k, x, m: da.cutmix(k, x, m, prob=0.0))(keys, images, masks)
    assert not np.asarray(none).any()


def test_npz_cache_keeps_the_folders_records_and_manifest(tmp_path):
    out = str(tmp_path / "sample_32.npz")
    assert cache.write_cache(None, out, 32) == 320
    folder, npz = open_source(None, verify=False), open_source(out)
    assert source_keys(npz) == source_keys(folder)
    assert npz.groups == folder.groups and npz.class_names == folder.class_names
    np.testing.assert_array_equal(npz.labels, folder.labels)
    for i in (0, 77, 319):
        np.testing.assert_array_equal(npz[i]["image"], augment.resize(folder[i]["image"], 32))

    def manifest(src):
        kw = dict(fraction=0.1, seed=1, split_seed=0, val_fraction=0.1, test_fraction=0.2)
        return manifests.make_manifest(source_keys(src), src.labels, src.groups, **kw)

    assert manifest(npz).hash == manifest(folder).hash
