"""On-device augmentation: the host recipes of `data/augment.py` as batched, jitted JAX functions.

Why: SSL training makes several heavily augmented views of every image; on a few host cores that is the
bottleneck of a TPU/GPU step. With `config.aug.on_device=True` the host only decodes and resizes each image
to a fixed `aug.source_size` square (`SourceImage`), and the views are made inside the jitted train step
from a per-example key, on the accelerator (`with_device_views`).

Conventions:

* Every random function takes one key per example (`keys`: (B, 2) uint32), drawn by `example_keys` from
  the step key, so a view depends only on (seed, step, example position): deterministic per seed, equal
  on any device count (threefry is partitionable), and different across the batch.
* Images are float32 (B, H, W, C) in [0, 255] before `to_unit`, then in [0, 1]; masks are integer
  (B, H, W). The same sampled geometry (crop box, flip, rotation) can be applied to a mask with
  `nearest=True`, which is what paired image+mask augmentation (segmentation) and CutMix call.
* Each operation reproduces the host one for the same random parameters: the crop+resize is PIL's
  antialiased bilinear box resize (`jax.image.scale_and_translate`, within one grey level), the colour
  operations and the blur (scipy's `gaussian_filter`, reflect mode) match to float precision; the random
  parameters follow the same distributions (tests/test_device_augment.py checks both).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from s4mi_jax.data import augment

Array = jax.Array
_AUG_SALT = 0x5A17  # fold_in constant: augmentation keys never coincide with the step's own keys.
_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
_FROM_YIQ = np.linalg.inv(_TO_YIQ).astype(np.float32)
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def example_keys(rng: Array, batch: int) -> Array:
    """(batch, 2) keys, one per example, from a step key."""
    return jax.random.split(jax.random.fold_in(rng, _AUG_SALT), batch)


def source_size(cfg: ml_collections.ConfigDict) -> int:
    """Side of the square the host resizes every image to (`aug.source_size`, default 2x image_size)."""
    size = cfg.get("source_size")
    return int(size) if size else 2 * int(cfg.image_size)


# ---- Geometry ------------------------------------------------------------------------------------


def uniforms(keys: Array, n: int) -> Array:
    """(B, n) U[0, 1) draws, one threefry call per example: every random choice of a view is a slice
    of these (one random-bits op instead of dozens keeps the step's compile time down)."""
    return jax.vmap(lambda k: jax.random.uniform(k, (n,)))(keys)


CROP_UNIFORMS = 22  # 10 tries x (area, aspect) + position.


def crop_boxes(
    keys: Array,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Array:
    """Inception-style crop boxes (B, 4) as (y0, x0, h, w) in pixels: torchvision's algorithm as the
    host's `random_resized_crop` (up to 10 tries of area ~ U(scale)·HW and log-uniform aspect; the first
    that fits is used, else a centre crop of the clamped aspect), vectorised over tries."""
    return boxes_from_uniforms(uniforms(keys, CROP_UNIFORMS), height, width, scale, ratio)


def boxes_from_uniforms(
    u: Array,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Array:
    """`crop_boxes` from (B, 2·tries + 2) uniforms: areas, log-aspects, then the position."""
    tries = (u.shape[-1] - 2) // 2
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, :tries])
    lr = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(lr[0] + (lr[1] - lr[0]) * u[:, tries : 2 * tries])
    cw, ch = jnp.sqrt(area * aspect), jnp.sqrt(area / aspect)
    ok = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    first = jnp.argmax(ok, axis=1)[:, None]
    fw, fh = augment.fallback_crop(width, height, ratio)
    found = ok.any(axis=1)
    cw = jnp.where(found, jnp.take_along_axis(cw, first, 1)[:, 0], fw)
    ch = jnp.where(found, jnp.take_along_axis(ch, first, 1)[:, 0], fh)
    y0 = jnp.where(found, u[:, -2] * (height - ch), (height - ch) / 2)
    x0 = jnp.where(found, u[:, -1] * (width - cw), (width - cw) / 2)
    return jnp.stack([y0, x0, ch, cw], axis=1).astype(jnp.float32)


def full_boxes(batch: int, height: int, width: int) -> Array:
    """Boxes covering the whole image (a plain resize)."""
    return jnp.tile(jnp.asarray([[0.0, 0.0, height, width]], jnp.float32), (batch, 1))


def resized_crop(images: Array, boxes: Array, size: int, *, nearest: bool = False) -> Array:
    """Crops `boxes` (B, 4: y0, x0, h, w) out of `images` (B, H, W[, C]) and resizes them to
    size x size.

    Images: antialiased bilinear (PIL's BILINEAR with a box), rounded to integers as the host's uint8
    resize. `nearest=True` (masks): the input pixel under each output pixel's centre, labels unchanged.
    """
    if nearest:
        o = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size

        def one(m: Array, box: Array) -> Array:
            rows = jnp.clip(jnp.floor(box[0] + o * box[2]).astype(jnp.int32), 0, m.shape[0] - 1)
            cols = jnp.clip(jnp.floor(box[1] + o * box[3]).astype(jnp.int32), 0, m.shape[1] - 1)
            return m[rows][:, cols]

        return jax.vmap(one)(images, boxes)

    def one(x: Array, box: Array) -> Array:
        s = jnp.stack([size / box[2], size / box[3]])
        out = jax.image.scale_and_translate(
            x.astype(jnp.float32),
            (size, size) + x.shape[2:],
            (0, 1),
            s,
            -box[:2] * s,
            method="linear",
            antialias=True,
        )
        return jnp.clip(jnp.round(out), 0.0, 255.0)

    return jax.vmap(one)(images, boxes)


def _per_example(flags: Array, x: Array) -> Array:
    return flags.reshape(flags.shape + (1,) * (x.ndim - flags.ndim))


def hflip(x: Array, flags: Array) -> Array:
    """Mirrors the examples whose flag is set (left-right; axis 2 of (B, H, W[, C]))."""
    return jnp.where(_per_example(flags, x), jnp.flip(x, axis=2), x)


def rot90(x: Array, k: Array) -> Array:
    """Rotates example b by k[b] quarter turns (counter-clockwise, as np.rot90); square images."""
    out = x
    turned = x
    for q in range(1, 4):
        turned = jnp.rot90(turned, axes=(1, 2))
        out = jnp.where(_per_example(k % 4 == q, x), turned, out)
    return out


def rotate(x: Array, degrees: Array, *, nearest: bool = False) -> Array:
    """Rotates each example about its centre by degrees[b] (counter-clockwise, as
    scipy.ndimage.rotate(reshape=False)); bilinear for images, nearest for masks; outside is 0."""
    h, w = x.shape[1], x.shape[2]
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    cy, cx = (h - 1) / 2, (w - 1) / 2

    def one(img: Array, deg: Array) -> Array:
        t = jnp.deg2rad(deg)
        c, s = jnp.cos(t), jnp.sin(t)
        # Output pixel -> input coordinate (inverse rotation).
        src_y = c * (yy - cy) + s * (xx - cx) + cy
        src_x = -s * (yy - cy) + c * (xx - cx) + cx

        def sample(plane: Array) -> Array:
            return jax.scipy.ndimage.map_coordinates(
                plane.astype(jnp.float32),
                [src_y, src_x],
                order=0 if nearest else 1,
                mode="constant",
            )

        if img.ndim == 2:
            return sample(img).astype(img.dtype)
        return jnp.stack([sample(img[..., ch]) for ch in range(img.shape[-1])], -1).astype(
            img.dtype
        )

    return jax.vmap(one)(x, degrees)


def paired_geometry(
    keys: Array,
    images: Array,
    masks: Array,
    size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip_prob: float = 0.5,
    rot90_prob: float = 0.0,
    max_degrees: float = 0.0,
) -> tuple[Array, Array]:
    """The same random crop, flip, quarter turns and rotation for each image and its mask.

    Images (B, H, W, C) go through bilinear sampling, masks (B, H, W) through nearest, so labels stay
    labels. Returns (images (B, size, size, C) float in [0, 255], masks (B, size, size)).
    """
    u = uniforms(keys, CROP_UNIFORMS + 4)
    boxes = boxes_from_uniforms(
        u[:, :CROP_UNIFORMS], images.shape[1], images.shape[2], scale, ratio
    )
    x = resized_crop(images, boxes, size)
    m = resized_crop(masks, boxes, size, nearest=True)
    u = u[:, CROP_UNIFORMS:]
    flip = u[:, 0] < hflip_prob
    x, m = hflip(x, flip), hflip(m, flip)
    if rot90_prob > 0:
        k = jnp.where(u[:, 1] < rot90_prob, 1 + jnp.floor(u[:, 2] * 3).astype(jnp.int32), 0)
        x, m = rot90(x, k), rot90(m, k)
    if max_degrees > 0:
        deg = max_degrees * (2 * u[:, 3] - 1)
        x, m = rotate(x, deg), rotate(m, deg, nearest=True)
    return x, m


def cutmix_boxes(
    keys: Array,
    height: int,
    width: int,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> Array:
    """Boolean (B, H, W) box masks: area ~ U(area)·HW, aspect log-uniform in `ratio`, position uniform
    (UniMatch/FixMatch-seg's CutMix box, clipped to the image)."""
    yy = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
    xx = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5

    def one(u: Array) -> Array:
        a = height * width * (area[0] + (area[1] - area[0]) * u[0])
        lr = math.log(ratio[0]), math.log(ratio[1])
        r = jnp.exp(lr[0] + (lr[1] - lr[0]) * u[1])
        bh, bw = jnp.minimum(jnp.sqrt(a / r), height), jnp.minimum(jnp.sqrt(a * r), width)
        y0, x0 = u[2] * (height - bh), u[3] * (width - bw)
        return (yy >= y0) & (yy < y0 + bh) & (xx >= x0) & (xx < x0 + bw)

    return jax.vmap(one)(uniforms(keys, 4))


def cutmix(
    keys: Array,
    images: Array,
    masks: Array | None = None,
    *,
    prob: float = 1.0,
    area: tuple[float, float] = (0.02, 0.4),
) -> tuple[Array, Array | None, Array]:
    """CutMix within the batch: example b gets a random box of example (b+1) mod B (image and mask
    alike; with probability `prob`, else it is unchanged). Returns (images, masks, box (B, H, W) bool)."""
    k_box, k_apply = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 2))(keys), 1, 0)
    box = cutmix_boxes(k_box, images.shape[1], images.shape[2], area)
    box = box & _per_example(uniforms(k_apply, 1)[:, 0] < prob, box)
    partner = lambda a: jnp.roll(a, -1, axis=0)  # noqa: E731
    mixed = jnp.where(box[..., None] if images.ndim == 4 else box, partner(images), images)
    mixed_masks = None if masks is None else jnp.where(box, partner(masks), masks)
    return mixed, mixed_masks, box


# ---- Colour --------------------------------------------------------------------------------------


def gray(x: Array) -> Array:
    """(..., C) -> (..., 1) luma (ITU-R 601), as the host's `_gray`; identity for one channel."""
    if x.shape[-1] == 1:
        return x
    return (x @ jnp.asarray(_GRAY))[..., None]


def adjust(x: Array, op: str, factor: Array) -> Array:
    """One jitter operation on one image (H, W, C) in [0, 1], as in the host's `color_jitter`:
    brightness/contrast/saturation multiply by `factor`, hue rotates the YIQ chroma by `factor` turns."""
    if op == "brightness":
        return x * factor
    if op == "contrast":
        mean = jnp.mean(gray(x))
        return (x - mean) * factor + mean
    if op == "saturation":
        g = gray(x)
        return (x - g) * factor + g
    theta = factor * 2 * jnp.pi
    c, s = jnp.cos(theta), jnp.sin(theta)
    rot = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    rot = rot.at[1, 1].set(c).at[1, 2].set(-s).at[2, 1].set(s).at[2, 2].set(c)
    m = jnp.asarray(_FROM_YIQ) @ rot @ jnp.asarray(_TO_YIQ)
    return x @ m.T


def jitter_ops(channels: int) -> tuple[str, ...]:
    """Brightness and contrast for any image; saturation and hue only for RGB (host's rule)."""
    return ("brightness", "contrast") + (("saturation", "hue") if channels == 3 else ())


def color_jitter(u: Array, x: Array, strength: float, prob: float | Array) -> Array:
    """SimCLR colour jitter per example, from (B, 1 + 2·n_ops) uniforms: with probability `prob`,
    the operations in a random order (argsort of uniforms: a uniform permutation), factors uniform in
    the host's ranges, each followed by clipping to [0, 1] (the host's `color_jitter`)."""
    ops = jitter_ops(x.shape[-1])
    n = len(ops)
    s = 0.8 * strength
    lo = jnp.asarray([1 - s, 1 - s, 1 - s, -0.2 * strength][:n])
    hi = jnp.asarray([1 + s, 1 + s, 1 + s, 0.2 * strength][:n])
    branches = [lambda img, f, op=op: jnp.clip(adjust(img, op, f), 0.0, 1.0) for op in ops]

    def one(u: Array, img: Array) -> Array:
        order = jnp.argsort(u[1 : 1 + n])
        factors = lo + (hi - lo) * u[1 + n : 1 + 2 * n]
        out = img
        for j in range(n):
            out = jax.lax.switch(order[j], branches, out, factors[order[j]])
        return jnp.where(u[0] < prob, out, img)

    return jax.vmap(one)(u, x)


def random_grayscale(u: Array, x: Array, prob: float) -> Array:
    """RGB only (the host's rule): where u < `prob` (u: (B,) uniforms), the luma in all channels."""
    if x.shape[-1] != 3 or prob <= 0:
        return x
    return jnp.where(_per_example(u < prob, x), jnp.repeat(gray(x), 3, -1), x)


def blur_radius(size: int) -> int:
    """Kernel half-width of the host's blur: radius 5% of the side (at least 1), as scipy rounds it."""
    return int(max(1.0, 0.05 * size) + 0.5)


def gaussian_blur(x: Array, sigma: Array) -> Array:
    """Separable Gaussian blur of (B, H, W, C) with per-example sigma (B,): scipy's
    `gaussian_filter(mode="reflect")` with the host's kernel radius."""
    radius = blur_radius(x.shape[1])
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    w = jnp.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    w = w / jnp.sum(w, axis=1, keepdims=True)  # (B, 2R+1)
    pad = [(0, 0), (radius, radius), (radius, radius), (0, 0)]
    xp = jnp.pad(x, pad, mode="symmetric")  # scipy's "reflect" = edge pixel repeated.
    h, wd = x.shape[1], x.shape[2]
    wb = w[:, :, None, None, None]
    rows = sum(wb[:, t] * xp[:, t : t + h] for t in range(2 * radius + 1))
    return sum(wb[:, t] * rows[:, :, t : t + wd] for t in range(2 * radius + 1))


def _off(prob: float | Array) -> bool:
    """A probability known to be 0 when tracing: the operation is left out of the program."""
    return isinstance(prob, int | float) and prob <= 0


def random_blur(u: Array, x: Array, prob: float | Array, sigma: tuple[float, float]) -> Array:
    """From (B, 2) uniforms: with probability `prob`, a blur with sigma ~ U(sigma)."""
    if _off(prob):
        return x
    s = sigma[0] + (sigma[1] - sigma[0]) * u[:, 1]
    return jnp.where(_per_example(u[:, 0] < prob, x), gaussian_blur(x, s), x)


def solarize(x: Array, threshold: float = 0.5) -> Array:
    """Pixels at or above `threshold` inverted (x in [0, 1]), as PIL's ImageOps.solarize (BYOL/DINO)."""
    return jnp.where(x >= threshold, 1.0 - x, x)


def random_solarize(u: Array, x: Array, prob: float | Array) -> Array:
    """Where u < `prob` (u: (B,) uniforms), `solarize`."""
    if _off(prob):
        return x
    return jnp.where(_per_example(u < prob, x), solarize(x), x)


def normalize(x: Array, cfg: ml_collections.ConfigDict) -> Array:
    """(x - mean) / std per channel, as the host's `normalize`."""
    mean = jnp.asarray(cfg.mean, jnp.float32)
    std = jnp.asarray(cfg.std, jnp.float32)
    return (x - mean) / std


# ---- Views ---------------------------------------------------------------------------------------


def random_views(
    keys: Array,
    images: Array,
    cfg: ml_collections.ConfigDict,
    *,
    size: int | None = None,
    crop_scale: tuple[float, float] | None = None,
    blur_prob: float | None = None,
    solarize_prob: float | None = None,
) -> Array:
    """One random view per example: the host's `random_view` (crop, flip, jitter, grayscale, blur,
    solarize, normalise) on a batch of uint8 (B, H, W, C) images -> float32 (B, S, S, C).

    `size`, `crop_scale`, `blur_prob`, `solarize_prob` override `cfg` (DINO's per-crop settings; the
    probabilities may be traced scalars, so crops that differ only in them share one vmapped program).
    """
    size = int(cfg.image_size if size is None else size)
    scale = tuple(cfg.crop_scale if crop_scale is None else crop_scale)
    blur_prob = float(cfg.blur_prob) if blur_prob is None else blur_prob
    if solarize_prob is None:
        solarize_prob = float(cfg.get("solarize_prob", 0.0))
    n_jit = 1 + 2 * len(jitter_ops(images.shape[-1]))
    # Uniforms: crop, flip, jitter, grayscale, blur (apply, sigma), solarize.
    u = uniforms(keys, CROP_UNIFORMS + 1 + n_jit + 4)
    boxes = boxes_from_uniforms(u[:, :CROP_UNIFORMS], images.shape[1], images.shape[2], scale)
    x = resized_crop(images, boxes, size)
    u = u[:, CROP_UNIFORMS:]
    if cfg.hflip:
        x = hflip(x, u[:, 0] < 0.5)
    x = x / 255.0
    x = color_jitter(u[:, 1 : 1 + n_jit], x, cfg.jitter_strength, cfg.jitter_prob)
    u = u[:, 1 + n_jit :]
    x = random_grayscale(u[:, 0], x, cfg.grayscale_prob)
    x = random_blur(u[:, 1:3], x, blur_prob, tuple(cfg.blur_sigma))
    x = random_solarize(u[:, 3], x, solarize_prob)
    return normalize(x, cfg)


ViewFn = Callable[[Array, Array], dict[str, Array]]


def _view_keys(rng: Array, batch: int, views: int) -> Array:
    """(views, batch, 2) keys: per example, then per view."""
    return jnp.moveaxis(
        jax.vmap(lambda k: jax.random.split(k, views))(example_keys(rng, batch)), 1, 0
    )


def two_views(cfg: ml_collections.ConfigDict) -> ViewFn:
    """SimCLR: (rng, uint8 images) -> {"view1", "view2"} (the host's `TwoViews`). The two views are
    one vmapped program (half the compile time of two copies)."""

    def fn(rng: Array, images: Array) -> dict[str, Array]:
        keys = _view_keys(rng, len(images), 2)
        views = jax.vmap(lambda k: random_views(k, images, cfg))(keys)
        return {"view1": views[0], "view2": views[1]}

    return fn


def one_view(cfg: ml_collections.ConfigDict) -> ViewFn:
    """Supervised / CASS: (rng, uint8 images) -> {"image"} (the host's `OneView`)."""

    def fn(rng: Array, images: Array) -> dict[str, Array]:
        return {"image": random_views(example_keys(rng, len(images)), images, cfg)}

    return fn


def multi_crop(cfg: ml_collections.ConfigDict) -> ViewFn:
    """DINO: (rng, uint8 images) -> {"global": (B, G, S, S, C), "local": (B, L, s, s, C)} with the host
    `MultiCrop`'s per-crop blur (and `global_solarize_prob`) probabilities; crops of one size are one
    vmapped program."""
    n_g, n_l = int(cfg.num_global_crops), int(cfg.num_local_crops)
    blur = tuple(cfg.global_blur_prob)
    sol = tuple(cfg.get("global_solarize_prob", (0.0,)))
    blur_g = np.asarray([blur[min(i, len(blur) - 1)] for i in range(n_g)], np.float32)
    sol_g = np.asarray([sol[min(i, len(sol) - 1)] for i in range(n_g)], np.float32)

    def fn(rng: Array, images: Array) -> dict[str, Array]:
        keys = _view_keys(rng, len(images), n_g + n_l)

        def global_crop(k: Array, b: Array, s: Array) -> Array:
            return random_views(
                k,
                images,
                cfg,
                crop_scale=tuple(cfg.global_crop_scale),
                blur_prob=b,
                solarize_prob=s if sol_g.max() > 0 else 0.0,
            )

        out = {"global": jnp.swapaxes(jax.vmap(global_crop)(keys[:n_g], blur_g, sol_g), 0, 1)}
        if n_l:

            def local_crop(k: Array) -> Array:
                return random_views(
                    k,
                    images,
                    cfg,
                    size=int(cfg.local_image_size),
                    crop_scale=tuple(cfg.local_crop_scale),
                    blur_prob=float(cfg.local_blur_prob),
                    solarize_prob=0.0,
                )

            out["local"] = jnp.swapaxes(jax.vmap(local_crop)(keys[n_g:]), 0, 1)
        return out

    return fn


# ---- Host side and the step ----------------------------------------------------------------------


class SourceImage(grain.transforms.RandomMap):
    """Grain transform for the on-device path: record -> {"image": uint8 (S, S, C), "label", "index"},
    the whole image resized to `source_size(cfg)` (PIL bilinear, as the host path): all the host does.
    (A RandomMap that draws nothing, so the pipeline treats both paths alike.)"""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.size = source_size(cfg)

    def prepare(self, element: dict) -> dict:
        """All this transform does, and deterministic: `pipeline.train_iterator` may keep its result
        in memory for a small dataset. An image already S x S passes as it is (PIL would copy it)."""
        image = element["image"]
        if image.shape[:2] != (self.size, self.size):
            image = augment.resize(image, self.size)
        return {"image": image, "label": element["label"], "index": element["index"]}

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        del rng
        return self.prepare(element)


def with_device_views(step_fn: Callable, views: ViewFn) -> Callable:
    """A train step on source batches: makes the views from `batch["image"]` with a key derived from
    the step's `rng`, then runs `step_fn(state, views + the other fields, rng)` (same rng, so drop-path
    and the like see the keys the host path would give them)."""

    def step(state, batch: dict, rng: Array):
        made = views(rng, batch["image"])
        rest = {k: v for k, v in batch.items() if k != "image"}
        return step_fn(state, {**rest, **made}, rng)

    return step


def host_transform(cfg: ml_collections.ConfigDict, host: grain.transforms.RandomMap):
    """The Grain transform for `cfg`: `host` (NumPy views) or, with `aug.on_device`, `SourceImage`."""
    return SourceImage(cfg) if cfg.get("on_device", False) else host


def source_batch_shapes(
    cfg: ml_collections.ConfigDict, channels: int
) -> dict[str, tuple[int, ...]]:
    """Per-example shapes of an on-device source batch (uint8 images)."""
    s = source_size(cfg)
    return {"image": (s, s, channels)}
