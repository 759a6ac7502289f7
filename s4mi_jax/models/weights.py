"""Encoder weights in and out of files: torchvision/timm ImageNet weights in, any trained encoder out.

No torch at run time: tensors are read and written as NumPy arrays, from `.safetensors` (the
`safetensors` package's NumPy API) or `.npz` (read without pickle).

**Layouts** (the `layout` metadata entry, or detected from the tensor names):

* ``s4mi`` — this package's own schema: one tensor per encoder variable, named by its NNX path joined
  with "/" (``stem_conv/kernel``, ``blocks/3/bn1/mean``, ``blocks/0/attn/qkv/kernel``), in Flax layout
  (conv kernels HWIO, linear kernels (in, out)); BatchNorm running statistics are ``mean``/``var``
  beside ``scale``/``bias``. Metadata (safetensors ``__metadata__``, string -> string; in an ``.npz``
  the JSON string array ``__metadata__``): ``format="s4mi_jax.encoder"``, ``version="1"``,
  ``layout``, ``model`` (JSON of the run's ``config.model``, when known) and ``source``.
* ``torchvision`` — ``torchvision.models.resnet18/50().state_dict()`` names (``conv1.weight``,
  ``layer2.0.downsample.1.running_var``, ...); timm's ResNets use the same names. ``fc.*`` (the
  ImageNet classifier) and ``num_batches_tracked`` are dropped.
* ``timm`` — ``timm`` ``VisionTransformer`` names (``patch_embed.proj.weight``, ``cls_token``,
  ``pos_embed``, ``blocks.0.attn.qkv.weight``, ``norm.weight``) for class-token ViTs; ``head.*`` is
  dropped. Anything else (layer scale, register tokens, ``fc_norm``) is an error naming the tensor:
  silently ignoring it would load a different network.

Import adapts two things a medical model differs in: a 3-channel ImageNet stem/patch embedding loaded
into a 1-channel model is summed over its input channels (as timm's ``adapt_input_conv``; 1 -> 3 is
repeated and divided by 3), and a ViT position embedding for another token grid is resized bicubically
(class token kept), as timm's ``resample_abs_pos_embed``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from s4mi_jax.errors import ConfigError, DataError

FORMAT = "s4mi_jax.encoder"
VERSION = "1"
LAYOUTS = ("s4mi", "torchvision", "timm")
WEIGHT_SUFFIXES = (".safetensors", ".npz")

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_LN = {"weight": "scale", "bias": "bias"}


def is_weights_file(path: str | None) -> bool:
    return bool(path) and str(path).endswith(WEIGHT_SUFFIXES)


# ----------------------------------------------------------------------------------------- files


def load_tensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> array, metadata) from a `.safetensors` or `.npz` file."""
    if not os.path.isfile(path):
        raise ConfigError(f"weights file {path} does not exist.")
    from safetensors import SafetensorError, safe_open

    try:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="numpy") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        elif path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as f:
                tensors = {k: f[k] for k in f.files if k != "__metadata__"}
                metadata = json.loads(str(f["__metadata__"])) if "__metadata__" in f else {}
        else:
            raise ConfigError(f"{path}: weights must be {' or '.join(WEIGHT_SUFFIXES)}.")
    except (OSError, ValueError, SafetensorError) as e:
        raise DataError(f"cannot read weights {path}: {e}") from None
    return tensors, metadata


def save_tensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Writes atomically (temporary file, then rename): a kill never leaves half a file."""
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    metadata = {str(k): str(v) for k, v in metadata.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not path.endswith(WEIGHT_SUFFIXES):
        raise ConfigError(f"{path}: weights must be {' or '.join(WEIGHT_SUFFIXES)}.")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        if path.endswith(".safetensors"):
            from safetensors import SafetensorError
            from safetensors.numpy import save_file

            try:
                save_file(tensors, tmp, metadata=metadata)
            except SafetensorError as e:  # A full disk, from the library's own writer.
                raise OSError(str(e)) from None
        else:
            with open(tmp, "wb") as f:
                np.savez(f, __metadata__=np.array(json.dumps(metadata)), **tensors)
        os.replace(tmp, path)
    except BaseException:  # A full disk or a Ctrl-C leaves no half-written file behind.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def detect_layout(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> str:
    layout = metadata.get("layout")
    if layout in LAYOUTS:
        return layout
    names = set(tensors)
    if "conv1.weight" in names and any(n.startswith("layer1.") for n in names):
        return "torchvision"
    if "patch_embed.proj.weight" in names:
        return "timm"
    if any("/" in n for n in names):
        return "s4mi"
    raise DataError(
        f"cannot tell the layout of these weights (first names: {sorted(names)[:4]}); expected "
        "torchvision ResNet, timm ViT or s4mi_jax names."
    )


# ------------------------------------------------------------------- torchvision / timm ResNet


def _conv_in(w: np.ndarray) -> np.ndarray:  # torch OIHW -> Flax HWIO
    return np.transpose(w, (2, 3, 1, 0))


def _conv_out(k: np.ndarray) -> np.ndarray:  # Flax HWIO -> torch OIHW
    return np.transpose(k, (3, 2, 0, 1))


def _resnet_module_in(torch_module: str, block_offsets: list[int]) -> str | None:
    """`layer2.1.downsample.0` -> `blocks/<k>/shortcut/conv`; None for names that are not encoder."""
    if torch_module == "conv1":
        return "stem_conv"
    if torch_module == "bn1":
        return "stem_bn"
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)", torch_module)
    if m is None:
        return None
    stage, j, part = int(m[1]) - 1, int(m[2]), m[3]
    part = {"downsample.0": "shortcut/conv", "downsample.1": "shortcut/bn"}.get(part, part)
    return f"blocks/{block_offsets[stage] + j}/{part}"


def torchvision_resnet_to_s4mi(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision/timm ResNet state dict -> s4mi names and layout (stage sizes from the names)."""
    blocks_per_stage: dict[int, int] = {}
    for name in tensors:
        m = re.match(r"layer(\d+)\.(\d+)\.", name)
        if m:
            s = int(m[1]) - 1
            blocks_per_stage[s] = max(blocks_per_stage.get(s, 0), int(m[2]) + 1)
    sizes = [blocks_per_stage.get(s, 0) for s in range(max(blocks_per_stage, default=-1) + 1)]
    offsets = [sum(sizes[:s]) for s in range(len(sizes))]
    out, unknown = {}, []
    for name, value in tensors.items():
        module, _, leaf = name.rpartition(".")
        if leaf == "num_batches_tracked" or module == "fc":
            continue
        target = _resnet_module_in(module, offsets)
        if target is None:
            unknown.append(name)
            continue
        value = np.asarray(value)
        if value.ndim == 4:
            out[f"{target}/kernel"] = _conv_in(value)
        elif leaf in _BN:
            out[f"{target}/{_BN[leaf]}"] = value
        else:
            unknown.append(name)
    if unknown:
        raise DataError(f"tensors {unknown[:5]} are not part of a torchvision/timm ResNet encoder.")
    return out


def s4mi_to_torchvision_resnet(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of `torchvision_resnet_to_s4mi`: stages are read off the blocks' widths (stage s of a
    ResNet has `width * 2**s` planes), so no config is needed."""
    width = flat["stem_conv/kernel"].shape[-1]
    per_stage: dict[int, int] = {}
    out = {}
    n_blocks = 1 + max(
        (int(m[1]) for n in flat if (m := re.match(r"blocks/(\d+)/", n))), default=-1
    )
    location = {}
    for b in range(n_blocks):
        planes = flat[f"blocks/{b}/conv1/kernel"].shape[-1]
        stage = int(round(np.log2(planes / width)))
        location[b] = (stage, per_stage.get(stage, 0))
        per_stage[stage] = per_stage.get(stage, 0) + 1
    for name, value in flat.items():
        module, _, leaf = name.rpartition("/")
        if module == "stem_conv":
            torch_module = "conv1"
        elif module == "stem_bn":
            torch_module = "bn1"
        else:
            m = re.fullmatch(r"blocks/(\d+)/(.+)", module)
            if m is None:
                raise DataError(f"{name} is not a ResNet encoder variable.")
            stage, j = location[int(m[1])]
            part = {"shortcut/conv": "downsample.0", "shortcut/bn": "downsample.1"}.get(m[2], m[2])
            torch_module = f"layer{stage + 1}.{j}.{part}"
        if leaf == "kernel":
            out[f"{torch_module}.weight"] = _conv_out(value)
        else:
            inverse = {v: k for k, v in _BN.items()}
            out[f"{torch_module}.{inverse[leaf]}"] = value
    return out


# ------------------------------------------------------------------------------------- timm ViT

_VIT_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_VIT_NORMS = ("norm1", "norm2")


def timm_vit_to_s4mi(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """timm VisionTransformer (class-token pooling) state dict -> s4mi names and layout."""
    out, unknown = {}, []
    for name, value in tensors.items():
        value = np.asarray(value)
        if name.startswith("head.") or name.startswith("head_dist."):
            continue
        if name == "patch_embed.proj.weight":
            out["patch_embed/kernel"] = _conv_in(value)
        elif name == "patch_embed.proj.bias":
            out["patch_embed/bias"] = value
        elif name in ("cls_token", "pos_embed"):
            out[name] = value
        elif name.startswith("norm."):
            out[f"norm/{_LN[name.split('.')[1]]}"] = value
        elif m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name):
            i, module, leaf = m[1], m[2], m[3]
            if module in _VIT_LINEARS:
                key = "kernel" if leaf == "weight" else "bias"
                out[f"blocks/{i}/{module.replace('.', '/')}/{key}"] = (
                    value.T if leaf == "weight" else value
                )
            elif module in _VIT_NORMS:
                out[f"blocks/{i}/{module}/{_LN[leaf]}"] = value
            else:
                unknown.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise DataError(
            f"tensors {unknown[:5]} have no place in s4mi_jax's ViT (class-token pooling, no layer "
            "scale or register tokens)."
        )
    return out


def s4mi_to_timm_vit(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of `timm_vit_to_s4mi`."""
    out = {}
    for name, value in flat.items():
        parts = name.split("/")
        if name == "patch_embed/kernel":
            out["patch_embed.proj.weight"] = _conv_out(value)
        elif name == "patch_embed/bias":
            out["patch_embed.proj.bias"] = value
        elif name in ("cls_token", "pos_embed"):
            out[name] = value
        elif parts[0] == "norm":
            out[f"norm.{'weight' if parts[1] == 'scale' else 'bias'}"] = value
        elif parts[0] == "blocks":
            i, *module, leaf = parts[1:]
            if module[0] in _VIT_NORMS:
                out[f"blocks.{i}.{module[0]}.{'weight' if leaf == 'scale' else 'bias'}"] = value
            else:
                torch_leaf = "weight" if leaf == "kernel" else "bias"
                out[f"blocks.{i}.{'.'.join(module)}.{torch_leaf}"] = (
                    value.T if leaf == "kernel" else value
                )
        else:
            raise DataError(f"{name} is not a ViT encoder variable.")
    return out


_TO_S4MI = {"torchvision": torchvision_resnet_to_s4mi, "timm": timm_vit_to_s4mi}
_FROM_S4MI = {"torchvision": s4mi_to_torchvision_resnet, "timm": s4mi_to_timm_vit}


# --------------------------------------------------------------------------- adapt, import, export


def _adapt(name: str, value: np.ndarray, shape: tuple[int, ...], path: str) -> np.ndarray:
    """Input-channel and position-grid adaptation (module docstring); anything else must match."""
    if value.shape == shape:
        return value
    if name in ("stem_conv/kernel", "patch_embed/kernel") and value.shape[:2] + value.shape[3:] == (
        shape[:2] + shape[3:]
    ):
        if value.shape[2] == 3 and shape[2] == 1:
            return value.sum(axis=2, keepdims=True)
        if value.shape[2] == 1:
            return np.repeat(value, shape[2], axis=2) / shape[2]
    if name == "pos_embed" and value.ndim == 3 and value.shape[2] == shape[2]:
        old, new = int(round((value.shape[1] - 1) ** 0.5)), int(round((shape[1] - 1) ** 0.5))
        if old * old == value.shape[1] - 1 and new * new == shape[1] - 1:
            import jax

            grid = value[:, 1:].reshape(1, old, old, -1)
            grid = np.asarray(jax.image.resize(grid, (1, new, new, shape[2]), "bicubic"))
            return np.concatenate([value[:, :1], grid.reshape(1, new * new, -1)], axis=1)
    raise ConfigError(
        f"weights {path}: {name} has shape {value.shape} but {shape} in this model; use a "
        "config.model of the same architecture (name, width, patch_size, embed_dim, depth)."
    )


def read_encoder(path: str, target: Mapping[str, tuple[int, ...]] | None = None) -> dict:
    """A weights file as `{s4mi name: array}`, converted from its layout and, if `target` (s4mi name ->
    shape of this model's variables) is given, adapted to it and checked name by name."""
    tensors, metadata = load_tensors(path)
    if metadata.get("format", FORMAT) != FORMAT:
        raise DataError(f"weights {path}: format {metadata['format']!r} is not {FORMAT!r}.")
    layout = detect_layout(tensors, metadata)
    flat = _TO_S4MI[layout](tensors) if layout in _TO_S4MI else dict(tensors)
    if target is None:
        return flat
    missing = sorted(set(target) - set(flat))
    if missing:
        raise ConfigError(
            f"weights {path} ({layout} layout) have no {missing[0]} (and {len(missing) - 1} more "
            "missing); was it exported from another architecture?"
        )
    extra = sorted(set(flat) - set(target))
    if extra:
        raise ConfigError(
            f"weights {path} ({layout} layout) hold {extra[0]}, which this model does not have "
            f"({len(extra)} such); use a config.model of the same architecture."
        )
    return {k: _adapt(k, np.asarray(flat[k]), tuple(target[k]), path) for k in target}


def export_encoder(
    flat: Mapping[str, Any],
    path: str,
    *,
    layout: str = "s4mi",
    model: Mapping[str, Any] | None = None,
    source: str = "",
) -> dict[str, np.ndarray]:
    """Writes `{s4mi name: array}` to `path` in `layout`; returns what was written."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r}: choose one of {LAYOUTS}.")
    flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    tensors = _FROM_S4MI[layout](flat) if layout in _FROM_S4MI else flat
    metadata = {"format": FORMAT, "version": VERSION, "layout": layout, "source": source}
    if model is not None:
        metadata["model"] = json.dumps(dict(model), sort_keys=True)
    save_tensors(path, tensors, metadata)
    return tensors


# ------------------------------------------------------------------ NNX state <-> flat names


def path_name(path) -> str:
    keys = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                keys.append(str(getattr(entry, attr)))
                break
    return "/".join(k for k in keys if k != "value")


def flatten(tree: Any) -> dict[str, np.ndarray]:
    """An NNX state / nested dict of arrays -> `{"blocks/0/conv1/kernel": array}`."""
    import jax

    return {path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def encoder_state(module: Any) -> dict[str, np.ndarray]:
    """Every variable (parameters and BatchNorm statistics) of an NNX encoder, flat."""
    from flax import nnx

    return flatten(nnx.state(module))


def load_into(module: Any, path: str) -> None:
    """Loads a weights file (any layout) into an NNX encoder in place."""
    import jax
    from flax import nnx

    state = nnx.state(module)
    shapes = {path_name(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(state)}
    flat = read_encoder(path, shapes)
    new = jax.tree_util.tree_map_with_path(
        lambda p, x: np.asarray(flat[path_name(p)]).astype(x.dtype), state
    )
    nnx.update(module, new)
