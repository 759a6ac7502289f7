"""`config.model.remat`: the same loss, gradients and BatchNorm statistics as without (float32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from s4mi_jax.models import build_encoder
from s4mi_jax.models.segmenter import build_segmenter
from tests.helpers import max_abs_diff


def _loss_grads_state(build, x, rng):
    model = build()

    def loss_fn(m):
        out = m(x, rng)
        return jnp.mean(out**2) + jnp.mean(jnp.sin(out))

    loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)  # Updates the model's BN stats.
    return loss, nnx.state(grads, nnx.Param), nnx.state(model, nnx.BatchStat), model


CASES = {
    "resnet18": lambda remat: (
        lambda: build_encoder(
            common.encoder_config("resnet18", width=8, stem="cifar", remat=remat), 1, nnx.Rngs(0)
        ),
        (4, 16, 16, 1),
    ),
    "resnet50": lambda remat: (
        lambda: build_encoder(
            common.encoder_config("resnet50", width=4, remat=remat), 1, nnx.Rngs(0)
        ),
        (2, 32, 32, 1),
    ),
    "vit": lambda remat: (
        lambda: build_encoder(
            common.encoder_config(
                "vit",
                embed_dim=32,
                depth=3,
                num_heads=2,
                patch_size=4,
                image_size=16,
                drop_path=0.2,
                remat=remat,
            ),
            1,
            nnx.Rngs(0),
        ),
        (4, 16, 16, 1),
    ),
    "unet": lambda remat: (
        lambda: build_segmenter(
            common.seg_model_config("unet", width=4, levels=3, remat=remat), 3, 2, nnx.Rngs(0)
        ),
        (2, 16, 16, 3),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_remat_same_loss_gradients_and_statistics(name):
    x = jax.random.normal(jax.random.key(1), CASES[name](False)[1], jnp.float32)
    rng = jax.random.key(2)  # Drop-path (ViT) and dropout (U-Net) on: the same masks either way.
    plain = _loss_grads_state(CASES[name](False)[0], x, rng)
    remat = _loss_grads_state(CASES[name](True)[0], x, rng)
    assert remat[3].remat and not plain[3].remat  # Really the checkpointed path.
    np.testing.assert_allclose(float(remat[0]), float(plain[0]), rtol=1e-6)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(plain[1]))
    assert scale > 0
    assert max_abs_diff(remat[1], plain[1]) <= 1e-5 * scale
    if jax.tree.leaves(plain[2]):  # BatchNorm running statistics (ResNet, U-Net), updated alike.
        initial = nnx.state(CASES[name](False)[0](), nnx.BatchStat)
        assert max_abs_diff(plain[2], initial) > 1e-3
        assert max_abs_diff(remat[2], plain[2]) <= 1e-6


def test_remat_really_checkpoints():
    """The jaxpr of the gradient holds a `checkpoint`/`remat` per block only with remat on."""
    x = jnp.ones((2, 16, 16, 1))
    for remat, expected in ((False, 0), (True, 8)):  # ResNet-18: 8 blocks.
        model = CASES["resnet18"](remat)[0]()
        graphdef, state = nnx.split(model)

        def loss(state, graphdef=graphdef):
            return jnp.mean(nnx.merge(graphdef, state)(x) ** 2)

        text = str(jax.make_jaxpr(jax.grad(loss))(state))
        assert text.count("remat") + text.count("checkpoint[") == expected, remat
