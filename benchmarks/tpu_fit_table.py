"""Markdown rows of the TPU fit table from `benchmarks/tpu_fit.sh`'s output (docs/accelerators.md).

python benchmarks/tpu_fit_table.py benchmarks/tpu
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys


def main(folder: str) -> None:
    print(
        "| config | topology | devices | global batch | result | temporaries / device | "
        "peak estimate / device | GFLOP / device / step | compile wall s | command |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for log in sorted(glob.glob(os.path.join(folder, "*.log"))):
        lines = open(log).read().strip().splitlines()
        if not lines:  # A compile still running.
            continue
        tail = lines[-1]
        m = re.match(r"rc=(\d+) wall_s=(\d+) cmd: (.*)", tail)
        if not m:
            continue
        rc, wall, cmd = int(m.group(1)), m.group(2), m.group(3)
        topo = re.search(r"--topology=(\S+)", cmd).group(1)
        cfg = re.search(r"--config=(\S+)", cmd).group(1)
        path = log[: -len(".log")] + ".json"
        if rc == 0 and os.path.exists(path):
            r = json.load(open(path))
            print(
                f"| {cfg} | {topo} | {r['devices']} | {r['global_batch']} | compiles | "
                f"{r['temp_bytes'] / 2**30:.2f} GiB | {r['peak_bytes_per_device'] / 2**30:.2f} GiB | "
                f"{r['flops_per_device'] / 1e9:.0f} | {wall} | `{cmd}` |"
            )
        else:
            err = next((ln for ln in lines if "error:" in ln), lines[-2] if len(lines) > 1 else "")
            need = re.search(r"need ([\d.]+ GiB) per device, ([\d.]+ GiB) available", err)
            dev = re.search(r"per-device batch (\d+) on (\d+) device", err)
            n, batch = (dev.group(2), int(dev.group(1)) * int(dev.group(2))) if dev else ("?", "")
            small = re.search(r"batch_size=(\d+) must be divisible by the (\d+) devices", err)
            if small:  # A global batch smaller than the chips: nothing to compile.
                batch, n = small.groups()
                err = f"global batch {batch} cannot be split over {n} devices (data parallel)"
            what = (
                f"does not fit: needs {need.group(1)}, {need.group(2)} available" if need else err
            )
            print(f"| {cfg} | {topo} | {n} | {batch} | {what} | | | | {wall} | `{cmd}` |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/tpu")
