"""The chest X-ray pool as one compressed `.npz` small enough to travel to the GPU machine.

    python benchmarks/build_device_data.py --root=../shared/data/chest_xray_pneumonia --size=96 \
        --out=.device_payload/cxr_96.npz

`s4mi_jax.data.cache` (decode once, resize to `size`, keep file names, classes and patient ids, so
splits and label fractions equal the folder's), then saved with zlib compression: the machine's copy
of the repository, wheels and data included, must stay under 64 MiB. It prints the file's size.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from s4mi_jax.data.cache import write_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data/chest_xray_pneumonia")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--out", default=".device_payload/cxr_96.npz")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.npz")
        n = write_cache(a.root, raw, a.size, threads=2)
        with np.load(raw) as f:
            arrays = {k: f[k] for k in f.files}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    np.savez_compressed(a.out, **arrays)
    print(f"{a.out}: {n} images at {a.size}x{a.size}, {os.path.getsize(a.out) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
