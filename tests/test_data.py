"""Data sources, splits, augmentations and the Grain pipeline."""

from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import common
from s4mi_jax.data import augment, pipeline
from s4mi_jax.data.sources import UNLABELED, NpzSource, open_source
from s4mi_jax.errors import DataError


def test_embedded_sample_is_verified_balanced_and_grouped():
    source = open_source(None)  # verify=True: every PNG is checked.
    assert len(source) == 320 and source.channels == 1
    assert np.bincount(source.labels).tolist() == [160, 160]
    assert len(set(source.groups)) == 320  # One image per patient.
    rec = source[0]
    assert rec["image"].shape == (128, 128, 1) and rec["image"].dtype == np.uint8


def test_folder_with_class_names_unlabeled_images_and_rgb(tmp_path):
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for name in ["a.png", "b.png", "c.jpg"]:
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), np.uint8)).save(
            tmp_path / "images" / name
        )
    (tmp_path / "labels.csv").write_text("filename,label\na.png,nevus\nc.jpg,melanoma\n")
    source = open_source(str(tmp_path))
    assert source.class_names == ["melanoma", "nevus"]
    assert source.labels.tolist() == [1, UNLABELED, 0]
    assert source.channels == 3 and source[1]["image"].shape == (10, 12, 3)
    gray = open_source(str(tmp_path), channels=1)
    assert gray[0]["image"].shape == (10, 12, 1)


def test_labels_csv_without_label_column_names_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels.csv").write_text("file,y\na.png,0\n")
    with pytest.raises(DataError, match="labels.csv: missing column"):
        open_source(str(tmp_path))


def test_npz_source(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 8, 8), np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 1, 0, 1, 1]))
    source = open_source(str(tmp_path / "d.npz"))
    assert isinstance(source, NpzSource) and source.channels == 1 and len(source) == 5
    np.testing.assert_array_equal(source[2]["image"][..., 0], images[2])
    np.savez(tmp_path / "bad.npz", images=images.astype(np.float32))
    with pytest.raises(DataError, match="uint8"):
        open_source(str(tmp_path / "bad.npz"))


def _aug_cfg(size=32):
    return common.aug_config(size)


def test_simclr_views_shape_range_and_grayscale_jitter():
    image = np.random.default_rng(0).integers(0, 255, (50, 40, 1), np.uint8)
    cfg = _aug_cfg()
    views = [augment.random_view(image, np.random.default_rng(s), cfg) for s in range(20)]
    assert all(v.shape == (32, 32, 1) and v.dtype == np.float32 for v in views)
    lo, hi = (0 - cfg.mean) / cfg.std, (1 - cfg.mean) / cfg.std
    assert all(v.min() >= lo - 1e-6 and v.max() <= hi + 1e-6 for v in views)
    assert len({v.tobytes() for v in views}) == 20  # Random.
    same = augment.random_view(image, np.random.default_rng(3), cfg)
    np.testing.assert_array_equal(same, views[3])  # Deterministic per seed.


def test_color_jitter_keeps_gray_rgb_gray_and_changes_colour():
    rng = np.random.default_rng(0)
    gray_rgb = np.repeat(rng.uniform(size=(8, 8, 1)).astype(np.float32), 3, axis=-1)
    out = augment.color_jitter(gray_rgb, rng, strength=1.0)
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-5)
    np.testing.assert_allclose(out[..., 1], out[..., 2], atol=1e-5)
    colour = rng.uniform(size=(8, 8, 3)).astype(np.float32)
    assert not np.allclose(augment.color_jitter(colour, rng, 1.0), colour)


def test_random_resized_crop_full_scale_is_a_resize():
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)
    out = augment.random_resized_crop(
        image, np.random.default_rng(0), 16, scale=(1.0, 1.0), ratio=(1.0, 1.0)
    )
    np.testing.assert_array_equal(out, image)


def test_pipeline_is_deterministic_resumable_and_same_with_workers():
    source = open_source(None, verify=False)
    cfg = ml_collections.ConfigDict(_aug_cfg(16))

    def make(workers):
        return pipeline.train_iterator(
            source, augment.TwoViews(cfg), batch_size=8, seed=3, num_workers=workers
        )

    it = make(0)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    after = next(it)
    it2 = make(0)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["view1"], after["view1"])
    it_mp = make(2)
    for a in first:
        b = next(it_mp)
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["view2"], b["view2"])
    it_mp.close()
    # An epoch is a permutation of the data; the next epoch is a different permutation.
    it3 = pipeline.train_iterator(source, augment.TwoViews(cfg), batch_size=32, seed=0)
    epoch = [next(it3)["index"] for _ in range(20)]
    e1, e2 = np.concatenate(epoch[:10]), np.concatenate(epoch[10:])
    assert sorted(e1.tolist()) == list(range(320)) and sorted(e2.tolist()) == list(range(320))
    assert not np.array_equal(e1, e2)


def test_eval_batches_pad_and_mask():
    source = open_source(None, verify=False)
    cfg = _aug_cfg(16)
    batches = list(pipeline.eval_batches(source, cfg, batch_size=64))
    assert len(batches) == 5 and all(b["image"].shape == (64, 16, 16, 1) for b in batches)
    assert sum(int(b["mask"].sum()) for b in batches) == 320


def test_simclr_data_split_with_and_without_eval_root(tmp_path):
    from s4mi_jax.data.sources import SAMPLE_ROOT
    from s4mi_jax.trainers.pretrain import load_sources as pretrain_sources
    from tests.helpers import local_config

    pretrain, probe_train, probe_test, _ = pretrain_sources(local_config())
    assert (len(pretrain), len(probe_train), len(probe_test)) == (224, 224, 64)
    assert not set(pretrain.indices) & set(probe_test.indices)  # Held-out never pretrained on.

    (tmp_path / "images").mkdir()
    names = sorted((Path(SAMPLE_ROOT) / "images").iterdir())[:6]
    for p in names:
        (tmp_path / "images" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "labels.csv").write_text(
        "filename,label\n" + "".join(f"{p.name},{i % 2}\n" for i, p in enumerate(names))
    )
    config = local_config(**{"data.eval_root": str(tmp_path)})
    pretrain, probe_train, probe_test, _ = pretrain_sources(config)
    assert (len(pretrain), len(probe_train), len(probe_test)) == (224, 224, 6)  # Same split.
    assert probe_test.labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_masks_optional_per_image_and_checked(tmp_path):
    from s4mi_jax.data.sources import read_mask

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "images" / f"{name}.png")
    binary = np.zeros((6, 8), np.uint8)
    binary[2:4, 3:6] = 255
    Image.fromarray(binary).save(tmp_path / "masks" / "a.png")
    Image.fromarray(np.full((6, 8), 2, np.uint8)).save(tmp_path / "masks" / "b.png")
    source = open_source(str(tmp_path))
    np.testing.assert_array_equal(source.mask(0), binary // 255)
    assert source.mask(1).max() == 2  # Class-index mask kept as is.
    assert source.mask(2) is None  # No mask: an unlabeled image, no fake mask needed.
    soft = binary.copy()
    soft[0, 0] = 128
    Image.fromarray(soft).save(tmp_path / "soft.png")
    with pytest.raises(DataError, match="only 0 and 255"):
        read_mask(tmp_path / "soft.png", (6, 8), "img.png")
    with pytest.raises(DataError, match=r"is 8x6 but its image img.png is 9x6"):
        read_mask(tmp_path / "soft.png", (6, 9), "img.png")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="single-channel"):
        read_mask(tmp_path / "rgb.png", (6, 8), "img.png")
