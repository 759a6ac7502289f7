"""Segmentation data: image + mask folders, label-fraction manifests, paired and strong augmentation.

Layout: `root/images/<stem>.<ext>` and `root/masks/<stem>.<ext>` (0/255 binary or class-index masks;
`sources.read_mask`), optional `labels.csv` (image classes: used only to stratify the splits, so a
dataset with diagnoses gets the same test split as its classification runs) and `metadata.csv`
(`patient_id` groups). A mask is optional per image: an image without one is unlabeled, never given a
fake mask. Every file is read and checked when the data is opened, so a bad file stops the run before
training, with its path in the message.

Images are brought to the model size once, at load time (`config.data.resize`):
- "resize": the whole image to `image_size` x `image_size` (image bilinear, mask nearest neighbour —
  S4MI resizes to 224 likewise; metrics are computed at this size, as S4MI does);
- "tile": non-overlapping `image_size` tiles covering the image (the last row/column of tiles aligned
  to the far edge, images smaller than a tile zero-padded): for large, variable-size microscopy. Tiles
  of one image share its group, so they never straddle a split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from scipy import ndimage

from s4mi_jax.core.loop import log
from s4mi_jax.data import augment, manifests, validate
from s4mi_jax.data.sources import (
    IMAGE_EXTENSIONS,
    UNLABELED,
    FolderSource,
    overlap_warning,
    read_image,
    training_overlap,
)
from s4mi_jax.errors import ConfigError, DataError

RESIZE_MODES = ("resize", "tile")


@dataclass
class SegmentationData:
    """All samples at the model size: images uint8 (N, S, S, C), masks uint8 (N, S, S) (zeros where
    `has_mask` is False), a key, group and stratification label per sample."""

    root: Path
    keys: list[str]
    images: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    groups: list[str]
    strata: np.ndarray  # Class for stratified splits (labels.csv, else 0); -1 without a mask.
    channels: int
    num_classes: int


def _check_folder(root: Path) -> None:
    """Every file in images/ and masks/ must be an image, and every mask must have an image."""
    images = {p.stem for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    for sub in ("images", "masks"):
        folder = root / sub
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):
                continue
            if not p.is_file() or p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{p} is not an image file ({', '.join(IMAGE_EXTENSIONS)}); a segmentation "
                    f"folder holds only images in {sub}/. Move it out of {folder}."
                )
            if sub == "masks" and p.stem not in images:
                raise DataError(f"mask {p} has no image {root / 'images' / p.stem}.*.")


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    return augment.resize(image, size)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST), np.uint8)


def _tiles(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of tiles covering (h, w); the last tile of a row/column ends at the edge."""

    def starts(n):
        if n <= size:
            return [0]
        k = math.ceil(n / size)
        return [min(i * size, n - size) for i in range(k)]

    return [(y, x) for y in starts(h) for x in starts(w)]


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    pad = [(0, max(size - a.shape[0], 0)), (0, max(size - a.shape[1], 0))] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad)


def to_model_size(
    image: np.ndarray, mask: np.ndarray | None, mode: str, size: int
) -> list[tuple[tuple[int, int] | None, np.ndarray, np.ndarray | None]]:
    """[(tile corner (y, x), or None for a whole resized image; image; mask or None)] at the model
    size, as `mode` ("resize" | "tile") says: what training and evaluation see, and what
    `s4mi_jax.predict` feeds the model (see `from_model_size` for the way back)."""
    if mode == "resize":
        m = None if mask is None else _resize_mask(mask, size)
        return [(None, _resize_image(image, size), m)]
    pieces = []
    for y, x in _tiles(*image.shape[:2], size):
        m = None if mask is None else _pad(mask[y : y + size, x : x + size], size)
        pieces.append(((y, x), _pad(image[y : y + size, x : x + size], size), m))
    return pieces


def from_model_size(
    maps: list[np.ndarray], corners: list[tuple[int, int] | None], shape: tuple[int, int]
) -> np.ndarray:
    """The inverse of `to_model_size` for class maps: one (H, W) uint8 map of an image of `shape`.
    A resized image's map is resized back with nearest neighbour (class ids stay class ids); tiles
    are put back where they came from (a tile aligned to the far edge overwrites the overlap of the
    tile before it; padding is cut off)."""
    h, w = shape
    if corners == [None]:
        return np.asarray(Image.fromarray(maps[0].astype(np.uint8)).resize((w, h), Image.NEAREST))
    out = np.zeros((max(h, maps[0].shape[0]), max(w, maps[0].shape[1])), np.uint8)
    for (y, x), m in zip(corners, maps, strict=True):
        out[y : y + m.shape[0], x : x + m.shape[1]] = m
    return out[:h, :w]


def load(data_cfg: ml_collections.ConfigDict, image_size: int) -> SegmentationData:
    """Reads and checks every image and mask of `data_cfg.root` and brings them to the model size."""
    if not data_cfg.root:
        raise ConfigError(
            "config.data.root is not set: a folder with images/ and masks/ is needed."
        )
    return load_folder(data_cfg.root, data_cfg, image_size)


def load_folder(
    root: str | Path,
    data_cfg: ml_collections.ConfigDict,
    image_size: int,
    *,
    channels: int | None = None,
    what: str = "config.data.root",
) -> SegmentationData:
    """`load` of any image+mask folder, read as `data_cfg` says (resize mode, classes); `channels`
    overrides `data_cfg.channels` so a test folder is read like the training data it is compared
    with. `what` names the folder in errors (`config.data.eval_root`, `--data_root`)."""
    if data_cfg.resize not in RESIZE_MODES:
        raise ConfigError(
            f"config.data.resize={data_cfg.resize!r}: expected one of {RESIZE_MODES}."
        )
    folder = FolderSource(
        root,
        channels=data_cfg.channels if channels is None else channels,
        verify=False,
        class_names=validate.class_names_of(data_cfg),
        accept_label_warnings=bool(data_cfg.get("accept_label_warnings", False)),
    )
    root = folder.root
    if not (root / "masks").is_dir():
        raise DataError(
            f"{what}={root} has no masks/ folder: segmentation needs root/masks/<stem>.png."
        )
    _check_folder(root)
    num_classes = int(data_cfg.num_classes)
    keys, images, masks, has_mask, groups, strata = [], [], [], [], [], []
    for i, path in enumerate(folder.files):
        image = read_image(path, folder.channels)
        mask = folder.mask(i, image.shape)
        if mask is not None and mask.max(initial=0) >= num_classes:
            raise DataError(
                f"mask {folder.mask_files[i]} holds class {int(mask.max())}, but "
                f"config.data.num_classes={num_classes} (classes 0..{num_classes - 1})."
            )
        group = folder.groups[i] if folder.groups else path.name
        label = int(folder.labels[i]) if folder.labels.ndim == 1 and folder.labels[i] >= 0 else 0
        for corner, img, m in to_model_size(image, mask, data_cfg.resize, image_size):
            key = path.name if corner is None else f"{path.name}#{corner[0]}_{corner[1]}"
            keys.append(key)
            images.append(img)
            masks.append(np.zeros(img.shape[:2], np.uint8) if m is None else m)
            has_mask.append(m is not None)
            groups.append(group)
            strata.append(label if m is not None else UNLABELED)
    if not any(has_mask):
        raise DataError(f"{root}/masks has no mask for any image in {root}/images.")
    return SegmentationData(
        root=root,
        keys=keys,
        images=np.stack(images),
        masks=np.stack(masks),
        has_mask=np.asarray(has_mask),
        groups=groups,
        strata=np.asarray(strata, np.int32),
        channels=folder.channels,
        num_classes=num_classes,
    )


def eval_folder(config: ml_collections.ConfigDict) -> FolderSource | None:
    """`config.data.eval_root` as a source for provenance (its images, masks and CSVs), or None."""
    root = config.data.get("eval_root")
    return FolderSource(root, verify=False) if root else None


class TestSplit(NamedTuple):
    """The images a segmentation run is tested on, at the model size: keys (file name, `#y_x` for a
    tile), uint8 images (N, S, S, C) and int32 masks (N, S, S)."""

    keys: list[str]
    images: np.ndarray
    masks: np.ndarray


def test_split(
    config: ml_collections.ConfigDict, data: SegmentationData, manifest: manifests.Manifest
) -> TestSplit:
    """The test split of every segmentation trainer: the manifest's carved test patients, or, with
    `config.data.eval_root`, every image with a mask in that folder (same layout as `data.root`, read
    with the training data's channels, model size, resize mode and classes).

    Why here, and only the test split: the manifest (train/val/unlabeled and its hash) must not
    depend on whether an external test set is used, so a run can be re-scored on another folder and
    runs with and without one train on the same images.
    """
    eval_root = config.data.get("eval_root")
    if not eval_root:
        idx = manifest.test
        return TestSplit(
            [data.keys[i] for i in idx], data.images[idx], data.masks[idx].astype(np.int32)
        )
    test = labeled_folder(eval_root, config, data.channels)
    # A test on training images measures memorisation: said, never passed over.
    eval_files = _image_files(Path(eval_root), test.keys)
    found = training_overlap(eval_files, _image_files(data.root, data.keys))
    if found:
        log(overlap_warning(eval_root, data.root, [p.name for p in found], len(eval_files)))
    return test


def _image_files(root: Path, keys: list[str]) -> list[Path]:
    """The image file of each distinct image among `keys` (a tile's key is `<file>#y_x`)."""
    folder = root / "images" if (root / "images").is_dir() else root
    return [folder / name for name in dict.fromkeys(k.split("#")[0] for k in keys)]


def images_without_masks_warning(data: SegmentationData) -> str | None:
    """The one line a supervised run prints when some images of `data.root` have no mask: it uses
    only those with one, while semi-supervised methods train on the others as unlabeled images. None
    when every image has a mask."""
    has_mask: dict[str, bool] = {}
    for key, m in zip(data.keys, data.has_mask, strict=True):
        name = key.split("#")[0]
        has_mask[name] = has_mask.get(name, False) or bool(m)
    n, with_mask = len(has_mask), sum(has_mask.values())
    if with_mask == n:
        return None
    folder = data.root / "images" if (data.root / "images").is_dir() else data.root
    return (
        f"warning: {n - with_mask} of {n} images in {folder} have no mask in {data.root / 'masks'}; "
        f"a supervised run uses only the {with_mask} with masks (semi-supervised methods, "
        "fixmatch_seg and cross_teaching, train on the others as unlabeled images)."
    )


def labeled_folder(
    root: str | Path,
    config: ml_collections.ConfigDict,
    channels: int,
    what: str = "config.data.eval_root",
) -> TestSplit:
    """Every image with a mask in the folder `root` (`config.data.eval_root`, `s4mi_jax.score
    --data_root`), read as the run's data: `channels`, model size, resize mode and classes."""
    ext = load_folder(root, config.data, config.aug.image_size, channels=channels, what=what)
    idx = np.flatnonzero(ext.has_mask)
    return TestSplit([ext.keys[i] for i in idx], ext.images[idx], ext.masks[idx].astype(np.int32))


def make_manifest(data: SegmentationData, config: ml_collections.ConfigDict) -> manifests.Manifest:
    """The label-fraction manifest: `config.data.manifest` (e.g. a classification run's
    manifest.json, reused as is), else a new one made as classification makes them (nested,
    stratified by `labels.csv` class, patient-grouped); images without a mask are unlabeled.

    A given manifest that puts an image without a mask into train/val/test is an error naming it.
    """
    if config.data.manifest:
        if config.data.resize == "tile":
            raise ConfigError("config.data.manifest works with config.data.resize='resize' only.")
        manifest = manifests.Manifest.load(config.data.manifest, data.keys)
        for split in ("train", "val", "test"):
            missing = [data.keys[i] for i in getattr(manifest, split) if not data.has_mask[i]]
            if missing:
                raise DataError(
                    f"manifest {config.data.manifest} puts {data.root / 'images' / missing[0]} in "
                    f"its labeled {split} split, but it has no mask in {data.root / 'masks'}."
                )
        return manifest
    return manifests.make_manifest(
        data.keys,
        data.strata,
        data.groups,
        fraction=config.label_fraction,
        seed=config.seed,
        split_seed=config.data.split_seed,
        val_fraction=config.data.val_fraction,
        test_fraction=config.data.test_fraction,
    )


class ArraySource:
    """Grain source over rows `indices` of `data`: {"image" uint8, "mask" uint8, "index"}."""

    def __init__(self, data: SegmentationData, indices: np.ndarray):
        self.data = data
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        j = int(self.indices[i])
        return {"image": self.data.images[j], "mask": self.data.masks[j], "index": np.int32(j)}


# ---- Augmentation ------------------------------------------------------------------------------


def paired_geometric(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, max_angle: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """SSL4MIS `RandomGenerator` on image and mask together: with p=0.5 rot90 by k ∈ {0..3} then a
    flip along a random axis; else with p=0.5 a rotation by an integer angle in [−max_angle,
    max_angle) (nearest neighbour for both, reshape off, as the reference). One draw for both arrays,
    so they stay aligned."""
    if rng.random() < 0.5:
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        image = np.flip(np.rot90(image, k, axes=(0, 1)), axis=axis)
        mask = np.flip(np.rot90(mask, k, axes=(0, 1)), axis=axis)
    elif rng.random() < 0.5 and max_angle > 0:
        angle = int(rng.integers(-max_angle, max_angle))
        image = ndimage.rotate(image, angle, axes=(1, 0), order=0, reshape=False)
        mask = ndimage.rotate(mask, angle, axes=(1, 0), order=0, reshape=False)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def strong_photometric(
    x: np.ndarray, rng: np.random.Generator, cfg: ml_collections.ConfigDict
) -> np.ndarray:
    """UniMatch's strong view on a [0, 1] float image: colour jitter (p `jitter_prob`), grayscale (RGB
    only, p `grayscale_prob`), Gaussian blur (p `blur_prob`). No geometry: pseudo-labels of the weak
    view stay aligned with it."""
    if rng.random() < cfg.jitter_prob:
        x = augment.color_jitter(x, rng, cfg.jitter_strength)
    if x.shape[-1] == 3 and rng.random() < cfg.grayscale_prob:
        x = np.repeat(augment._gray(x), 3, axis=-1)
    if rng.random() < cfg.blur_prob:
        x = augment.gaussian_blur(x, rng, tuple(cfg.blur_sigma))
    return x


def _to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


class LabeledView(grain.transforms.RandomMap):
    """record -> {"image": normalised float32 (S, S, C), "mask": int32 (S, S)}, paired geometry."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        image, mask = paired_geometric(element["image"], element["mask"], rng, self.cfg.max_angle)
        return {
            "image": augment.normalize(_to_float(image), self.cfg),
            "mask": mask.astype(np.int32),
        }


class UnlabeledViews(grain.transforms.RandomMap):
    """record -> {"u_weak", "u_strong"}: the weak view (paired geometry only) and, if `strong`, a
    photometrically perturbed copy of it."""

    def __init__(self, cfg: ml_collections.ConfigDict, strong: bool):
        self.cfg = cfg
        self.strong = strong

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        image, _ = paired_geometric(element["image"], element["mask"], rng, self.cfg.max_angle)
        weak = _to_float(image)
        out = {"u_weak": augment.normalize(weak, self.cfg)}
        if self.strong:
            out["u_strong"] = augment.normalize(
                strong_photometric(weak, rng, self.cfg.strong), self.cfg
            )
        return out


def eval_arrays(
    data: SegmentationData, indices: np.ndarray, cfg: ml_collections.ConfigDict
) -> tuple[np.ndarray, np.ndarray]:
    """(normalised images, masks) of rows `indices`, unaugmented."""
    return eval_images(data.images[indices], cfg), data.masks[indices].astype(np.int32)


def eval_images(images: np.ndarray, cfg: ml_collections.ConfigDict) -> np.ndarray:
    """uint8 (N, S, S, C) model-size images -> the normalised float32 the networks are evaluated on
    (validation, test and `s4mi_jax.predict`)."""
    return augment.normalize(_to_float(images), cfg)


# ---- Iterators ---------------------------------------------------------------------------------

_LENGTH = 10**15  # Infinite streams, cut to one length so Grain can zip them.


def _stream(source, transform, batch_size: int, seed: int, process_index: int, process_count: int):
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    ds = ds.random_map(transform, seed=seed)[process_index::process_count]
    return ds.batch(batch_size, drop_remainder=True)[:_LENGTH]


def semi_iterator(
    labeled,
    labeled_transform,
    labeled_batch: int,
    unlabeled,
    unlabeled_transform,
    unlabeled_batch: int,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """Infinite, checkpointable iterator of {labeled fields..., unlabeled fields...}: two independent
    shuffled streams (the labeled set is small, so it repeats more often: SSL4MIS's two-stream
    sampler) zipped batch by batch. Batch sizes are per process."""
    lab = _stream(labeled, labeled_transform, labeled_batch, seed, process_index, process_count)
    unl = _stream(
        unlabeled, unlabeled_transform, unlabeled_batch, seed + 1, process_index, process_count
    )
    ds = grain.experimental.ZipMapDataset([lab, unl]).map(lambda pair: {**pair[0], **pair[1]})
    size = labeled_batch + unlabeled_batch
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * size)))


def cutmix_boxes(
    rng: jax.Array,
    n: int,
    height: int,
    width: int,
    *,
    prob: float,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> jax.Array:
    """UniMatch CutMix boxes as boolean (n, H, W) masks (True = pasted): with probability `prob` a box
    of area ∈ `area` of the image and aspect ∈ `ratio`, placed uniformly (clipped at the edges)."""
    k_apply, k_area, k_ratio, k_y, k_x = jax.random.split(rng, 5)
    apply = jax.random.uniform(k_apply, (n,)) < prob
    s = jax.random.uniform(k_area, (n,), minval=area[0], maxval=area[1]) * height * width
    r = jnp.exp(jax.random.uniform(k_ratio, (n,), minval=np.log(ratio[0]), maxval=np.log(ratio[1])))
    bh = jnp.sqrt(s / r)
    bw = jnp.sqrt(s * r)
    y0 = jax.random.uniform(k_y, (n,)) * height
    x0 = jax.random.uniform(k_x, (n,)) * width
    ys = jnp.arange(height)[None, :, None]
    xs = jnp.arange(width)[None, None, :]
    inside = (
        (ys >= y0[:, None, None])
        & (ys < (y0 + bh)[:, None, None])
        & (xs >= x0[:, None, None])
        & (xs < (x0 + bw)[:, None, None])
    )
    return inside & apply[:, None, None]
