"""Multi-process runs on JAX's own distributed runtime (`jax.distributed`), set up before JAX starts.

One process per host (TPU VM worker, GPU node) runs the same command. Where the settings come from:

- explicit: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or the environment
  variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID): GPU clusters, local tests;
- detected by JAX: Cloud TPU VMs (pods and single hosts, when libtpu is installed), Slurm (`srun`) and
  Open MPI jobs with more than one task;
- otherwise one process, no coordinator: a laptop or a single GPU box runs unchanged.

Why a heartbeat bound: if a process dies, the others would wait in a collective forever. JAX's
coordination service marks a process dead after `heartbeat_timeout` seconds without a heartbeat and
then terminates every other process with "the JAX distributed service detected fatal errors" (a peer
that loses its TCP link in a collective fails at once). So a dead worker stops the job within about
`heartbeat_timeout` seconds, never hangs it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax

from s4mi_jax.errors import ConfigError

MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Settings:
    mode: str = "auto"  # auto | on | off
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    heartbeat_timeout: int = 100  # Seconds; JAX's default.
    initialization_timeout: int = 300  # Seconds to wait for every process to join.


def from_env(settings: Settings, env: dict[str, str] | None = None) -> Settings:
    """Fills unset explicit fields from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID."""
    env = os.environ if env is None else env

    def _int(name: str) -> int | None:
        value = env.get(name)
        if value in (None, ""):
            return None
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"environment variable {name}={value!r} is not an integer.") from None

    return dataclasses.replace(
        settings,
        coordinator_address=settings.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"),
        num_processes=settings.num_processes
        if settings.num_processes is not None
        else _int("JAX_NUM_PROCESSES"),
        process_id=settings.process_id
        if settings.process_id is not None
        else _int("JAX_PROCESS_ID"),
    )


def cluster_detected(env: dict[str, str] | None = None) -> str | None:
    """The kind of multi-process launch JAX can configure itself ("tpu", "slurm", "ompi"), or None."""
    env = os.environ if env is None else env
    if int(env.get("SLURM_NTASKS", env.get("SLURM_STEP_NUM_TASKS", "1")) or 1) > 1 and env.get(
        "SLURM_PROCID"
    ):
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "ompi"
    if env.get("TPU_WORKER_HOSTNAMES") or importlib.util.find_spec("libtpu") is not None:
        return "tpu"
    return None


def should_initialize(settings: Settings, env: dict[str, str] | None = None) -> bool:
    if settings.mode not in MODES:
        raise ConfigError(f"--distributed={settings.mode!r}: expected one of {MODES}.")
    if settings.mode != "auto":
        return settings.mode == "on"
    return settings.coordinator_address is not None or cluster_detected(env) is not None


def initialize(settings: Settings) -> bool:
    """Starts `jax.distributed` if the settings or the environment ask for it; True if started.

    Must run before anything touches a JAX backend (even `jax.devices()`).
    """
    settings = from_env(settings)
    if not should_initialize(settings):
        return False
    explicit = (settings.coordinator_address, settings.num_processes, settings.process_id)
    if any(x is not None for x in explicit) and None in explicit:
        raise ConfigError(
            "multi-process run: give all of --coordinator_address, --num_processes and "
            "--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or none "
            f"of them to let JAX detect the cluster; got {explicit}."
        )
    try:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator_address,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            initialization_timeout=settings.initialization_timeout,
            heartbeat_timeout_seconds=settings.heartbeat_timeout,
        )
    except (RuntimeError, ValueError, TypeError) as e:
        raise ConfigError(
            f"jax.distributed.initialize failed ({str(e).splitlines()[0]}). Check "
            "--coordinator_address/--num_processes/--process_id, that every process was started "
            "and can reach the coordinator, or pass --distributed=off for a single process."
        ) from None
    return True
