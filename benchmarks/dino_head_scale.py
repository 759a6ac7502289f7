"""The DINO head's scale at init on real images: what the head init and the SGD learning rate depend on.

    python benchmarks/dino_head_scale.py --data_root=../shared/data/chest_xray_pneumonia

For the `:local` and default configs (ResNet-18 at their widths) and the official ResNet-50 head
(2048 -> 2048 -> 2048 -> 256), on 32 random images: the encoder features' norm ||f||, the bottleneck's
norm ||b|| (before L2-normalisation), the head's signal gain (per-image variation of b over that of f),
and the SGD learning rate re-derived from the official 0.03 as 0.03·(||b|| / ||b_official||)²
(configs/dino_chest.py explains why). Nothing is trained.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from configs import dino_chest  # noqa: E402
from s4mi_jax.data.sources import open_source  # noqa: E402
from s4mi_jax.models import build_encoder  # noqa: E402
from s4mi_jax.models.dino import DinoHead  # noqa: E402

_DATA_ROOT = flags.DEFINE_string("data_root", None, "Image folder (None: the embedded sample).")
_N = flags.DEFINE_integer("num_images", 32, "Images to measure on.")


def measure(model_cfg, images: np.ndarray, size: int, hidden: int, bottleneck: int) -> dict:
    x = jax.image.resize(jnp.asarray(images), (len(images), size, size, 1), "linear")
    encoder = build_encoder(model_cfg, 1, nnx.Rngs(0))
    encoder.train()  # As in pretraining: BatchNorm on batch statistics.
    f = np.asarray(encoder(x), np.float64)
    head = DinoHead(f.shape[-1], 64, hidden_dim=hidden, bottleneck_dim=bottleneck, rngs=nnx.Rngs(1))
    b = np.asarray(head.bottleneck(jnp.asarray(f, jnp.float32)), np.float64)
    gain = np.linalg.norm(b - b.mean(0)) / np.linalg.norm(f - f.mean(0))
    return {
        "feature_dim": f.shape[-1],
        "f_norm": float(np.linalg.norm(f, axis=1).mean()),
        "b_norm": float(np.linalg.norm(b, axis=1).mean()),
        "gain": float(gain),
    }


def main(argv):
    del argv
    source = open_source(_DATA_ROOT.value, verify=False)
    idx = np.random.default_rng(0).choice(len(source), min(_N.value, len(source)), replace=False)
    images = np.stack([source[int(i)]["image"][..., :1] for i in idx]).astype(np.float32) / 255.0
    rows = {}
    for name, variant in (("local", "local"), ("default", None)):
        c = dino_chest.get_config(variant)
        rows[name] = measure(
            c.model, images, c.aug.image_size, c.model.head_hidden_dim, c.model.head_bottleneck_dim
        )
    official = dino_chest.get_config("local")
    official.model.update(name="resnet50", width=64)
    rows["official ResNet-50"] = measure(official.model, images, 64, 2048, 256)
    ref = rows["official ResNet-50"]["b_norm"]
    print(f"{'head':<20} {'d':>5} {'||f||':>7} {'||b||':>7} {'gain':>7} {'SGD base lr':>12}")
    for name, r in rows.items():
        lr = 0.03 * (r["b_norm"] / ref) ** 2
        print(
            f"{name:<20} {r['feature_dim']:>5} {r['f_norm']:>7.3f} {r['b_norm']:>7.3f} "
            f"{r['gain']:>7.4f} {lr:>12.2e}"
        )


if __name__ == "__main__":
    app.run(main)
