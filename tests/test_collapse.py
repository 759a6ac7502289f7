"""The collapse monitors against NumPy, under jit, and the alarm's once-only warning and stop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s4mi_jax.core import collapse
from s4mi_jax.errors import ConfigError, S4MIError
from s4mi_jax.losses import dino as dino_losses


def _np_normalized(z):
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _np_spread(z):
    zn = _np_normalized(z)
    return zn.std(axis=0).mean() * np.sqrt(z.shape[1])


def _np_rank(z):
    s = np.linalg.svd(_np_normalized(z), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return np.exp(-(p * np.log(p)).sum())


@pytest.mark.parametrize("shape", [(64, 16), (8, 32)])  # Batch larger and smaller than d.
def test_monitors_match_numpy_under_jit(shape):
    rng = np.random.default_rng(0)
    z = rng.normal(size=shape) * rng.uniform(0.1, 3.0, size=shape[1])  # Anisotropic.
    got = jax.jit(collapse.embedding_monitors)(jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(float(got["collapse_spread"]), _np_spread(z), rtol=1e-4)
    np.testing.assert_allclose(float(got["collapse_rank"]), _np_rank(z), rtol=1e-3)


def test_monitors_tell_spread_from_collapsed():
    rng = np.random.default_rng(1)
    spread_out = rng.normal(size=(256, 16))
    # "Bias plus noise": one direction for every image, per-image part 1e-3 of it.
    collapsed = np.ones((256, 16)) * 3.0 + 1e-3 * rng.normal(size=(256, 16))
    healthy = jax.jit(collapse.embedding_monitors)(jnp.asarray(spread_out, jnp.float32))
    bad = jax.jit(collapse.embedding_monitors)(jnp.asarray(collapsed, jnp.float32))
    assert 0.9 < float(healthy["collapse_spread"]) < 1.1 and float(healthy["collapse_rank"]) > 12
    assert float(bad["collapse_spread"]) < 0.01 and float(bad["collapse_rank"]) < 1.1
    assert collapse.first_alarm({f"train/{k}": float(v) for k, v in healthy.items()}) is None
    assert "collapse_spread" in collapse.first_alarm(
        {f"train/{k}": float(v) for k, v in bad.items()}
    )


def test_distinct_counts_like_numpy():
    labels = np.random.default_rng(2).integers(0, 50, size=300)
    assert int(jax.jit(collapse.distinct)(jnp.asarray(labels))) == len(np.unique(labels))
    assert int(collapse.distinct(jnp.zeros((7,), jnp.int32))) == 1


def _dino_aux(teacher, center, k=32):
    student = np.random.default_rng(3).normal(size=(4,) + teacher.shape[1:])
    _, aux = jax.jit(dino_losses.dino_loss, static_argnums=(3,))(
        jnp.asarray(student, jnp.float32),
        jnp.asarray(teacher, jnp.float32),
        jnp.asarray(center, jnp.float32),
        0.1,
        0.04,
    )
    return {k: float(v) for k, v in aux.items()}


def test_kl_to_center_is_zero_when_the_teacher_ignores_the_image():
    rng = np.random.default_rng(4)
    center = rng.normal(size=(32,))
    # The teacher outputs its centre for every image: uniform after centring, no image information.
    at_center = _dino_aux(np.broadcast_to(center, (2, 16, 32)).copy(), center)
    assert at_center["kl_to_center"] < 1e-5
    np.testing.assert_allclose(at_center["collapse_entropy_ratio"], 1.0, rtol=1e-5)
    # One constant output that is not the centre: one prototype for every image.
    constant = _dino_aux(np.broadcast_to(center + 5 * np.eye(32)[3], (2, 16, 32)).copy(), center)
    assert constant["kl_to_center"] < 1e-5 and constant["collapse_prototypes"] == 1
    # Image-dependent outputs carry information.
    healthy = _dino_aux(rng.normal(size=(2, 16, 32)), center)
    assert healthy["kl_to_center"] > 0.5 and healthy["collapse_prototypes"] > 5


def test_dino_loss_takes_a_1_by_k_center():
    rng = np.random.default_rng(5)
    teacher, center = rng.normal(size=(2, 8, 16)), rng.normal(size=(16,))
    flat = _dino_aux(teacher, center)
    row = _dino_aux(teacher, center[None, :])
    for key in flat:
        np.testing.assert_allclose(row[key], flat[key], rtol=1e-6, err_msg=key)


class _Ckpt:
    directory = "/tmp/run/checkpoints"
    waited = False

    def wait(self):
        self.waited = True


COLLAPSED = {"train/loss": 4.1, "train/collapse_spread": 0.03, "train/collapse_rank": 1.2}
HEALTHY = {"train/loss": 3.0, "train/collapse_spread": 0.8, "train/collapse_rank": 9.0}


def test_alarm_warns_once_after_the_grace_period():
    lines = []
    alarm = collapse.Alarm("warn", after_step=100, advice="Do X.", log=lines.append)
    alarm(50, COLLAPSED, _Ckpt())  # Grace period: random networks are not yet spread.
    assert lines == []
    alarm(100, HEALTHY, _Ckpt())
    alarm(150, COLLAPSED, _Ckpt())
    alarm(200, COLLAPSED, _Ckpt())
    assert len(lines) == 1
    line = lines[0]
    assert "step 150" in line and "collapse_spread 0.03 < 0.1" in line and "Do X." in line
    assert "\n" not in line


def test_alarm_stop_raises_after_the_save_and_off_is_silent():
    ckpt = _Ckpt()
    alarm = collapse.Alarm("stop", after_step=0, advice="Do X.", log=print)
    with pytest.raises(S4MIError, match=r"step 7: collapse_spread .*/checkpoints is intact\."):
        alarm(7, COLLAPSED, ckpt)
    assert ckpt.waited
    lines = []
    collapse.Alarm("off", 0, "", lines.append)(7, COLLAPSED, _Ckpt())
    assert lines == []
    with pytest.raises(ConfigError, match="config.collapse='loud'"):
        collapse.Alarm("loud", 0, "", print)
