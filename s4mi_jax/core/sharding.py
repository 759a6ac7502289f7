"""Device mesh and shardings from `config.mesh` / `config.sharding`, and host batches -> global arrays.

The mesh has two axes, `data` and `fsdp` (`config.mesh = dict(data=-1, fsdp=1)`). Batches are split over
both, so every device holds a slice of the global batch. Parameters and optimizer state are replicated
unless `fsdp > 1`: then every state leaf with at least `config.sharding.fsdp_min_size` elements is split
along its largest dimension that the `fsdp` axis size divides (ZeRO-3 style; XLA all-gathers a kernel
where it is used and reduce-scatters its gradient). The step itself never changes: it is one `jax.jit`
with these shardings, so cross-device reductions (NT-Xent negatives, BatchNorm statistics) are over the
global batch, exactly as on one device. Axes are `AxisType.Auto` on purpose: jax's default explicit axes
reject some gathers inside jit (with jax 0.12, `optax.softmax_cross_entropy_with_integer_labels`
fails in a sharded jit with a ShardingTypeError; Auto axes work on every version).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from s4mi_jax.errors import ConfigError

DATA = "data"
FSDP = "fsdp"
BATCH_AXES = (DATA, FSDP)  # The batch is split over every device.


def make_mesh(cfg: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Mesh:
    """A (`data`, `fsdp`) mesh over `devices` (default: all, on every process).

    `cfg.fsdp` (default 1) devices per parameter shard; `cfg.data = -1` takes the remaining devices.
    On TPU, `mesh_utils` orders devices along the physical topology (neighbours share an `fsdp` group).
    """
    devices = list(jax.devices() if devices is None else devices)
    fsdp = cfg.get("fsdp", 1)
    if fsdp < 1 or len(devices) % fsdp:
        raise ConfigError(
            f"config.mesh.fsdp={fsdp} must be a positive divisor of the {len(devices)} devices."
        )
    data = len(devices) // fsdp if cfg.data == -1 else cfg.data
    if data * fsdp != len(devices):
        raise ConfigError(
            f"config.mesh.data={cfg.data} x config.mesh.fsdp={fsdp} != the {len(devices)} devices "
            "available; use data=-1 for all."
        )
    try:
        grid = mesh_utils.create_device_mesh(
            (data, fsdp), devices=devices, allow_split_physical_axes=True
        )
    except (ValueError, NotImplementedError, AssertionError):  # Unusual device sets: keep order.
        grid = np.asarray(devices, dtype=object).reshape(data, fsdp)
    return Mesh(grid, (DATA, FSDP), axis_types=(AxisType.Auto, AxisType.Auto))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every mesh axis, i.e. over all devices."""
    return NamedSharding(mesh, P(_batch_axes(mesh)))


# ---- Parameter / optimizer-state sharding rules -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rules:
    """How state leaves are laid out over the `fsdp` axis (replicated when the axis has size 1).

    `fsdp_min_size`: leaves with fewer elements stay replicated (BatchNorm scales, biases, small
    kernels): gathering them would cost more latency than the memory it saves.
    """

    fsdp_min_size: int = 2**16


def rules_from_config(config: ml_collections.ConfigDict) -> Rules:
    """`config.sharding` (optional) -> Rules; a config without the key gets the defaults."""
    cfg = config.get("sharding") or {}
    min_size = cfg.get("fsdp_min_size", Rules.fsdp_min_size)
    if min_size < 0:
        raise ConfigError(f"config.sharding.fsdp_min_size={min_size} must be >= 0.")
    return Rules(fsdp_min_size=min_size)


def leaf_spec(shape: Sequence[int], mesh: Mesh, rules: Rules = Rules()) -> P:
    """`P()` (replicated) or `fsdp` on the largest dimension the axis size divides (ties: the last)."""
    n = dict(zip(mesh.axis_names, mesh.devices.shape, strict=True)).get(FSDP, 1)
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < max(rules.fsdp_min_size, 1):
        return P()
    candidates = [(d, i) for i, d in enumerate(shape) if d % n == 0]
    if not candidates:
        return P()
    _, dim = max(candidates)
    return P(*([None] * dim + [FSDP]))


def state_shardings(shapes: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """A NamedSharding per leaf of `shapes` (anything with `.shape`): the rule, leaf by leaf.

    Optimizer moments have their parameter's shape, so they get the parameter's layout.
    """
    rules = Rules() if rules is None else rules
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(x.shape, mesh, rules)), shapes)


def bytes_per_device(abstract: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs / arrays (its largest share)."""
    total = 0
    for x in jax.tree.leaves(abstract):
        shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


# ---- Host <-> device ----------------------------------------------------------------------------


def check_batch_size(global_batch: int, mesh: Mesh, key: str = "config.batch_size") -> int:
    """Returns the per-process batch; the global batch must split evenly over devices and processes."""
    n = mesh.devices.size
    if global_batch % n or global_batch % jax.process_count():
        raise ConfigError(f"{key}={global_batch} must be divisible by the {n} devices of the mesh.")
    return global_batch // jax.process_count()


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays split over all devices.

    Process p's rows become rows [p·local, (p+1)·local) of the global batch (its devices come in that
    order along the batch axes).
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def fetch(x: jax.Array) -> np.ndarray:
    """A global array as one NumPy array on every process."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
