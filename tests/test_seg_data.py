"""Segmentation data: paired augmentation keeps image and mask aligned, nested manifests, tiling,
unlabeled images without masks, and bad input -> one error naming the file."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import common
from s4mi_jax.data import segmentation as segdata
from s4mi_jax.errors import DataError
from tests.helpers import make_seg_folder, override


def _config(root, **kw):
    config = common.segmentation_config("segment", "local")
    return override(config, **{"data.root": str(root), **kw})


def test_paired_geometric_keeps_mask_drawn_from_image_aligned():
    rng = np.random.default_rng(0)
    image = np.zeros((33, 40, 3), np.uint8)  # Non-square: rot90 by 1/3 changes the shape.
    image[5:20, 8:30] = 200
    image[22:30, 3:12, 1] = 120  # Asymmetric, so a mismatched rotation/flip would show.
    image[..., 2] = rng.integers(0, 255, (33, 40))
    mask = (image[..., 0] > 100).astype(np.uint8) + (image[..., 1] == 120)  # Drawn from the image.
    seen = set()
    for seed in range(40):
        out_img, out_mask = segdata.paired_geometric(image, mask, np.random.default_rng(seed))
        want = (out_img[..., 0] > 100).astype(np.uint8) + (out_img[..., 1] == 120)
        np.testing.assert_array_equal(out_mask, want)
        seen.add((out_img.shape, out_img.tobytes() == image.tobytes()))
    assert len(seen) >= 3  # rot90 (shape change), unchanged, and rotated/flipped all occurred.
    # The transform as the pipeline runs it: same alignment after normalisation.
    cfg = common.segmentation_config("segment", "local").aug
    view = segdata.LabeledView(cfg).random_map(
        {"image": image, "mask": mask}, np.random.default_rng(3)
    )
    raw = view["image"] * np.float32(cfg.std) + np.float32(cfg.mean)
    np.testing.assert_array_equal(
        view["mask"], (raw[..., 0] > 100 / 255) + (np.abs(raw[..., 1] - 120 / 255) < 1e-3)
    )


def test_load_manifest_nested_and_unlabeled_without_masks(tmp_path):
    root = make_seg_folder(tmp_path / "d", n=20, unlabeled=(3, 7))
    data = segdata.load(_config(root).data, 32)
    assert data.images.shape == (20, 32, 32, 3) and set(np.unique(data.masks)) == {0, 1}
    assert not data.has_mask[[3, 7]].any() and (data.strata[[3, 7]] == -1).all()
    m = {f: segdata.make_manifest(data, _config(root, label_fraction=f)) for f in (0.3, 0.5, 1.0)}
    assert set(m[0.3].train) < set(m[0.5].train) < set(m[1.0].train)
    assert {3, 7} <= set(m[1.0].unlabeled) and {3, 7} <= set(m[0.5].unlabeled)
    assert all(data.has_mask[np.concatenate([x.train, x.val, x.test])].all() for x in m.values())
    np.testing.assert_array_equal(m[0.3].test, m[1.0].test)


def test_tiling_covers_variable_size_images(tmp_path):
    root = tmp_path / "t"
    make_seg_folder(root, n=2, size=40)
    big = np.zeros((70, 50), np.uint8)
    big[60:, 45:] = 255
    Image.fromarray(np.zeros((70, 50, 3), np.uint8)).save(root / "images" / "big.png")
    Image.fromarray(big).save(root / "masks" / "big.png")
    data = segdata.load(_config(root, **{"data.resize": "tile"}).data, 32)
    keys = [k for k in data.keys if k.startswith("big")]
    assert keys == [
        "big.png#0_0",
        "big.png#0_18",
        "big.png#32_0",
        "big.png#32_18",
        "big.png#38_0",
        "big.png#38_18",
    ]
    last = data.keys.index("big.png#38_18")
    assert data.masks[last][22:, 27:].all() and data.masks[last].sum() == 10 * 5
    assert len({data.groups[data.keys.index(k)] for k in keys}) == 1  # One image, one group.


def _bad(tmp_path):
    return make_seg_folder(tmp_path / "bad", n=6, size=16)


def test_mask_of_wrong_size_names_the_file(tmp_path):
    root = _bad(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(f"{root}/masks/im02.png")
    with pytest.raises(
        DataError, match=r"mask .*masks/im02.png is 8x8 but its image .*im02.png is 16x16"
    ):
        segdata.load(_config(root).data, 16)


def test_mask_with_unexpected_values_names_the_file(tmp_path):
    root = _bad(tmp_path)
    m = np.zeros((16, 16), np.uint8)
    m[:4], m[4:8] = 255, 128  # Softened by an interpolating resize.
    Image.fromarray(m).save(f"{root}/masks/im01.png")
    with pytest.raises(DataError, match=r"masks/im01.png has values \[0, 128, 255\]"):
        segdata.load(_config(root).data, 16)
    m[4:8] = 3  # Class ids beyond config.data.num_classes=2.
    Image.fromarray(m[:, :] * (m < 255)).save(f"{root}/masks/im01.png")
    with pytest.raises(
        DataError, match=r"masks/im01.png holds class 3, but config.data.num_classes=2"
    ):
        segdata.load(_config(root).data, 16)


def test_image_without_mask_in_labeled_manifest_names_the_file(tmp_path):
    root = _bad(tmp_path)
    data = segdata.load(_config(root).data, 16)
    manifest = segdata.make_manifest(data, _config(root))
    manifest.save(tmp_path / "manifest.json")
    victim = data.keys[int(manifest.train[0])]
    (tmp_path / "bad" / "masks" / victim).unlink()
    config = _config(root, **{"data.manifest": str(tmp_path / "manifest.json")})
    data = segdata.load(config.data, 16)
    with pytest.raises(
        DataError, match=rf"puts .*images/{victim} in its labeled train split, but it has no mask"
    ):
        segdata.make_manifest(data, config)


@pytest.mark.parametrize("where", ["images", "masks"])
def test_non_image_file_in_folder_names_the_file(tmp_path, where):
    root = _bad(tmp_path)
    (tmp_path / "bad" / where / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=rf"{where}/notes.txt is not an image file"):
        segdata.load(_config(root).data, 16)


def test_corrupt_image_and_orphan_mask_name_the_file(tmp_path):
    root = _bad(tmp_path)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(f"{root}/masks/ghost.png")
    with pytest.raises(DataError, match=r"mask .*masks/ghost.png has no image"):
        segdata.load(_config(root).data, 16)
    (tmp_path / "bad" / "masks" / "ghost.png").unlink()
    (tmp_path / "bad" / "images" / "im04.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"cannot read image .*im04.png"):
        segdata.load(_config(root).data, 16)


def test_embedded_nuclei_sample_loads_with_binary_masks_and_attribution():
    """The shipped sample (`:sample`) runs the segmentation configs with no data of one's own."""
    from configs import supervised_seg_ph2
    from s4mi_jax.data.sources import SEG_SAMPLE_ROOT

    config = supervised_seg_ph2.get_config("sample")
    assert config.data.root == SEG_SAMPLE_ROOT and config.data.resize == "tile"
    data = segdata.load(config.data, config.aug.image_size)
    assert len({k.split("#")[0] for k in data.keys}) == 12  # 12 images, tiled.
    assert set(np.unique(data.masks)) == {0, 1} and data.masks.mean() > 0.05
    assert "CC0" in (Path(SEG_SAMPLE_ROOT) / "ATTRIBUTION.md").read_text()


@pytest.mark.parametrize(
    "name", ["supervised_seg_ph2", "fixmatch_seg_ph2", "cross_teaching_ph2", "picie_ph2"]
)
def test_segmentation_configs_default_to_the_embedded_sample_and_need_a_root_for_datasets(name):
    """No default points outside the package: the sample is the default from any working directory;
    PH2 / nuclei / lung are variants whose data.root must be given (one line naming the key)."""
    import importlib

    from s4mi_jax.data import validate
    from s4mi_jax.data.sources import SEG_SAMPLE_ROOT
    from s4mi_jax.errors import ConfigError

    get_config = importlib.import_module(f"configs.{name}").get_config
    for arg in (None, "local", "label_fraction=0.5", "sample", "local,sample"):
        config = get_config(arg)
        assert config.data.root == SEG_SAMPLE_ROOT and os.path.isabs(SEG_SAMPLE_ROOT)
        # `:local` (tests, smoke runs on small folders) resizes whole images, as it always did.
        assert config.data.resize == ("resize" if arg == "local" else "tile")
        validate.check_config(config)
    for arg, channels, resize in (
        ("ph2", 3, "resize"),
        ("nuclei", 3, "tile"),
        ("lung", 1, "resize"),
    ):
        config = get_config(f"{arg},label_fraction=0.5")
        assert (config.data.channels, config.data.resize) == (channels, resize)
        with pytest.raises(
            ConfigError, match=r"^config\.data\.root is not set: .*--config\.data\.root="
        ):
            validate.check_config(config)
        config.data.root = "/data/" + arg  # What --config.data.root= sets.
        validate.check_config(config)
    with pytest.raises(ValueError, match="one dataset"):
        get_config("ph2,lung")
