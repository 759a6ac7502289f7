"""DINO against plain NumPy transcriptions of official `main_dino.py`, and the step's invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import dino_chest
from s4mi_jax.core import optim, run, sharding, train_state
from s4mi_jax.core.ema import ema_update
from s4mi_jax.losses import dino as dino_losses
from s4mi_jax.models.dino import TRAINABLE
from s4mi_jax.trainers import dino
from tests.helpers import max_abs_diff, override


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_dino_loss(student, teacher, center, student_temp, teacher_temp):
    """Official DINOLoss.forward, loop for loop."""
    student_out = [s / student_temp for s in student]
    teacher_out = [_softmax((t - center) / teacher_temp) for t in teacher]
    total, n_terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v, s in enumerate(student_out):
            if v == iq:
                continue
            log_s = s - s.max(-1, keepdims=True)
            log_s = log_s - np.log(np.exp(log_s).sum(-1, keepdims=True))
            total += np.mean(np.sum(-q * log_s, axis=-1))
            n_terms += 1
    return total / n_terms


@pytest.mark.parametrize("crops", [2, 6])
def test_loss_matches_numpy(crops):
    rng = np.random.default_rng(crops)
    student = rng.normal(size=(crops, 5, 11)) * 3
    teacher = rng.normal(size=(2, 5, 11)) * 3
    center = rng.normal(size=(11,))
    got, aux = dino_losses.dino_loss(
        jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(center), 0.1, 0.04
    )
    want = _np_dino_loss(student, teacher, center, 0.1, 0.04)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # H(t, s) = h(t) + KL(t || s): the monitors decompose the loss.
    np.testing.assert_allclose(
        float(aux["teacher_entropy"] + aux["kl_teacher_student"]), want, rtol=1e-5
    )
    t = _softmax((teacher - center) / 0.04)
    np.testing.assert_allclose(
        float(aux["teacher_entropy"]),
        np.mean(-np.sum(t * np.log(t + 1e-30), -1)),
        rtol=1e-4,
        atol=1e-6,
    )


def test_center_and_ema_match_numpy():
    rng = np.random.default_rng(0)
    center = rng.normal(size=(7,)).astype(np.float32)
    teacher = rng.normal(size=(2, 4, 7)).astype(np.float32)
    got = dino_losses.update_center(jnp.asarray(center), jnp.asarray(teacher), 0.9)
    # Official: batch_center = sum(teacher_output, dim=0) / (len * world_size), over all crops.
    want = center * 0.9 + teacher.reshape(-1, 7).sum(0) / 8 * 0.1
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)

    t = {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=(4,))}
    s = {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=(4,))}
    out = ema_update(t, s, 0.996)
    for k in t:  # Official: param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
        np.testing.assert_allclose(np.asarray(out[k]), t[k] * 0.996 + 0.004 * s[k], rtol=1e-6)


def test_schedules():
    total, base = 50, 0.996
    # Official utils.cosine_scheduler(base, 1, epochs, niter_per_ep) over all iterations.
    iters = np.arange(total)
    want = 1 + 0.5 * (base - 1) * (1 + np.cos(np.pi * iters / len(iters)))
    got = np.array([float(dino_losses.teacher_momentum(i, base, total)) for i in iters])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    temps = [float(dino_losses.teacher_temperature(i, 0.04, 0.07, 10)) for i in (0, 5, 10, 30)]
    np.testing.assert_allclose(temps, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)
    np.testing.assert_allclose(float(dino_losses.teacher_temperature(3, 0.04, 0.07, 0)), 0.07)


def _config(**kw):
    config = dino_chest.get_config("local")
    return override(config, **{"optim.freeze_last_layer_epochs": 0.0, **kw})


def _batch(config, n=16, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    g, s = config.aug.image_size, config.aug.local_image_size
    return {
        "global": rng.normal(size=(n, 2, g, g, 1)).astype(dtype),
        "local": rng.normal(size=(n, config.aug.num_local_crops, s, s, 1)).astype(dtype),
    }


def _setup(config, devices=None, total_steps=10):
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    task = dino.task(config, run.RunData(channels=1, num_examples=16), mesh)
    tx = optim.make_optimizer(config.optim, lambda s: 1e-2, total_steps)
    graphdef, init, abstract = train_state.initializer(
        task.build_model, tx, config.seed, mesh, trainable=TRAINABLE
    )
    step = train_state.jit_step(
        task.make_step(run.StepArgs(graphdef, tx, total_steps, 2)),
        train_state.shardings_of(abstract),
        mesh,
    )
    return mesh, graphdef, init, step


@pytest.mark.parametrize("backbone", ["resnet18", "vit"])
def test_step_teacher_is_ema_of_student_and_gets_no_gradient(backbone):
    config = _config(**{"model.name": backbone})
    mesh, graphdef, init, step = _setup(config)
    state0 = init()
    # Only the student is trained: the teacher and the centre live outside the optimizer.
    assert set(state0.params.keys()) == {"student"}
    assert {"teacher", "center"} <= set(state0.model_state.keys())
    batch = _batch(config)
    model0 = nnx.merge(graphdef, state0.params, state0.model_state)
    model0.train()
    t_out = model0.teacher(jnp.asarray(batch["global"]).reshape(-1, 32, 32, 1))[1]
    state0 = jax.device_get(state0)

    state1, metrics = step(
        init(), sharding.put_batch(batch, mesh), jax.random.key_data(jax.random.key(1))
    )
    state1 = jax.device_get(state1)
    m = float(dino_losses.teacher_momentum(0, config.loss.teacher_momentum, 10))
    np.testing.assert_allclose(float(metrics["teacher_momentum"]), m, rtol=1e-7)
    model1 = nnx.merge(graphdef, state1.params, state1.model_state)
    teacher0 = nnx.state(nnx.merge(graphdef, state0.params, state0.model_state).teacher, nnx.Param)
    student1 = nnx.state(model1.student, nnx.Param)
    want = jax.tree.map(
        lambda t, s: m * np.asarray(t) + (1 - m) * np.asarray(s), teacher0, student1
    )
    assert max_abs_diff(nnx.state(model1.teacher, nnx.Param), want) < 1e-6
    # The student moved, so the teacher's change is the EMA and nothing else.
    assert max_abs_diff(state0.params, state1.params) > 1e-4
    np.testing.assert_allclose(
        np.asarray(model1.center[...]), 0.1 * np.asarray(t_out).mean(0), rtol=1e-4, atol=1e-7
    )
    for key in ("teacher_entropy", "kl_teacher_student", "kl_to_center", "embedding_std"):
        assert np.isfinite(float(metrics[key]))


def test_last_layer_frozen_in_first_epoch():
    config = _config(**{"optim.freeze_last_layer_epochs": 1.0})  # 2 steps per epoch in _setup.
    mesh, graphdef, init, step = _setup(config)
    state = init()
    before = jax.device_get(state.params)
    for i in range(3):
        state, _ = step(state, sharding.put_batch(_batch(config, seed=i), mesh), state.rng)
        params = jax.device_get(state.params)
        last = params["student"]["head"]["last_layer"]["kernel"]
        moved = max_abs_diff(last, before["student"]["head"]["last_layer"]["kernel"])
        assert (moved == 0.0) == (i < 2), (i, moved)
        assert max_abs_diff(params["student"]["encoder"], before["student"]["encoder"]) > 0


@pytest.mark.parametrize("backbone", ["resnet18", "vit"])
def test_eight_devices_match_one_device_float64(backbone):
    with jax.enable_x64(True):
        # SGD: Adam's m/sqrt(v) turns 1e-16 rounding in near-zero gradients into O(lr) updates.
        config = _config(**{"model.name": backbone, "model.dtype": "float64", "optim.name": "sgd"})
        batches = [_batch(config, dtype=np.float64, seed=i) for i in range(2)]
        out = {}
        for n in (1, 8):
            mesh, _, init, step = _setup(config, devices=jax.devices()[:n])
            state, losses = init(), []
            for i, b in enumerate(batches):
                state, metrics = step(
                    state, sharding.put_batch(b, mesh), jax.random.fold_in(state.rng, i)
                )
                losses.append(float(metrics["loss"]))
            out[n] = (jax.device_get(state), losses)
    (one, l1), (eight, l8) = out[1], out[8]
    np.testing.assert_allclose(l1, l8, rtol=1e-12)
    assert jax.tree.leaves(one.params)[0].dtype == np.float64
    for part in ("params", "model_state", "opt_state"):  # model_state: teacher, centre, BN.
        assert max_abs_diff(getattr(one, part), getattr(eight, part)) < 1e-10, part


def _mlp_bottleneck(head, x):
    """The head's pre-normalisation bottleneck, written out (GELU between the MLP's Linears)."""
    for i, layer in enumerate(head.mlp):
        x = layer(x)
        if i < len(head.mlp) - 1:
            x = jax.nn.gelu(x, approximate=False)
    return x


def _signal_gain(head, feats) -> float:
    """||per-image variation of the bottleneck|| / ||per-image variation of the input features||."""
    b = np.asarray(_mlp_bottleneck(head, feats), np.float64)
    f = np.asarray(feats, np.float64)
    return float(np.linalg.norm(b - b.mean(0)) / np.linalg.norm(f - f.mean(0)))


@pytest.fixture(scope="module")
def chest_images():
    from s4mi_jax.data.sources import open_source
    from tests.test_real_data import SHARED

    root = SHARED / "chest_xray_pneumonia"
    if not root.is_dir():
        pytest.skip(f"no shared datasets at {SHARED}")
    source = open_source(str(root), verify=False)
    idx = np.random.default_rng(0).choice(len(source), 48, replace=False)
    return np.stack([source[int(i)]["image"] for i in idx]).astype(np.float32) / 255.0


@pytest.mark.parametrize("variant", ["local", None])
def test_head_keeps_the_per_image_signal_at_init(chest_images, variant):
    """The DINO head's signal gain at `:local` and default widths is at least a tenth of the official
    head's (384 -> 2048 -> 2048 -> 256, official init): narrow heads at the official std 0.02 pass
    ~5e-4 of it and collapse (the teacher goes uniform within a few hundred steps)."""
    from s4mi_jax.models import build_encoder
    from s4mi_jax.models.dino import DinoHead

    def features(model_cfg, size):
        x = jax.image.resize(
            jnp.asarray(chest_images), (len(chest_images), size, size, 1), "linear"
        )
        encoder = build_encoder(model_cfg, 1, nnx.Rngs(0))
        encoder.eval()
        return encoder(x)

    config = dino_chest.get_config(variant)
    feats = features(config.model, config.aug.image_size)
    ours = DinoHead(
        feats.shape[-1],
        config.model.head_out_dim,
        hidden_dim=config.model.head_hidden_dim,
        bottleneck_dim=config.model.head_bottleneck_dim,
        rngs=nnx.Rngs(1),
    )
    vit_s = override(dino_chest.get_config("local"), **{"model.name": "vit_small"})
    official_feats = features(vit_s.model, 32)  # ViT-S features (384-d) of the same images.
    official = DinoHead(384, 65536, hidden_dim=2048, bottleneck_dim=256, rngs=nnx.Rngs(1))
    # The official head at the official widths keeps its official init (std 0.02 everywhere).
    for layer in official.mlp:
        np.testing.assert_allclose(float(jnp.std(layer.kernel[...])), 0.02, rtol=0.05)
    gain, official_gain = _signal_gain(ours, feats), _signal_gain(official, official_feats)
    assert 0.03 < official_gain < 0.2, official_gain
    assert gain >= official_gain / 10, (gain, official_gain)


def test_init_from_starts_student_and_teacher_encoders_alike():
    """`config.init_from` loads one pretrained encoder into both networks (the teacher must start as
    the student); unset, DINO starts at random as the official code."""
    config = _config()
    mesh = sharding.make_mesh(config.mesh)
    data = run.RunData(channels=1, num_examples=16)
    assert dino.task(config, data, mesh).starts == ()
    config.init_from = "runs/simclr_chest"
    starts = dino.task(config, data, mesh).starts
    assert [s.prefix for s in starts] == ["student/encoder", "teacher/encoder"]
    assert {s.init_from for s in starts} == {"runs/simclr_chest"}


def test_head_batchnorm_uses_batch_statistics_after_each_hidden_linear():
    """`head_use_bn` (official `--use_bn_in_head`): in train mode (student and teacher alike) the
    head ignores a per-feature offset shared by the whole batch, which a plain MLP passes on; in eval
    mode it uses running statistics instead."""
    from s4mi_jax.models.dino import DinoHead

    x = jax.random.normal(jax.random.key(0), (16, 12))
    shift = 3.0 * jax.random.normal(jax.random.key(1), (1, 12))
    for use_bn in (True, False):
        head = DinoHead(12, 32, hidden_dim=8, bottleneck_dim=4, use_bn=use_bn, rngs=nnx.Rngs(0))
        assert len(head.norms) == (2 if use_bn else 0)
        head.train()
        same = np.allclose(head.bottleneck(x), head.bottleneck(x + shift), atol=1e-4)
        assert same == use_bn
    head = DinoHead(12, 32, hidden_dim=8, bottleneck_dim=4, use_bn=True, rngs=nnx.Rngs(0))
    head.eval()
    assert not np.allclose(head.bottleneck(x), head.bottleneck(x + shift), atol=1e-4)
