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

A step that does not fit (XLA's `RESOURCE_EXHAUSTED` at compile) is one line: bytes needed and
available per device, and what would fit: how many devices at this global batch (an estimate: the
activations scale with the per-chip batch), the largest per-chip batch that compiles (found by
compiling smaller ones, `--fit_search`; each failing compile is quick, the fitting one is a full
compile), and `--config.model.remat=True` where the model has it and it is off.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import app, flags

from s4mi_jax import trainers
from s4mi_jax.cli import config_file_flag, parse_flags
from s4mi_jax.core import compile_cache, run, sharding, train_state
from s4mi_jax.core.compiled import compiled_stats
from s4mi_jax.errors import ConfigError, S4MIError

_CONFIG = config_file_flag("Config file, as for s4mi_jax.main.")
_DEVICES = flags.DEFINE_integer("devices", None, "Compile for this many simulated CPU devices.")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "Cloud TPU topology to compile for, e.g. v5e:2x2 (needs libtpu)."
)
_JSON = flags.DEFINE_string("json", None, "Also write the report to this JSON file.")
_FIT_SEARCH = flags.DEFINE_integer(
    "fit_search",
    4,
    "When the step does not fit: compile up to this many smaller per-chip batches to find one that "
    "does (0: no search, the message then gives an estimate only).",
)
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


_SIZE = r"([0-9.]+)\s*([KMGT]i?B?|B)?"
# XLA:TPU: "... the total memory required for HLO temporaries (43.08G) exceeds available HBM (15.75G)."
_TPU_OOM = re.compile(
    rf"required for (?P<what>[^()]+?) \({_SIZE}\) exceeds available (?:HBM )?\({_SIZE}\)"
)
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: str | None) -> int:
    return int(float(number) * _UNITS[(unit or "").rstrip("iB")[:1]])


class DoesNotFit(S4MIError):
    """The compiled step needs more memory per device than the device has."""

    def __init__(self, xla_message: str, per_device_batch: int, devices: int):
        self.xla_message = xla_message.strip().splitlines()[0] if xla_message.strip() else ""
        self.per_device_batch, self.devices = per_device_batch, devices
        m = _TPU_OOM.search(xla_message)
        self.what = m.group("what") if m else "the step"
        self.needed = _bytes(m.group(2), m.group(3)) if m else None
        self.available = _bytes(m.group(4), m.group(5)) if m else None
        self.fits: str | None = None  # What would fit, filled in by `explain_fit`.
        super().__init__(self.one_line())

    def one_line(self) -> str:
        if self.needed is not None:
            head = (
                f"does not fit: {self.what} need {_gib(self.needed)} per device, "
                f"{_gib(self.available)} available"
            )
        else:
            head = f"does not fit ({self.xla_message})"
        head += f" (per-device batch {self.per_device_batch} on {self.devices} device(s))"
        return head + (f". What would fit: {self.fits}" if self.fits else "")


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB"


def _compile(lowered: Any) -> Any:
    """`lowered.compile()`; XLA's out-of-memory at compile becomes `DoesNotFit` (by the caller)."""
    return lowered.compile()


def analyze(config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> dict:
    """Lowers and compiles `config`'s train step for a mesh over `devices`; returns the report."""
    trainer = trainers.get(config.trainer)
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch_size(config.batch_size, mesh)
    step_fn, abstract_state, abstract_batch = run.aot_setup(config, mesh, trainer)
    rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=sharding.replicated(mesh))
    jitted = train_state.jit_step(step_fn, train_state.shardings_of(abstract_state), mesh)
    try:
        compiled = _compile(jitted.lower(abstract_state, abstract_batch, rng))
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        n = int(mesh.devices.size)
        raise DoesNotFit(str(e), config.batch_size // n, n) from None
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


def explain_fit(
    config: ml_collections.ConfigDict,
    devices: Sequence[Any] | None,
    error: DoesNotFit,
    search: int,
) -> DoesNotFit:
    """Fills `error.fits` with what would fit; compiles up to `search` smaller per-chip batches."""
    options = []
    per_chip, n = error.per_device_batch, error.devices
    estimate = per_chip
    if error.needed and error.available:
        ratio = error.needed / error.available
        chips = n * 2 ** math.ceil(math.log2(ratio)) if ratio > 1 else n
        options.append(f"~{chips} devices at this global batch {config.batch_size} (estimate)")
        estimate = max(1, int(per_chip / ratio))
    found, tried = None, []
    candidate = min(per_chip // 2, 2 ** int(math.log2(max(1, estimate))))
    while search > 0 and candidate >= 1:
        search -= 1
        small = copy.deepcopy(config)
        small.batch_size = candidate * n
        try:
            analyze(small, devices)
            found = candidate
            break
        except DoesNotFit:
            tried.append(candidate)
            candidate //= 2
    if found is not None:
        options.append(
            f"a per-chip batch <= {found} (global {found * n}; compiled: fits"
            + (f", {max(tried)} does not" if tried else "")
            + ")"
        )
    elif tried:
        options.append(f"a per-chip batch < {min(tried)} (compiled {tried}: none fits)")
    elif per_chip > 1:
        options.append(f"a per-chip batch <= {max(1, estimate)} (estimate, not compiled)")
    if not config.get("model", {}).get("remat", False):
        options.append("--config.model.remat=True (activation checkpointing; not compiled)")
    error.fits = "; ".join(options) if options else None
    error.args = (error.one_line(),)
    return error


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
        try:
            report = analyze(config, devices)
        except DoesNotFit as e:
            raise explain_fit(config, devices, e, _FIT_SEARCH.value) from None
    except S4MIError as e:
        print(f"s4mi_jax.aot: error: {str(e).split(chr(10) + '----')[0]}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report), flush=True)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
