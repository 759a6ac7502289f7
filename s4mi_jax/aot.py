"""Ahead-of-time check: compile a config's train step for a target mesh on this machine, before paying
for it.

    python -m s4mi_jax.aot --config=configs/simclr_chest.py:research --devices=64 --config.mesh.fsdp=8
    python -m s4mi_jax.aot --config=configs/simclr_chest.py:research --topology=v5e:4x4   # needs libtpu

Builds the abstract train state (shapes + the shardings the config asks for) and a global batch of
ShapeDtypeStructs, then `jax.jit(step).lower(...).compile()`: the same program a run would compile, without
allocating anything or reading data. Sharding mistakes (indivisible batch, bad mesh) fail here, and XLA's
memory analysis says what each device would hold. It prints, per device: parameter and train-state bytes,
XLA's argument / output / temporary buffers and their peak estimate, and the step's FLOPs.

`--devices=N` compiles for N simulated CPU devices (XLA:CPU: the sharding and parameter bytes are those of
the target; temporary buffers and FLOPs are XLA:CPU's, a guide for TPU/GPU, not a measurement).
`--topology=NAME` compiles for a Cloud TPU topology (e.g. `v5e:2x2`, `v4:2x2x2`) with XLA:TPU's own
compiler, which needs `libtpu` installed (`pip install 'jax[tpu]'`); the CPU machine needs no TPU.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from s4mi_jax.cli import parse_flags
from s4mi_jax.core import compile_cache, sharding, train_state
from s4mi_jax.core.compiled import compiled_stats
from s4mi_jax.errors import ConfigError, S4MIError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, as for s4mi_jax.main.", lock_config=True
)
_DEVICES = flags.DEFINE_integer("devices", None, "Compile for this many simulated CPU devices.")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "Cloud TPU topology to compile for, e.g. v5e:2x2 (needs libtpu)."
)
_JSON = flags.DEFINE_string("json", None, "Also write the report to this JSON file.")
flags.mark_flags_as_required(["config"])
compile_cache.define_flag()


def topology_devices(name: str) -> list[Any]:
    """Compile-only devices of a TPU topology (no TPU needed, but libtpu is)."""
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(name, platform="tpu").devices)
    except (RuntimeError, ValueError, NotImplementedError) as e:
        raise ConfigError(
            f"--topology={name}: cannot build this TPU topology here ({str(e).splitlines()[0]}). "
            "It needs libtpu (pip install 'jax[tpu]') and a name such as v5e:2x2 or v4:2x2x2; "
            "without libtpu use --devices=N to compile for N simulated CPU devices."
        ) from None


def analyze(config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> dict:
    """Lowers and compiles `config`'s train step for a mesh over `devices`; returns the report."""
    module = importlib.import_module(f"s4mi_jax.trainers.{config.trainer}")
    if not hasattr(module, "aot_setup"):
        raise ConfigError(
            f"config.trainer={config.trainer!r} has no aot_setup(config, mesh): "
            "the ahead-of-time check does not know its step yet."
        )
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch_size(config.batch_size, mesh)
    step_fn, abstract_state, abstract_batch = module.aot_setup(config, mesh)
    rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=sharding.replicated(mesh))
    jitted = train_state.jit_step(step_fn, train_state.shardings_of(abstract_state), mesh)
    compiled = jitted.lower(abstract_state, abstract_batch, rng).compile()
    report = {
        "trainer": config.trainer,
        "platform": mesh.devices.flat[0].platform,
        "device_kind": mesh.devices.flat[0].device_kind,
        "devices": int(mesh.devices.size),
        "mesh": dict(zip(mesh.axis_names, map(int, mesh.devices.shape), strict=True)),
        "global_batch": config.batch_size,
        "param_count": sum(int(x.size) for x in jax.tree.leaves(abstract_state.params)),
        "param_bytes_per_device": sharding.bytes_per_device(abstract_state.params),
        "state_bytes_per_device": sharding.bytes_per_device(abstract_state),
    }
    report.update(compiled_stats(compiled))
    return report


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_report(r: dict) -> str:
    lines = [
        f"{r['trainer']}: {r['devices']} {r['platform']} device(s) ({r['device_kind']}), "
        f"mesh {r['mesh']}, global batch {r['global_batch']}",
        f"  parameters           {r['param_count'] / 1e6:.2f}M, "
        f"{_mib(r['param_bytes_per_device'])} per device",
        f"  train state          {_mib(r['state_bytes_per_device'])} per device "
        "(params, BN statistics, optimizer)",
    ]
    if "temp_bytes" in r:
        lines += [
            f"  XLA arguments        {_mib(r['argument_bytes'])} per device",
            f"  XLA temporaries      {_mib(r['temp_bytes'])} per device",
            f"  peak (estimate)      {_mib(r['peak_bytes_per_device'])} per device",
        ]
    flops = r["flops_per_device"]
    lines.append(
        f"  FLOPs per step       {flops / 1e9:.3f} GFLOP per device, "
        f"{flops * r['devices'] / 1e9:.3f} GFLOP summed over devices (replicated work counted on each)"
        if flops >= 0
        else "  FLOPs per step       (not reported by this backend)"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _DEVICES.value is not None and _TOPOLOGY.value is not None:
        raise app.UsageError("give --devices or --topology, not both")
    compile_cache.enable_from_flag()
    try:
        config = _CONFIG.value
        devices = None
        if _TOPOLOGY.value:
            devices = topology_devices(_TOPOLOGY.value)
        elif _DEVICES.value:
            # Before the backend starts: N simulated CPU devices, whatever accelerator is attached.
            jax.config.update("jax_platforms", "cpu")
            jax.config.update("jax_num_cpu_devices", _DEVICES.value)
        report = analyze(config, devices)
    except S4MIError as e:
        print(f"s4mi_jax.aot: error: {str(e).split(chr(10) + '----')[0]}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report), flush=True)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
