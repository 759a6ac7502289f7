"""Where the time of a training step goes: input pipeline, device step, end to end.

    python -m s4mi_jax.benchmark --config=configs/simclr_chest.py --json=bench.json --table=table.md
    python -m s4mi_jax.benchmark --config=configs/simclr_chest.py --config.aug.on_device=False
    python -m s4mi_jax.benchmark --config=configs/simclr_chest.py:local --quick     # CI smoke test

For one config it measures, on the run's own data, mesh and compiled step:

* `host_examples_per_s`: the Grain input pipeline alone (read, decode, augment or only resize, batch);
* `synthetic_step_s`: the train step on one device-resident batch reused every step (input-free speed;
  with `aug.on_device` the views are still made in the step, as in training);
* `e2e_examples_per_s`: the training loop as `core/loop.py` runs it (next batch, put on devices, step,
  metric tally),
  timed between two halves of the synthetic steps (load drift on a shared machine hits both alike);
* `e2e_over_synthetic`: end-to-end / synthetic throughput (1.0: the input never stalls the device);
* `compile_s`, `flops_per_step` (XLA's cost analysis of the compiled step, summed over devices),
  `mfu` (achieved FLOP/s over the peak of `PEAK_FLOPS` for the device and compute dtype; on CPU the
  peak is a measured matmul), and peak device memory (the allocator's peak where the backend reports
  one, else XLA's estimate of the compiled step).

It prints one JSON object and a Markdown table row; `--json` writes the object, `--table` appends the
row to a Markdown file (with a header when the file is new). Examples are source images; a view is one
image through the network (SimCLR makes 2 per example, DINO G + L).
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from s4mi_jax import trainers
from s4mi_jax.cli import parse_flags
from s4mi_jax.core import compile_cache, sharding, train_state
from s4mi_jax.core import run as core_run
from s4mi_jax.core.compiled import compiled_stats
from s4mi_jax.core.loop import tally_fn
from s4mi_jax.core.metric_writer import run_environment
from s4mi_jax.data.prefetch import DevicePrefetch
from s4mi_jax.errors import S4MIError

# Dense peak FLOP/s per chip by compute dtype (vendor data sheets; SXM parts for GPUs). Matched by
# substring of `device.device_kind`, first match wins (so "v5 lite" precedes "v5").
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bfloat16": 989e12, "float32": 67e12}),
    ("H100", {"bfloat16": 989e12, "float32": 67e12}),
    ("A100", {"bfloat16": 312e12, "float32": 19.5e12}),
    (
        "v6 lite",
        {"bfloat16": 918e12, "float32": 918e12},
    ),  # TPU v6e (f32 matmuls run as bf16 passes)
    ("v5 lite", {"bfloat16": 197e12, "float32": 197e12}),  # TPU v5e
    ("v5p", {"bfloat16": 459e12, "float32": 459e12}),
    ("v5", {"bfloat16": 459e12, "float32": 459e12}),  # TPU v5p reports "TPU v5"
    ("v4", {"bfloat16": 275e12, "float32": 275e12}),
)

COLUMNS = (
    ("date", "date"),
    ("config", "config"),
    ("aug", "augmentation"),
    ("device", "device"),
    ("batch", "global_batch"),
    ("host ex/s", "host_examples_per_s"),
    ("synthetic ex/s", "synthetic_examples_per_s"),
    ("e2e ex/s", "e2e_examples_per_s"),
    ("e2e/synthetic", "e2e_over_synthetic"),
    ("step ms", "synthetic_step_ms"),
    ("compile s", "compile_s"),
    ("GFLOP/step", "gflops_per_step"),
    ("MFU", "mfu"),
    ("peak MiB", "peak_memory_mib"),
)


def compute_dtype(config: ml_collections.ConfigDict) -> str:
    """The model's compute dtype (CASS: the CNN branch's), for the peak FLOP/s it is compared with."""
    model = config.model
    if "dtype" not in model and "cnn" in model:
        model = model.cnn
    return model.get("dtype", "float32")


def measured_matmul_peak(dtype: str, n: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n matmul on the default device: the CPU's practical peak."""
    dt = jnp.dtype(dtype)
    a = jnp.ones((n, n), dt)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, a))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a, a))
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops(device: jax.Device, dtype: str) -> tuple[float, str]:
    """(peak FLOP/s per device, where it comes from)."""
    if device.platform == "cpu":
        return measured_matmul_peak(dtype), f"measured {dtype} 1024^2 matmul"
    for key, peaks in PEAK_FLOPS:
        if key.lower() in device.device_kind.lower():
            return peaks[dtype if dtype in peaks else "bfloat16"], f"{key} {dtype} data sheet"
    return float("nan"), f"unknown device {device.device_kind!r}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=os.path.dirname(__file__),
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _close(it) -> None:
    if hasattr(it, "close"):
        it.close()


def _timed_batches(it, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    return time.perf_counter() - t


def run(
    config: ml_collections.ConfigDict,
    *,
    steps: int = 20,
    warmup: int = 3,
    name: str = "",
    prefetch: int | None = None,
) -> dict:
    """Measures `config` (any registered trainer: its own step and iterator) on this machine's devices.

    `steps` timed steps each for synthetic (half before, half after end to end) and end to end.
    `prefetch`: batches the loop's reader thread keeps on the devices (core/loop.py; 0: none, the
    batch is read and put on the devices on the loop's thread; None: the loop's default)."""
    trainer = trainers.get(config.trainer)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_size(config.batch_size, mesh)
    data = trainer.load_data(config)
    task = trainer.task(config, data, mesh)  # The run's own step and iterator.
    p = core_run.build(config, mesh, task, data)
    step, abstract_state, init, iterator = p.step, p.abstract_state, p.init, task.make_iterator
    examples, views = task.examples_per_step, task.views_per_example
    specs = {k: (v.shape[1:], v.dtype) for k, v in p.batch.items()}
    jitted = train_state.jit_step(step, train_state.shardings_of(abstract_state), mesh)
    abstract_batch = p.batch
    rng_spec = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(mesh))
    t = time.perf_counter()
    compiled = jitted.lower(abstract_state, abstract_batch, rng_spec).compile()
    compile_s = time.perf_counter() - t
    stats = compiled_stats(compiled)
    state = init()

    # 1. The host input pipeline alone.
    it = iterator()
    _timed_batches(it, warmup)
    host_s = _timed_batches(it, steps)

    # 2. The step on one device-resident batch (the first real batch, so values are realistic).
    fields = set(specs)
    batch = sharding.put_batch({k: v for k, v in next(it).items() if k in fields}, mesh)
    _close(it)  # Its prefetch threads would compete with the device step on a CPU.

    tallies = []  # The loop's (empty, update) for the step's metrics, built at the first step.

    def steps_on(state, batches, n):
        metrics = tally = None
        for i in range(n):
            b = batch if batches is None else next(batches)
            b = {k: b[k] for k in fields}
            state, metrics = compiled(state, b, jax.random.fold_in(state.rng, i))
            if batches is not None:  # End to end includes the loop's per-step metric tally.
                m = dict(metrics)
                bad = m.pop("nonfinite", 0.0)
                if not tallies:
                    tallies.append(tally_fn(m))
                empty, update = tallies[0]
                tally = update(empty() if tally is None else tally, m, bad, i + 1)
        jax.block_until_ready((state, metrics, tally))
        return state, metrics

    # 3. Synthetic, end to end, synthetic (A B A: a linear drift in a shared machine's load hits both
    # alike). End to end runs as the training loop does: one iterator, primed by `warmup` untimed
    # steps (a fresh Grain iterator is slow for its first few batches), then `steps` timed ones.
    state, _ = steps_on(state, None, warmup)
    first = steps // 2
    t = time.perf_counter()
    state, _ = steps_on(state, None, first)
    synthetic_s = time.perf_counter() - t
    host = iterator()

    def put(b):
        return sharding.put_batch(b, mesh)

    data = DevicePrefetch(host, put, prefetch)
    prefetch = data.depth
    state, _ = steps_on(state, data, warmup)
    t = time.perf_counter()
    state, metrics = steps_on(state, data, steps)
    e2e_s = time.perf_counter() - t
    data.close()
    _close(host)
    t = time.perf_counter()
    state, _ = steps_on(state, None, steps - first)
    synthetic_s += time.perf_counter() - t
    loss = float(metrics["loss"])

    device = mesh.devices.flat[0]
    dtype = compute_dtype(config)
    peak, peak_source = peak_flops(device, dtype)
    n_dev = int(mesh.devices.size)
    flops = stats["flops_per_device"]
    step_s = synthetic_s / steps
    mem = device.memory_stats() or {}
    if "peak_bytes_in_use" in mem:
        peak_bytes, mem_source = int(mem["peak_bytes_in_use"]), "allocator peak"
    else:
        peak_bytes, mem_source = stats.get("peak_bytes_per_device", -1), "XLA estimate of the step"
    env = run_environment()
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "config": name or config.trainer,
        "trainer": config.trainer,
        "augmentation": "device" if config.aug.get("on_device", False) else "host",
        "device": _cpu_name() if device.platform == "cpu" else device.device_kind,
        "platform": device.platform,
        "devices": n_dev,
        "host_cpus": os.cpu_count(),
        "num_workers": config.data.num_workers,
        "global_batch": examples,
        "views_per_example": views,
        "compute_dtype": dtype,
        "steps": steps,
        "warmup": warmup,
        "prefetch_to_device": prefetch,
        "host_examples_per_s": steps * examples / host_s,
        "synthetic_step_ms": 1e3 * step_s,
        "synthetic_examples_per_s": steps * examples / synthetic_s,
        "e2e_step_ms": 1e3 * e2e_s / steps,
        "e2e_examples_per_s": steps * examples / e2e_s,
        "e2e_views_per_s": steps * examples * views / e2e_s,
        "e2e_over_synthetic": synthetic_s / e2e_s,
        "compile_s": compile_s,
        "compile_cache": jax.config.jax_compilation_cache_dir,  # A warm cache: compile_s is a load.
        "flops_per_step": flops * n_dev,
        "gflops_per_step": flops * n_dev / 1e9,
        "achieved_flops_per_s": flops * n_dev / step_s,
        "peak_flops_per_s_per_device": peak,
        "peak_flops_source": peak_source,
        "mfu": flops / step_s / peak if flops > 0 else float("nan"),
        "peak_memory_bytes": peak_bytes,
        "peak_memory_mib": peak_bytes / 2**20,
        "peak_memory_source": mem_source,
        "final_loss": loss,
        "python": platform.python_version(),
        "jax_version": env["jax_version"],
        "jaxlib_version": importlib.metadata.version("jaxlib"),
        "flax_version": env["flax_version"],
        "git_commit": _git_commit(),
    }
    return result


def _cell(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def table_row(result: dict) -> str:
    return "| " + " | ".join(_cell(result[k]) for _, k in COLUMNS) + " |"


def table_header() -> str:
    names = [c for c, _ in COLUMNS]
    return "| " + " | ".join(names) + " |\n|" + "|".join("---" for _ in names) + "|"


def append_row(path: str, result: dict) -> None:
    """Appends the result's row to a Markdown table file (header first if the file is new)."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        if new:
            f.write(table_header() + "\n")
        f.write(table_row(result) + "\n")


def _config_name(argv: list[str]) -> str:
    """The config file and its overrides, as given (paths shortened to their last component)."""
    parts = []
    for arg in argv:
        if arg.startswith("--config="):
            parts.insert(0, os.path.basename(arg.split("=", 1)[1]))
        elif arg.startswith("--config."):
            key, _, value = arg[len("--config.") :].partition("=")
            parts.append(f"{key}={os.path.basename(value)}")
    return " ".join(parts)


F: dict = {}  # Flag holders, defined only when run as a command (tests import this module beside
# s4mi_jax.aot, whose --config and --json flags would otherwise be defined twice).


def define_flags() -> None:
    F["config"] = config_flags.DEFINE_config_file(
        "config", None, "Config file, as for s4mi_jax.main.", lock_config=True
    )
    F["quick"] = flags.DEFINE_bool(
        "quick", False, "2 timed steps and batches: a smoke test, not a measure."
    )
    F["steps"] = flags.DEFINE_integer("steps", 20, "Timed steps (synthetic and end to end).")
    F["warmup"] = flags.DEFINE_integer(
        "warmup", 3, "Untimed steps/batches before the measurements."
    )
    F["prefetch"] = flags.DEFINE_integer(
        "prefetch",
        None,
        "Batches read ahead onto the devices in a thread (0: none). Default: the training loop's "
        "(data/prefetch.py: 2 on GPU/TPU, 0 on CPU).",
    )
    F["json"] = flags.DEFINE_string("json", None, "Write the result to this JSON file.")
    F["table"] = flags.DEFINE_string(
        "table", None, "Append the result as a row to this Markdown file."
    )
    flags.mark_flags_as_required(["config"])
    compile_cache.define_flag()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    steps, warmup = (2, 1) if F["quick"].value else (F["steps"].value, F["warmup"].value)
    compile_cache.enable_from_flag()  # compile_s is then a cache hit on reruns: --compile_cache=off
    try:
        result = run(
            F["config"].value,
            steps=steps,
            warmup=warmup,
            name=_config_name(sys.argv[1:]),
            prefetch=F["prefetch"].value,
        )
    except S4MIError as e:
        print(f"s4mi_jax.benchmark: error: {str(e).split(chr(10) + '----')[0]}", file=sys.stderr)
        sys.exit(2)
    result["command"] = "python -m s4mi_jax.benchmark " + " ".join(sys.argv[1:])
    print(json.dumps(result, indent=2, sort_keys=True))
    print(table_header())
    print(table_row(result), flush=True)
    if F["json"].value:
        with open(F["json"].value, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    if F["table"].value:
        append_row(F["table"].value, result)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
