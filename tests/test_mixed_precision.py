"""Mixed precision (`config.model.dtype="bfloat16"`): losses reduce in float32 whatever their inputs
(softmax/log-softmax, NT-Xent, DINO centring and sharpening, classification losses), equal to the
float32 computation on the same (bf16-rounded) values.

The bf16-vs-float32 training steps (loss within 5% relative, no NaN, float32 parameters, optimizer
state and BatchNorm statistics) are tests/test_sharding.py::test_bfloat16_step_keeps_float32_state;
the test budget does not allow a second model's two compiles here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from s4mi_jax.losses import classification, contrastive
from s4mi_jax.losses import dino as dino_losses


def _losses(z1, z2, s, t, center, logits, targets):
    """Every loss on the given inputs (one jitted program: one compile)."""
    out = {
        "nt_xent": contrastive.nt_xent(z1, z2, 0.1)[0],
        "cosine": contrastive.cosine_regression(z1, z2)[0],
        "center": dino_losses.update_center(center, t, 0.9),
    }
    out["dino"], aux = dino_losses.dino_loss(s, t, center, 0.1, 0.04)
    out.update({f"dino_{k}": v for k, v in aux.items()})
    out.update({k: fn(logits, targets) for k, fn in classification.LOSSES.items()})
    return out


def test_losses_reduce_in_float32():
    rng = np.random.default_rng(0)
    bf16 = dict(
        z1=rng.normal(size=(8, 16)),
        z2=rng.normal(size=(8, 16)),
        s=rng.normal(size=(4, 8, 32)),
        t=rng.normal(size=(2, 8, 32)),
        logits=rng.normal(size=(8, 3)),
    )
    bf16 = {k: jnp.asarray(v, jnp.bfloat16) for k, v in bf16.items()}
    common = dict(center=jnp.zeros((32,), jnp.float32), targets=jax.nn.one_hot(np.arange(8) % 3, 3))
    fn = jax.jit(_losses)
    low = fn(**bf16, **common)
    ref = fn(**{k: v.astype(jnp.float32) for k, v in bf16.items()}, **common)
    for k, v in low.items():
        assert v.dtype == jnp.float32, k
        np.testing.assert_allclose(np.asarray(v), np.asarray(ref[k]), rtol=1e-6, err_msg=k)
