"""Device mesh and shardings from `config.mesh`, and host batches -> global arrays.

The default is pure data parallelism: parameters and optimizer state replicated (`P()`), batches split over
the `data` axis. Under `jax.jit` with these shardings, cross-device reductions (NT-Xent negatives, BatchNorm
statistics) are over the global batch, exactly as on one device. Axes are `AxisType.Auto` on purpose:
jax's default explicit axes reject some gathers inside jit (stack.md §1.4).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from s4mi_jax.errors import ConfigError

DATA = "data"


def make_mesh(cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D `data` mesh over `devices` (default: all); `cfg.data = -1` means all devices."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if cfg.data == -1 else cfg.data
    if n != len(devices):
        raise ConfigError(
            f"config.mesh.data={cfg.data} but {len(devices)} devices are available; use -1 for all."
        )
    return Mesh(np.asarray(devices).reshape(n), (DATA,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def check_batch_size(global_batch: int, mesh: Mesh, key: str = "config.batch_size") -> int:
    """Returns the per-process batch; the global batch must split evenly over devices and processes."""
    n = mesh.devices.size
    if global_batch % n or global_batch % jax.process_count():
        raise ConfigError(f"{key}={global_batch} must be divisible by the {n} devices of the mesh.")
    return global_batch // jax.process_count()


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded over `data`."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def fetch(x: jax.Array) -> np.ndarray:
    """A global array as one NumPy array on every process."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
