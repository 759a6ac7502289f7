"""Weight import/export: torchvision/timm names -> Flax encoders, checked against NumPy forward passes.

The tests write tiny random-weight files in torchvision's ResNet and timm's ViT naming themselves (no torch,
no download), load them into the Flax encoders and compare the Flax forward pass with a NumPy reference
written from the PyTorch definitions (NCHW, OIHW, eval-mode BatchNorm). Export -> import must give
identical variables in every layout and through a workdir checkpoint.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from s4mi_jax.errors import ConfigError, DataError
from s4mi_jax.models import weights
from s4mi_jax.models.resnet import ResNet
from s4mi_jax.models.vit import ViT

TOL = 1e-4  # float32 Flax vs float64 NumPy.

# --------------------------------------------------------------------- NumPy reference (PyTorch maths)


def _conv(x, w, b=None, stride=1, pad=0):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[
        :, :, ::stride, ::stride
    ]
    y = np.einsum("nchwij,ocij->nohw", win, w)
    return y if b is None else y + b[None, :, None, None]


def _bn(x, t, m):
    inv = t[f"{m}.weight"] / np.sqrt(t[f"{m}.running_var"] + 1e-5)
    return (x - t[f"{m}.running_mean"][None, :, None, None]) * inv[None, :, None, None] + t[
        f"{m}.bias"
    ][None, :, None, None]


def _relu(x):
    return np.maximum(x, 0)


def _maxpool(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(
        axis=(-2, -1)
    )


def resnet_reference(t, x, block, stage_sizes):
    """torchvision.models.ResNet.forward without the fc layer (eval mode), NCHW."""
    x = _maxpool(_relu(_bn(_conv(x, t["conv1.weight"], stride=2, pad=3), t, "bn1")))
    for s, n in enumerate(stage_sizes):
        for j in range(n):
            p, stride = f"layer{s + 1}.{j}", 2 if s > 0 and j == 0 else 1
            if block == "basic":
                y = _relu(
                    _bn(_conv(x, t[f"{p}.conv1.weight"], stride=stride, pad=1), t, f"{p}.bn1")
                )
                y = _bn(_conv(y, t[f"{p}.conv2.weight"], pad=1), t, f"{p}.bn2")
            else:
                y = _relu(_bn(_conv(x, t[f"{p}.conv1.weight"]), t, f"{p}.bn1"))
                y = _relu(
                    _bn(_conv(y, t[f"{p}.conv2.weight"], stride=stride, pad=1), t, f"{p}.bn2")
                )
                y = _bn(_conv(y, t[f"{p}.conv3.weight"]), t, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in t:
                x = _bn(
                    _conv(x, t[f"{p}.downsample.0.weight"], stride=stride), t, f"{p}.downsample.1"
                )
            x = _relu(y + x)
    return x.mean(axis=(2, 3))


def _ln(x, t, m):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * t[f"{m}.weight"] + t[f"{m}.bias"]


def _linear(x, t, m):
    return x @ t[f"{m}.weight"].T + t[f"{m}.bias"]


def vit_reference(t, x, depth, heads):
    """timm.models.VisionTransformer.forward_features + class-token pooling (eval mode), NCHW."""
    w = t["patch_embed.proj.weight"]
    x = _conv(x, w, t["patch_embed.proj.bias"], stride=w.shape[-1])
    n, d = x.shape[:2]
    x = x.reshape(n, d, -1).transpose(0, 2, 1)
    x = np.concatenate([np.broadcast_to(t["cls_token"], (n, 1, d)), x], axis=1) + t["pos_embed"]
    for i in range(depth):
        b = f"blocks.{i}"
        h = _ln(x, t, f"{b}.norm1")
        qkv = _linear(h, t, f"{b}.attn.qkv").reshape(n, -1, 3, heads, d // heads)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        h = (a @ v).transpose(0, 2, 1, 3).reshape(n, -1, d)
        x = x + _linear(h, t, f"{b}.attn.proj")
        h = _linear(_ln(x, t, f"{b}.norm2"), t, f"{b}.mlp.fc1")
        x = x + _linear(0.5 * h * (1 + erf(h / np.sqrt(2))), t, f"{b}.mlp.fc2")
    return _ln(x, t, "norm")[:, 0]


# ------------------------------------------------------------- random weights in torch/timm names


def torchvision_resnet_tensors(rng, block, stage_sizes, width, in_ch=3, num_classes=5):
    t = {}

    def conv(name, o, i, k):
        t[name] = rng.normal(0, np.sqrt(2 / (i * k * k)), (o, i, k, k))

    def bn(name, c):
        t[f"{name}.weight"] = rng.uniform(0.5, 1.5, c)
        t[f"{name}.bias"] = rng.normal(0, 0.1, c)
        t[f"{name}.running_mean"] = rng.normal(0, 0.1, c)
        t[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c)
        t[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    conv("conv1.weight", width, in_ch, 7)
    bn("bn1", width)
    expansion = 1 if block == "basic" else 4
    c = width
    for s, n in enumerate(stage_sizes):
        planes = width * 2**s
        for j in range(n):
            p, stride = f"layer{s + 1}.{j}", 2 if s > 0 and j == 0 else 1
            if block == "basic":
                conv(f"{p}.conv1.weight", planes, c, 3)
                conv(f"{p}.conv2.weight", planes, planes, 3)
                bn(f"{p}.bn1", planes)
                bn(f"{p}.bn2", planes)
            else:
                conv(f"{p}.conv1.weight", planes, c, 1)
                conv(f"{p}.conv2.weight", planes, planes, 3)
                conv(f"{p}.conv3.weight", planes * 4, planes, 1)
                for k, ch in ((1, planes), (2, planes), (3, planes * 4)):
                    bn(f"{p}.bn{k}", ch)
            if stride != 1 or c != planes * expansion:
                conv(f"{p}.downsample.0.weight", planes * expansion, c, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            c = planes * expansion
    t["fc.weight"] = rng.normal(size=(num_classes, c))
    t["fc.bias"] = rng.normal(size=num_classes)
    return t


def timm_vit_tensors(rng, dim, depth, patch, grid, in_ch=3, num_classes=5):
    t = {
        "patch_embed.proj.weight": rng.normal(0, 0.2, (dim, in_ch, patch, patch)),
        "patch_embed.proj.bias": rng.normal(0, 0.1, dim),
        "cls_token": rng.normal(0, 0.5, (1, 1, dim)),
        "pos_embed": rng.normal(0, 0.5, (1, 1 + grid * grid, dim)),
        "norm.weight": rng.uniform(0.5, 1.5, dim),
        "norm.bias": rng.normal(0, 0.1, dim),
        "head.weight": rng.normal(size=(num_classes, dim)),
        "head.bias": rng.normal(size=num_classes),
    }
    for i in range(depth):
        for m, (o, k) in {
            "attn.qkv": (3 * dim, dim),
            "attn.proj": (dim, dim),
            "mlp.fc1": (4 * dim, dim),
            "mlp.fc2": (dim, 4 * dim),
        }.items():
            t[f"blocks.{i}.{m}.weight"] = rng.normal(0, 1 / np.sqrt(k), (o, k))
            t[f"blocks.{i}.{m}.bias"] = rng.normal(0, 0.1, o)
        for m in ("norm1", "norm2"):
            t[f"blocks.{i}.{m}.weight"] = rng.uniform(0.5, 1.5, dim)
            t[f"blocks.{i}.{m}.bias"] = rng.normal(0, 0.1, dim)
    return t


def _save(path, tensors, **metadata):
    weights.save_tensors(
        str(path), {k: np.asarray(v, np.float32) for k, v in tensors.items()}, metadata
    )
    return {k: np.asarray(v, np.float32).astype(np.float64) for k, v in tensors.items()}


def _abstract(build):
    """The module's structure without running its initialisers (eager NNX init compiles each one:
    seconds per model); variables are filled by `load_into` or `_fill`."""
    return nnx.eval_shape(build)


def _fill(module, seed):
    """Random values in every variable (positive where BatchNorm needs a variance)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module)
    nnx.update(
        module, jax.tree.map(lambda s: rng.uniform(0.1, 1.0, s.shape).astype(s.dtype), state)
    )
    return module


def _resnet(block, stage_sizes, width, in_ch):
    return _abstract(
        lambda: ResNet(
            stage_sizes=stage_sizes, block=block, in_channels=in_ch, width=width, rngs=nnx.Rngs(0)
        )
    )


def _vit(dim, depth, heads, patch, image, in_ch=3):
    return _abstract(
        lambda: ViT(
            in_channels=in_ch,
            image_size=image,
            patch_size=patch,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            rngs=nnx.Rngs(0),
        )
    )


def _forward(model, x_nchw):
    model.eval()
    return np.asarray(
        nnx.jit(lambda m, x: m(x))(model, x_nchw.transpose(0, 2, 3, 1).astype(np.float32))
    )


RESNETS = [("basic", [2, 2, 2, 2], 4), ("bottleneck", [1, 2, 1, 1], 4)]  # 18-like, 50-like (short)


@pytest.mark.parametrize("block, stages, width", RESNETS, ids=["resnet18", "resnet50"])
def test_torchvision_resnet_import_matches_numpy_forward(tmp_path, block, stages, width):
    rng = np.random.default_rng(0)
    path = tmp_path / "resnet.safetensors"
    t = _save(path, torchvision_resnet_tensors(rng, block, stages, width))
    model = _resnet(block, stages, width, in_ch=3)
    weights.load_into(model, str(path))
    x = rng.uniform(-1, 1, (2, 3, 32, 32))
    ours = _forward(model, x)
    ref = resnet_reference(t, x, block, stages)
    assert ours.shape == ref.shape == (2, width * 8 * (1 if block == "basic" else 4))
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=TOL)
    assert np.abs(ref).mean() > 0.1  # Not a trivially small output.

    # A 1-channel model takes the 3-channel stem summed over channels: gray x == RGB (x, x, x).
    gray = _resnet(block, stages, width, in_ch=1)
    weights.load_into(gray, str(path))
    g = _forward(gray, x[:, :1])
    np.testing.assert_allclose(
        g, resnet_reference(t, np.repeat(x[:, :1], 3, 1), block, stages), atol=TOL, rtol=TOL
    )


def test_timm_vit_import_matches_numpy_forward(tmp_path):
    rng = np.random.default_rng(1)
    dim, depth, heads, patch, image = 16, 2, 2, 8, 32
    path = tmp_path / "vit.npz"
    t = _save(path, timm_vit_tensors(rng, dim, depth, patch, image // patch))
    model = _vit(dim, depth, heads, patch, image)
    weights.load_into(model, str(path))
    x = rng.uniform(-1, 1, (2, 3, image, image))
    ours = _forward(model, x)
    ref = vit_reference(t, x, depth, heads)
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=TOL)
    assert ref.std() > 0.1

    # Another token grid: the position embedding is resized (class token kept), shapes fit.
    other = _vit(dim, depth, heads, patch, 16)
    weights.load_into(other, str(path))
    pos = np.asarray(other.pos_embed[...])
    assert pos.shape == (1, 5, dim)
    np.testing.assert_array_equal(pos[:, 0], t["pos_embed"][:, 0].astype(np.float32))


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


@pytest.mark.parametrize("layout", ["s4mi", "torchvision", "timm"])
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_export_import_round_trip_is_identical(tmp_path, layout, suffix):
    if layout == "timm":
        src, dst = (
            _fill(_vit(16, 2, 2, 8, 32, in_ch=1), 0),
            _fill(_vit(16, 2, 2, 8, 32, in_ch=1), 1),
        )
    else:
        src = _fill(_resnet("bottleneck", [1, 2, 1, 1], 4, 1), 0)
        dst = _fill(_resnet("bottleneck", [1, 2, 1, 1], 4, 1), 1)
    before = weights.encoder_state(src)
    assert weights.encoder_state(dst).keys() == before.keys()
    assert all(not np.array_equal(before[k], weights.encoder_state(dst)[k]) for k in before)
    path = str(tmp_path / f"enc{suffix}")
    weights.export_encoder(before, path, layout=layout, model={"name": "x"}, source="test")
    tensors, metadata = weights.load_tensors(path)
    assert metadata["layout"] == layout and metadata["format"] == "s4mi_jax.encoder"
    if layout == "torchvision":
        assert "layer3.0.downsample.1.running_var" in tensors and "layer2.1.conv3.weight" in tensors
    weights.load_into(dst, path)
    _same(weights.encoder_state(dst), before)


def test_bad_weight_files_name_the_tensor(tmp_path):
    rng = np.random.default_rng(2)
    t = torchvision_resnet_tensors(rng, "basic", [2, 2, 2, 2], 4)
    path = tmp_path / "r18.safetensors"
    _save(path, t)
    wrong = _resnet("basic", [2, 2, 2, 2], 8, 3)  # Another width.
    with pytest.raises(
        ConfigError, match=r"blocks/0/bn1/bias has shape \(4,\) but \(8,\) in this model"
    ):
        weights.load_into(wrong, str(path))
    deeper = _resnet("basic", [2, 2, 3, 2], 4, 3)
    with pytest.raises(
        ConfigError, match=r"\(torchvision layout\) have no blocks/7/shortcut/bn/bias \(and 14 more"
    ):
        weights.load_into(deeper, str(path))
    vit = timm_vit_tensors(rng, 16, 1, 8, 4)
    vit["blocks.0.ls1.gamma"] = np.ones(16)
    _save(tmp_path / "ls.safetensors", vit)
    with pytest.raises(DataError, match=r"blocks.0.ls1.gamma.*no place"):
        weights.read_encoder(str(tmp_path / "ls.safetensors"))
    with pytest.raises(ConfigError, match="does not exist"):
        weights.read_encoder(str(tmp_path / "nope.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00junk")
    with pytest.raises(DataError, match="cannot read weights"):
        weights.read_encoder(str(tmp_path / "junk.safetensors"))


def test_export_from_checkpoint_and_init_from_weights_file(tmp_path):
    """A workdir checkpoint -> export (both layouts) -> `config.init_from=<file>` gives the same encoder
    as `config.init_from=<workdir>`; the file records the run's config.model."""
    import json

    from s4mi_jax.core import pretrained
    from s4mi_jax.core.checkpoint import Checkpointer
    from s4mi_jax.core.train_state import TrainState
    from s4mi_jax.export_weights import export
    from s4mi_jax.models.classifier import Classifier

    def state(seed):
        model = _fill(
            _abstract(
                lambda: Classifier(_resnet_module(), 2, param_dtype=np.float32, rngs=nnx.Rngs(0))
            ),
            seed,
        )
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return TrainState(
            step=jax.numpy.zeros((), jax.numpy.int32),
            params=jax.device_put(params),
            model_state=jax.device_put(rest),
            opt_state={},
            rng=jax.random.PRNGKey(0),
        )

    workdir = tmp_path / "run"
    trained = state(0)
    ckpt = Checkpointer(str(workdir / "checkpoints"), async_save=False)
    ckpt.save(5, trained, None)
    ckpt.manager.wait_until_finished()
    (workdir / "config.json").write_text(json.dumps({"model": {"name": "resnet50", "width": 4}}))

    expected = {
        k.removeprefix("encoder/"): v
        for k, v in {
            **weights.flatten(trained.params),
            **weights.flatten(trained.model_state),
        }.items()
        if k.startswith("encoder/")
    }
    for layout in ("s4mi", "torchvision"):
        out = str(tmp_path / f"enc_{layout}.safetensors")
        name, step, _ = export(str(workdir), out, layout=layout)
        assert (name, step) == ("encoder", 5)
        _, metadata = weights.load_tensors(out)
        assert json.loads(metadata["model"]) == {"name": "resnet50", "width": 4}
        _same(weights.read_encoder(out), expected)

        fresh = state(1)
        from_file, source, _ = pretrained.load_encoder(fresh, out)
        from_run, _, _ = pretrained.load_encoder(state(1), str(workdir))
        assert source == f"enc_{layout}.safetensors"
        _same(weights.flatten(from_file.params), weights.flatten(from_run.params))
        _same(weights.flatten(from_file.model_state), weights.flatten(from_run.model_state))
        head = weights.flatten(from_file.params)["head/kernel"]  # The head is not touched.
        np.testing.assert_array_equal(head, weights.flatten(fresh.params)["head/kernel"])
    with pytest.raises(ConfigError, match="no such weights file"):
        pretrained.resolve(str(tmp_path / "missing.npz"))


def _resnet_module():
    return ResNet(
        stage_sizes=[1, 2, 1, 1], block="bottleneck", in_channels=1, width=4, rngs=nnx.Rngs(0)
    )
