"""Model tests at toy sizes (width 4, 16-32 px, batch 2-4).

NNX builds parameters eagerly (one small compile per initializer shape), so models are module-scoped
fixtures shared across tests; every test sets train/eval mode itself so order does not matter.
Forward passes go through `nnx.jit`: one compile is much cheaper than ~200 eager op dispatches.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from s4mi_jax.errors import ConfigError
from s4mi_jax.models import (
    EncoderWithHead,
    ProjectionHead,
    ResNet,
    build_encoder,
    build_simclr_model,
    resnet18,
    resnet50,
)

WIDTH = 4


@nnx.jit
def _forward(model, x):
    return model(x)


def _images(n, size, channels, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, size, size, channels), jnp.float32)


def _model_cfg(**overrides):
    cfg = ml_collections.ConfigDict(
        dict(
            name="resnet18",
            width=WIDTH,
            stem="cifar",
            dtype="float32",
            proj_hidden_dim=16,
            proj_out_dim=8,
            proj_layers=2,
        )
    )
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def r18_cifar():
    """ResNet-18, cifar stem, 1 channel; seed 0 (the bf16 test rebuilds it with the same seed)."""
    return resnet18(in_channels=1, width=WIDTH, stem="cifar", rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def r18_imagenet():
    return resnet18(in_channels=3, width=WIDTH, stem="imagenet", rngs=nnx.Rngs(1))


@pytest.fixture(scope="module")
def r50_cifar():
    return resnet50(in_channels=3, width=WIDTH, stem="cifar", rngs=nnx.Rngs(2))


@pytest.fixture(scope="module")
def r50_imagenet():
    return resnet50(in_channels=1, width=WIDTH, stem="imagenet", rngs=nnx.Rngs(3))


# (fixture, input channels, input size, feature_dim, stem kernel size)
SHAPE_CASES = [
    ("r18_cifar", 1, 16, 8 * WIDTH, 3),
    ("r18_imagenet", 3, 32, 8 * WIDTH, 7),
    ("r50_cifar", 3, 16, 32 * WIDTH, 3),
    ("r50_imagenet", 1, 32, 32 * WIDTH, 7),
]


@pytest.mark.parametrize("name,channels,size,feature_dim,stem_k", SHAPE_CASES)
def test_resnet_output_shapes(request, name, channels, size, feature_dim, stem_k):
    model = request.getfixturevalue(name)
    model.eval()
    assert model.feature_dim == feature_dim
    assert model.stem_conv.kernel.shape == (stem_k, stem_k, channels, WIDTH)
    out = _forward(model, _images(2, size, channels))
    assert out.shape == (2, feature_dim)
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    # Post-ReLU features, average-pooled: non-negative, and not all zero.
    assert bool(jnp.all(out >= 0)) and bool(jnp.any(out > 0))


def test_stems_downsample_as_documented(r18_cifar, r18_imagenet):
    # cifar: the last stage runs at input/8 (3 stride-2 stages); imagenet: at input/32.
    def last_stage(model, x):
        h = nnx.relu(model.stem_bn(model.stem_conv(x)))
        if model.stem == "imagenet":
            h = nnx.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for blk in model.blocks:
            h = blk(h)
        return h

    for model, x in ((r18_cifar, _images(2, 16, 1)), (r18_imagenet, _images(2, 64, 3))):
        model.eval()
        h = last_stage(model, x)
        assert h.shape[1:3] == (2, 2)
        # The real forward pass follows the same path (pool included) and averages that grid.
        np.testing.assert_allclose(_forward(model, x), h.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_zero_init_residual_flag(r18_cifar):
    for blk in r18_cifar.blocks:
        np.testing.assert_array_equal(blk.bn2.scale[...], 0.0)
        np.testing.assert_array_equal(blk.bn1.scale[...], 1.0)
    plain = ResNet(
        stage_sizes=[1],
        block="bottleneck",
        in_channels=1,
        width=WIDTH,
        stem="cifar",
        zero_init_residual=False,
        rngs=nnx.Rngs(0),
    )
    np.testing.assert_array_equal(plain.blocks[0].bn3.scale[...], 1.0)
    # Bottleneck expansion 4 with a projection shortcut from WIDTH to 4 * WIDTH channels.
    assert plain.feature_dim == 4 * WIDTH
    assert plain.blocks[0].shortcut.conv.kernel.shape == (1, 1, WIDTH, 4 * WIDTH)

    # BN momentum 0.9: from a zero running mean, one train step moves it to 0.1 * batch mean.
    plain.train()
    x = _images(2, 8, 1) + 2.0
    batch_mean = jnp.mean(plain.stem_conv(x), axis=(0, 1, 2))
    plain(x)
    np.testing.assert_allclose(plain.stem_bn.mean[...], 0.1 * batch_mean, rtol=1e-5, atol=1e-6)
    assert plain.stem_bn.epsilon == 1e-5


def test_batchnorm_stats_update_in_train_not_eval(r18_cifar):
    model = r18_cifar
    x = _images(4, 16, 1, seed=1) * 3.0 + 1.0

    def stats():
        return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]

    model.train()
    before = stats()
    _forward(model, x)
    after_train = stats()
    changed = [not np.allclose(a, b) for a, b in zip(before, after_train, strict=True)]
    assert all(changed), f"{changed.count(False)} of {len(changed)} batch stats did not move"

    model.eval()
    _forward(model, x)
    after_eval = stats()
    for a, b in zip(after_train, after_eval, strict=True):
        np.testing.assert_array_equal(a, b)

    # Eval mode uses running stats, so a sample's features don't depend on its batch-mates;
    # train mode uses batch stats, so they do.
    solo = _forward(model, x[:1])
    np.testing.assert_allclose(_forward(model, x)[:1], solo, rtol=1e-5, atol=1e-6)
    model.train()
    assert not np.allclose(_forward(model, x)[:1], _forward(model, x[:1]), atol=1e-4)
    model.eval()


def test_bfloat16_compute_float32_params(r18_cifar):
    model = resnet18(in_channels=1, width=WIDTH, stem="cifar", dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    dtypes = {v.dtype for v in jax.tree.leaves(nnx.state(model, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    x = _images(2, 16, 1)
    # Compute really happens in bf16 ...
    assert model.stem_conv(x).dtype == jnp.bfloat16
    # ... while the features come back float32, close to the float32 twin (same seed => same
    # params; train mode so both normalise with this batch's statistics).
    model.train()
    r18_cifar.train()
    out = _forward(model, x)
    ref = _forward(r18_cifar, x)
    r18_cifar.eval()
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(out, ref, rtol=0.1, atol=0.05)
    stat_dtypes = {v.dtype for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))}
    assert stat_dtypes == {jnp.dtype(jnp.float32)}


def test_split_merge_round_trip(r18_cifar):
    r18_cifar.eval()
    x = _images(2, 16, 1)
    graphdef, params, rest = nnx.split(r18_cifar, nnx.Param, ...)
    merged = nnx.merge(graphdef, params, rest)
    np.testing.assert_array_equal(_forward(merged, x), _forward(r18_cifar, x))
    # The merged model really reads the given state (not some cached copy).
    doubled = jax.tree.map(lambda p: p * 2.0, params)
    changed = nnx.merge(graphdef, doubled, rest)
    assert not np.allclose(_forward(changed, x), _forward(r18_cifar, x))


def test_weight_decay_rule_ndim_gt_1_selects_kernels(r50_cifar):
    # The optimizer decays leaves with ndim > 1; that must be exactly the conv/dense kernels.
    head = ProjectionHead(8, 16, 4, num_layers=3, rngs=nnx.Rngs(0))
    for module in (r50_cifar, head):
        flat = list(nnx.to_flat_state(nnx.state(module, nnx.Param)))
        assert flat
        for path, param in flat:
            name, leaf = path[-1], param[...]
            assert (leaf.ndim > 1) == (name == "kernel"), (path, leaf.shape)
            assert name in ("kernel", "bias", "scale")


def test_projection_head_layers():
    x = jax.random.normal(jax.random.key(0), (3, 8))
    v1 = ProjectionHead(8, 16, 4, num_layers=2, rngs=nnx.Rngs(0))
    v2 = ProjectionHead(8, 16, 4, num_layers=3, use_bn=False, rngs=nnx.Rngs(0))
    assert len(v1.layers) == 2 and len(v1.norms) == 1
    assert len(v2.layers) == 3 and len(v2.norms) == 0
    # Hidden Linears drop their bias only when a BN (with its own bias) follows.
    assert v1.layers[0].bias is None and v1.layers[1].bias is not None
    assert all(layer.bias is not None for layer in v2.layers)
    for head in (v1, v2):
        out = head(x)
        assert out.shape == (3, 4) and out.dtype == jnp.float32
    bf16 = ProjectionHead(8, 16, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert bf16(x).dtype == jnp.float32


@pytest.mark.parametrize("proj_layers", [2, 3])
def test_simclr_model_shapes(proj_layers):
    cfg = _model_cfg(proj_layers=proj_layers)
    model = build_simclr_model(cfg, in_channels=1, rngs=nnx.Rngs(0))
    assert isinstance(model, EncoderWithHead)
    assert model.feature_dim == 8 * WIDTH
    assert len(model.head.layers) == proj_layers
    model.train()
    features, projections = _forward(model, _images(4, 16, 1))
    assert features.shape == (4, 8 * WIDTH) and features.dtype == jnp.float32
    assert projections.shape == (4, 8) and projections.dtype == jnp.float32


def test_build_encoder_reads_config():
    enc = build_encoder(_model_cfg(name="resnet18", width=2, stem="imagenet"), 3, nnx.Rngs(0))
    assert isinstance(enc, ResNet)
    assert enc.feature_dim == 16
    assert enc.stem_conv.kernel.shape == (7, 7, 3, 2)
    assert enc.dtype == jnp.float32


@pytest.mark.parametrize(
    "overrides,key",
    [
        (dict(name="resnet1000"), "model.name"),
        (dict(dtype="float16"), "model.dtype"),
        (dict(stem="vit"), "model.stem"),
    ],
)
def test_bad_config_raises_config_error(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        build_encoder(_model_cfg(**overrides), 3, nnx.Rngs(0))
    if key == "model.name":
        assert "resnet18" in str(info.value) and "resnet50" in str(info.value)


def _vit(**kw):
    cfg = ml_collections.ConfigDict(
        dict(name="vit", patch_size=8, image_size=32, embed_dim=32, depth=2, num_heads=4)
    )
    cfg.update(kw)
    return build_encoder(cfg, 1, nnx.Rngs(0))


def test_vit_small_matches_timm_parameter_count():
    cfg = ml_collections.ConfigDict(dict(name="vit_small", patch_size=16, image_size=224))
    model = nnx.eval_shape(lambda: build_encoder(cfg, 3, nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # timm vit_small_patch16_224: 22,050,664 parameters, of which the 1000-way head has 385,000.
    assert n == 22_050_664 - 385_000
    assert model.feature_dim == 384


def test_vit_interpolates_position_embeddings_and_drop_path_is_opt_in():
    model = _vit(drop_path=0.5)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 1)), jnp.float32)
    pos = model.pos_embed[...]
    np.testing.assert_array_equal(model.position_embedding(4, 4), pos)  # The native grid: as is.
    assert model.position_embedding(2, 6).shape == (1, 13, 32)
    np.testing.assert_array_equal(model.position_embedding(2, 6)[:, 0], pos[:, 0])  # CLS kept.
    assert model(jnp.zeros((2, 16, 48, 1))).shape == (2, 32)  # Local-crop sizes run as well.
    # No key: deterministic. A key: stochastic depth, different per key.
    np.testing.assert_array_equal(model(x), model(x))
    a, b = model(x, jax.random.key(0)), model(x, jax.random.key(1))
    assert float(jnp.abs(a - b).max()) > 1e-4
    assert float(jnp.abs(_vit(drop_path=0.0)(x, jax.random.key(0)) - _vit()(x)).max()) == 0.0
    with pytest.raises(ValueError, match="patch_size"):
        model(jnp.zeros((1, 30, 30, 1)))


def test_vit_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="config.model.num_heads"):
        build_encoder(
            ml_collections.ConfigDict(dict(name="vit", embed_dim=32, depth=1, num_heads=None)),
            1,
            nnx.Rngs(0),
        )
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        _vit(image_size=30)
