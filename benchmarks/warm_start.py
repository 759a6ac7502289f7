"""Time to the first training step of the real command, with an empty vs a warm compilation cache.

    python benchmarks/warm_start.py --config=configs/simclr_chest.py --warm_runs=2 \
        --json=benchmarks/json/warm_start.json

Each run is `python -m s4mi_jax.main --config=... --workdir=<fresh folder>` with
`S4MI_COMPILE_CACHE=<one temporary folder>`: the first run finds it empty (cold), the next ones find
what the first wrote (warm). A run is timed from its start to the line `first step (...)` (the first
train step has run, its compile included), then killed: the wall seconds and the CPU seconds the
process used until then (user + system, all its threads). The machine's load average is recorded next
to each run (shared machines move these numbers). Not part of the test suite: speed is never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_to_first_step(args: list[str], env: dict[str, str], timeout: float) -> dict:
    """Runs the command until its `first step` line; returns wall and CPU seconds to that line."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "s4mi_jax.main", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    result: dict = {"load_average_1min": load}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("first step ("):
            result["wall_s"] = time.perf_counter() - t0
            result["cpu_s"] = _cpu_seconds(proc.pid)
            result["first_step_line"] = line.strip()
            break
        if time.perf_counter() - t0 > timeout:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # Only the process group this function started.
    proc.wait()
    if "wall_s" not in result:
        result["error"] = f"no 'first step' line (exit {proc.returncode})"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/simclr_chest.py")
    parser.add_argument("--warm_runs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", default=None)
    parser.add_argument("extra", nargs="*", help="more flags for s4mi_jax.main, e.g. --config.x=y")
    a = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="s4mi_warm_start_")
    env = dict(os.environ, S4MI_COMPILE_CACHE=os.path.join(tmp, "cache"))
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    rows = []
    try:
        for i in range(1 + a.warm_runs):
            args = [f"--config={a.config}", *a.extra, f"--workdir={os.path.join(tmp, f'run{i}')}"]
            row = {"cache": "cold (empty)" if i == 0 else "warm", "run": i}
            row.update(time_to_first_step(args, env, a.timeout))
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/warm_start.py " + " ".join(sys.argv[1:]),
        "main_command": f"python -m s4mi_jax.main --config={a.config} " + " ".join(a.extra),
        "cpus": os.cpu_count(),
        "runs": rows,
    }
    print(
        "| run | cache | wall s to first step | CPU s | load avg (1 min) |\n|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['run']} | {r['cache']} | {r.get('wall_s', float('nan')):.1f} | "
            f"{r.get('cpu_s', float('nan')):.1f} | {r['load_average_1min']:.1f} |"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
