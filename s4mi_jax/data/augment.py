"""Host-side (NumPy/PIL) augmentations for SimCLR views, following SimCLR's recipe
(Chen et al. 2020, appendix A; google-research/simclr `data_util.py`).

Colour jitter is written for medical images: brightness and contrast apply to any channel count, while
saturation, hue and random grayscale apply only to 3-channel images (on a grayscale X-ray they are undefined,
and faking them by tiling to RGB would waste compute and change nothing but the noise).
"""

from __future__ import annotations

import math

import grain
import ml_collections
import numpy as np
from PIL import Image
from scipy import ndimage


def _resize(image: np.ndarray, size: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """Crops `box` (x0, y0, x1, y1) from uint8 (H, W, C) and resizes it to size x size (bilinear)."""
    channels = [
        np.asarray(
            Image.fromarray(image[..., c]).resize((size, size), Image.BILINEAR, box=box), np.uint8
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Whole-image resize to size x size (evaluation)."""
    h, w = image.shape[:2]
    return _resize(image, size, (0, 0, w, h))


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """Inception-style crop (torchvision's algorithm: 10 tries, then a centre crop)."""
    h, w = image.shape[:2]
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = math.sqrt(target * aspect)
        ch = math.sqrt(target / aspect)
        if 0 < cw <= w and 0 < ch <= h:
            x0 = rng.uniform(0, w - cw)
            y0 = rng.uniform(0, h - ch)
            return _resize(image, size, (x0, y0, x0 + cw, y0 + ch))
    cw, ch = fallback_crop(w, h, ratio)
    x0, y0 = (w - cw) / 2, (h - ch) / 2
    return _resize(image, size, (x0, y0, x0 + cw, y0 + ch))


def fallback_crop(w: int, h: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """(width, height) of the centred crop used when no try fits: the whole image, its aspect
    clamped to `ratio` (torchvision; shared with the on-device crop)."""
    in_ratio = w / h
    if in_ratio < ratio[0]:
        return w, w / ratio[0]
    if in_ratio > ratio[1]:
        return h * ratio[1], h
    return w, h


def _gray(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] == 1:
        return x
    return (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def color_jitter(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """SimCLR jitter (brightness, contrast, saturation 0.8s; hue 0.2s) in random order, x in [0, 1]."""
    ops = ["brightness", "contrast"] + (["saturation", "hue"] if x.shape[-1] == 3 else [])
    for op in rng.permutation(ops):
        if op == "brightness":
            x = x * rng.uniform(1 - 0.8 * strength, 1 + 0.8 * strength)
        elif op == "contrast":
            mean = _gray(x).mean()
            x = (x - mean) * rng.uniform(1 - 0.8 * strength, 1 + 0.8 * strength) + mean
        elif op == "saturation":
            g = _gray(x)
            x = (x - g) * rng.uniform(1 - 0.8 * strength, 1 + 0.8 * strength) + g
        else:  # Hue: rotate the chroma plane of YIQ.
            theta = rng.uniform(-0.2 * strength, 0.2 * strength) * 2 * math.pi
            to_yiq = np.array(
                [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
            )
            c, s = math.cos(theta), math.sin(theta)
            rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
            m = np.linalg.inv(to_yiq) @ rot @ to_yiq
            x = x @ m.T.astype(np.float32)
        x = np.clip(x, 0.0, 1.0)
    return x


def gaussian_blur(
    x: np.ndarray, rng: np.random.Generator, sigma: tuple[float, float]
) -> np.ndarray:
    """Blur with sigma ~ U(sigma); kernel radius 5% of the side (SimCLR's kernel is 10% of the side)."""
    s = rng.uniform(*sigma)
    radius = max(1.0, 0.05 * x.shape[0])
    return ndimage.gaussian_filter(x, sigma=(s, s, 0), truncate=radius / s, mode="reflect")


def random_view(image: np.ndarray, rng: np.random.Generator, cfg: ml_collections.ConfigDict):
    """One random view (SimCLR recipe; milder settings for supervised training): uint8 (H, W, C) -> normalised
    float32 (S, S, C)."""
    x = random_resized_crop(image, rng, cfg.image_size, tuple(cfg.crop_scale))
    if cfg.hflip and rng.random() < 0.5:
        x = x[:, ::-1]
    x = x.astype(np.float32) / 255.0
    if rng.random() < cfg.jitter_prob:
        x = color_jitter(x, rng, cfg.jitter_strength)
    if x.shape[-1] == 3 and rng.random() < cfg.grayscale_prob:
        x = np.repeat(_gray(x), 3, axis=-1)
    if rng.random() < cfg.blur_prob:
        x = gaussian_blur(x, rng, tuple(cfg.blur_sigma))
    solarize_prob = cfg.get(
        "solarize_prob", 0.0
    )  # No draw when off: older configs' views unchanged.
    if solarize_prob > 0 and rng.random() < solarize_prob:
        x = np.where(x >= 0.5, 1.0 - x, x).astype(np.float32)
    return normalize(x, cfg)


def normalize(x: np.ndarray, cfg: ml_collections.ConfigDict) -> np.ndarray:
    """(x - mean) / std per channel; x in [0, 1]. One mean/std value is broadcast over channels."""
    mean = np.asarray(cfg.mean, np.float32)
    std = np.asarray(cfg.std, np.float32)
    return ((x - mean) / std).astype(np.float32)


def eval_view(image: np.ndarray, cfg: ml_collections.ConfigDict) -> np.ndarray:
    """Deterministic evaluation view: resize the whole image, normalise."""
    return normalize(resize(image, cfg.image_size).astype(np.float32) / 255.0, cfg)


class TwoViews(grain.transforms.RandomMap):
    """Grain transform: record -> {"view1", "view2", "label", "index"} with independent SimCLR views."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        image = element["image"]
        return {
            "view1": random_view(image, rng, self.cfg),
            "view2": random_view(image, rng, self.cfg),
            "label": element["label"],
            "index": element["index"],
        }


class OneView(grain.transforms.RandomMap):
    """Grain transform for supervised training: record -> {"image", "label"} with one random view."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        return {"image": random_view(element["image"], rng, self.cfg), "label": element["label"]}


class MultiCrop(grain.transforms.RandomMap):
    """Grain transform for DINO: record -> {"global": (G, S, S, C), "local": (L, s, s, C), "label",
    "index"}: G global crops (`global_crop_scale`, `image_size`) and L local crops (`local_crop_scale`,
    `local_image_size`), each with the SimCLR colour/blur recipe of `cfg`.

    Blur probability per crop follows official DINO (global 1: `global_blur_prob[0]`, global 2:
    `[1]`, locals: `local_blur_prob`); solarisation per global crop only if the config sets
    `global_solarize_prob` (official DINO: (0, 0.2); the chest configs leave it off).
    """

    def __init__(self, cfg: ml_collections.ConfigDict):
        def crop_cfg(size: int, scale, blur: float, solarize: float) -> ml_collections.ConfigDict:
            c = ml_collections.ConfigDict(cfg.to_dict())
            c.update(image_size=int(size), crop_scale=tuple(scale), blur_prob=float(blur))
            c.solarize_prob = float(solarize)
            return c

        blur = tuple(cfg.global_blur_prob)
        sol = tuple(cfg.get("global_solarize_prob", (0.0,)))  # Official DINO: (0, 0.2).
        self.globals = [
            crop_cfg(
                cfg.image_size,
                cfg.global_crop_scale,
                blur[min(i, len(blur) - 1)],
                sol[min(i, len(sol) - 1)],
            )
            for i in range(cfg.num_global_crops)
        ]
        self.local = crop_cfg(cfg.local_image_size, cfg.local_crop_scale, cfg.local_blur_prob, 0.0)
        self.num_local = int(cfg.num_local_crops)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        image = element["image"]
        out = {
            "global": np.stack([random_view(image, rng, c) for c in self.globals]),
            "label": element["label"],
            "index": element["index"],
        }
        if self.num_local:
            out["local"] = np.stack(
                [random_view(image, rng, self.local) for _ in range(self.num_local)]
            )
        return out
