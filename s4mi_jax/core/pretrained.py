"""Pretrained encoder weights (`config.init_from`): another run's Orbax checkpoint, or a weights file.

A `.safetensors` / `.npz` file (torchvision/timm ImageNet weights, or one written by
`python -m s4mi_jax.export_weights`; see `models/weights.py`) is converted to this package's names and
copied the same way, with the same shape checks.

Reads the checkpoint without a target (plain arrays, no need to rebuild the pretraining optimizer) and
copies every `encoder` parameter and BatchNorm statistic into the new state after checking its name and
shape, so a checkpoint from a different architecture fails with the first mismatched parameter named.

`config.init_from="random"` keeps the random initialisation (seeded by `config.seed`): a linear probe of
it is the baseline every pretraining must beat, probed exactly as the pretrained encoders are.

Which encoder of the checkpoint (`config.init_encoder`): SimCLR's `encoder`, DINO's `teacher/encoder`
(or `student/encoder`), CASS's `cnn/encoder` or `vit/encoder`. Unset, the only candidate is taken (DINO:
the teacher, as official DINO evaluates it); CASS has two, so it must be named.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from s4mi_jax.core.train_state import TrainState
from s4mi_jax.errors import ConfigError
from s4mi_jax.models import weights

RANDOM = "random"


def resolve(init_from: str, key: str = "config.init_from") -> tuple[str, int]:
    """A workdir (latest checkpoint), its `checkpoints/` folder, or one `checkpoints/<step>` folder;
    `key` names the config key in errors."""
    if init_from == RANDOM:
        return RANDOM, 0
    path = os.path.abspath(init_from)
    if weights.is_weights_file(path):
        if not os.path.isfile(path):
            raise ConfigError(
                f"{key}={init_from}: no such weights file (torchvision/timm ImageNet weights as "
                ".safetensors: see docs/weights.md for how to get them)."
            )
        return path, 0
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    base = os.path.basename(path)
    if base.isdigit() and os.path.isdir(path):
        return os.path.dirname(path), int(base)
    if not os.path.isdir(path):
        raise ConfigError(f"{key}={init_from}: no such run folder or checkpoint.")
    step = ocp.CheckpointManager(path).latest_step()
    if step is None:
        raise ConfigError(f"{key}={init_from}: no checkpoint in {path}.")
    return path, step


def _key(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _merge(a: Any, b: Any) -> Any:
    """Deep union of two nested dicts (parameters and model state hold disjoint leaves)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return b if a is None or a == {} else a
    return {k: _merge(a.get(k), b.get(k)) for k in {**a, **b}}


def _encoders(tree: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Paths of every `encoder` sub-tree in the checkpoint, e.g. ["cnn/encoder", "vit/encoder"]."""
    if not isinstance(tree, dict):
        return []
    if "encoder" in tree:
        return ["/".join((*path, "encoder"))]
    return [e for k, v in sorted(tree.items()) for e in _encoders(v, (*path, str(k)))]


def _source(
    full: dict, init_from: str, init_encoder: str | None, flags: tuple[str, str]
) -> tuple[str, dict]:
    candidates = _encoders(full)
    if not candidates:
        raise ConfigError(
            f"{flags[0]}={init_from} holds no encoder (its model has {sorted(full)}, e.g. a U-Net "
            "segmentation run): give a pretraining (SimCLR, DINO, CASS) or classification run, or a "
            "weights file."
        )
    if init_encoder is None:
        preferred = [c for c in ("encoder", "teacher/encoder") if c in candidates]
        if preferred:
            init_encoder = preferred[0]
        elif len(candidates) == 1:
            init_encoder = candidates[0]
        else:
            raise ConfigError(
                f"{flags[0]}={init_from} holds encoders {candidates}: choose one with "
                f"{flags[1]}=<one of them>."
            )
    if init_encoder not in candidates:
        raise ConfigError(
            f"{flags[1]}={init_encoder!r} is not in {init_from}; it holds {candidates}."
        )
    node = full
    for k in init_encoder.split("/"):
        node = node[k]
    return init_encoder, node


def _model_hint(init_from: str, model: Any) -> str:
    """What to pass so that this run's `config.model` matches the one the source run trained (from
    its config.json): "; the pretraining run used model.width=8 (...)"; "" when unknown."""
    if model is None or weights.is_weights_file(init_from):
        return ""
    import json

    source = None
    path = os.path.abspath(init_from)
    for folder in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        candidate = os.path.join(folder, "config.json")
        if os.path.isfile(candidate):
            try:
                with open(candidate, encoding="utf-8") as f:
                    source = json.load(f).get("model")
            except (OSError, ValueError, AttributeError):
                return ""
            break
    mine = model.to_dict() if hasattr(model, "to_dict") else dict(model)
    if not isinstance(source, dict):
        return ""
    differ = [k for k in sorted(source) if k in mine and source[k] != mine[k]]
    if not differ:
        return ""
    shown = " ".join(f"--config.model.{k}={source[k]}" for k in differ)
    return (
        f"; the source run used {', '.join(f'model.{k}={source[k]!r}' for k in differ)} "
        f"(this run: {', '.join(f'{mine[k]!r}' for k in differ)}): use the same config variant as "
        f"the pretraining (e.g. :local for a :local pretraining) or pass {shown}"
    )


def _copy_subtree(target: Any, raw: dict, prefix: str, init_from: str, model: Any = None) -> Any:
    """`target` with every leaf under `prefix` replaced by the matching array of `raw` (the source
    encoder's tree). With an abstract `target` (ShapeDtypeStructs) only the names, shapes and kinds
    are checked: what `check_encoder` does before anything is written."""

    head = prefix.split("/")

    def leaf(path, x):
        keys = [_key(p) for p in path]
        if keys[: len(head)] != head:
            return x
        node = raw
        for k in keys[len(head) :]:
            if not isinstance(node, dict) or k not in node:
                raise ConfigError(
                    f"config.init_from={init_from}: parameter {'/'.join(keys[:-1])} is not in the "
                    "checkpoint; was it trained with another config.model?"
                    + _model_hint(init_from, model)
                )
            node = node[k]
        value = np.asarray(node)
        name = "/".join(k for k in keys if k != "value")
        if value.shape != x.shape:
            raise ConfigError(
                f"config.init_from={init_from}: parameter {name} has shape {value.shape} "
                f"in the checkpoint but {x.shape} in this model"
                + (_model_hint(init_from, model) or "; use the pretraining run's config.model")
                + "."
            )
        if np.issubdtype(value.dtype, np.floating) != np.issubdtype(x.dtype, np.floating):
            raise ConfigError(
                f"config.init_from={init_from}: parameter {name} is {value.dtype} in the "
                f"checkpoint but {x.dtype} in this model; it is not this model's encoder."
            )
        if isinstance(x, jax.ShapeDtypeStruct):
            return x  # Checked only.
        return jax.device_put(value.astype(x.dtype), x.sharding)

    return jax.tree_util.tree_map_with_path(leaf, target)


CONFIG_FLAGS = ("config.init_from", "config.init_encoder")


def read_encoder(
    init_from: str, init_encoder: str | None = None, flags: tuple[str, str] = CONFIG_FLAGS
) -> tuple[str, int, dict]:
    """(encoder path in the checkpoint, step, its nested tree of parameters and statistics).
    `flags`: how the command names the two settings in its messages (`--init_from` for export)."""
    directory, step = resolve(init_from, flags[0])
    manager = ocp.CheckpointManager(directory)
    try:
        # No target: plain arrays. A run saved on another device count (8 simulated CPUs, a TPU
        # slice) has shardings this process cannot build; those arrays come to one local device.
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        restore = ocp.args.StandardRestore(fallback_sharding=one)
        raw = manager.restore(step, args=ocp.args.Composite(state=restore))
    except (ValueError, OSError, KeyError, FileNotFoundError) as e:
        raise ConfigError(
            f"{flags[0]}={init_from}: cannot read checkpoint {step} in {directory} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); is the run damaged or "
            "still being written?"
        ) from None
    finally:
        manager.close()
    raw = raw["state"]
    full = _merge(raw["params"], raw["model_state"])
    name, source = _source(full, init_from, init_encoder, flags)
    return name, step, source


def load_encoder(
    state: TrainState,
    init_from: str,
    init_encoder: str | None = None,
    prefix: str = "encoder",
    model: Any = None,
) -> tuple[TrainState, str, int]:
    """Returns (state with the pretrained encoder at `prefix`, the source path, the checkpoint step).

    `prefix` is the encoder's path in the state, "/"-separated for nested models ("cnn/encoder").
    `state` may be abstract (ShapeDtypeStructs): then only the checks run (`check_encoder`). `model`
    (this run's config.model) lets a mismatch say which config.model values the source used."""
    if init_from == RANDOM:
        return state, RANDOM, 0
    if weights.is_weights_file(init_from):
        return _load_file(state, resolve(init_from)[0], prefix)
    name, step, source = read_encoder(init_from, init_encoder)
    params = _copy_subtree(state.params, source, prefix, init_from, model)
    model_state = _copy_subtree(state.model_state, source, prefix, init_from, model)
    return state.replace(params=params, model_state=model_state), name, step


def check_encoder(
    abstract_state: Any,
    init_from: str,
    init_encoder: str | None = None,
    prefix: str = "encoder",
    model: Any = None,
) -> None:
    """Every check `load_encoder` makes (encoder present, names, shapes, kinds), on the abstract state:
    run before a workdir is written, so a refused start leaves nothing behind."""
    load_encoder(abstract_state, init_from, init_encoder, prefix, model)


def _nest(flat: dict[str, np.ndarray]) -> dict:
    """`{"a/b": x}` -> `{"a": {"b": {"value": x}}}`: the shape of a restored checkpoint's tree."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        for k in name.split("/"):
            node = node.setdefault(k, {})
        node["value"] = value
    return tree


def _load_file(state: TrainState, path: str, prefix: str) -> tuple[TrainState, str, int]:
    head = prefix.split("/")
    shapes = {}
    for tree in (state.params, state.model_state):
        for p, x in jax.tree_util.tree_leaves_with_path(tree):
            if [_key(e) for e in p[: len(head)]] == head:
                shapes[weights.path_name(p[len(head) :])] = x.shape
    source = _nest(weights.read_encoder(path, shapes))
    params = _copy_subtree(state.params, source, prefix, path)
    model_state = _copy_subtree(state.model_state, source, prefix, path)
    return state.replace(params=params, model_state=model_state), os.path.basename(path), 0
