"""Decode a dataset once into a `.npz` of fixed-size uint8 arrays, for the on-device augmentation path.

    python -m s4mi_jax.data.cache --root=/path/to/chest_xray_pneumonia --size=128 \
        --out=/tmp/cxr_128.npz
    python -m s4mi_jax.main --config=configs/simclr_chest.py --config.aug.on_device=True \
        --config.data.root=/tmp/cxr_128.npz

With `aug.on_device` the host's only per-image work is decode + resize to `aug.source_size`; this
command does it once, so a run then only copies arrays (PNG decoding is most of what is left on a
small CPU). The file keeps the file names (`keys`), class names and patient ids (`groups`), so the
manifests (splits, label fractions) of the cache equal those of the folder. It is written next to, never
into, the data (inputs are read-only); multi-label and segmentation data are not cached.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from absl import app, flags

from s4mi_jax import outputs
from s4mi_jax.data import augment
from s4mi_jax.data.sources import open_source, source_keys
from s4mi_jax.errors import DataError, S4MIError


def write_cache(
    root: str | None, out: str, size: int, channels: int | None = None, threads: int = 4
) -> int:
    """Writes `out` (.npz: images (N, size, size, C) uint8, labels, keys, class_names[, groups]);
    returns N."""
    if not out.endswith(".npz"):
        raise DataError(f"--out={out}: the cache is a .npz file.")
    source = open_source(root, channels=channels, verify=False)
    outputs.check_output(out, "--out", {"--root": str(source.root)})  # Next to the data, not in it.
    if source.labels.ndim != 1:
        raise DataError(f"{source.root}: multi-label data is not cached; train from the folder.")
    with ThreadPoolExecutor(threads) as pool:  # PIL decodes without the GIL.
        images = list(
            pool.map(lambda i: augment.resize(source[i]["image"], size), range(len(source)))
        )
    arrays = dict(
        images=np.stack(images),
        labels=source.labels,
        keys=np.asarray(source_keys(source), str),
        class_names=np.asarray(source.class_names, str),
    )
    if source.groups is not None:
        arrays["groups"] = np.asarray(source.groups, str)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out[: -len(".npz")] + ".tmp.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, out)  # Atomic: a half-written cache is never read.
    except BaseException as e:  # A full disk or a Ctrl-C leaves no half-written file.
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise DataError(f"--out={out}: cannot write: {e.strerror or e}.") from None
        raise
    return len(images)


F: dict = {}  # Flag holders, defined only when run as a command.


def define_flags() -> None:
    F["root"] = flags.DEFINE_string("root", None, "Data folder (None: the embedded sample).")
    F["out"] = flags.DEFINE_string("out", None, "The .npz file to write.")
    F["size"] = flags.DEFINE_integer("size", 128, "Side of the square every image is resized to.")
    F["channels"] = flags.DEFINE_integer("channels", None, "1 or 3 (default: as stored).")
    flags.mark_flags_as_required(["out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        n = write_cache(F["root"].value, F["out"].value, F["size"].value, F["channels"].value)
    except S4MIError as e:
        print(f"s4mi_jax.data.cache: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            f"s4mi_jax.data.cache: interrupted; {F['out'].value} was not written.", file=sys.stderr
        )
        sys.exit(130)
    print(f"wrote {n} images at {F['size'].value}x{F['size'].value} to {F['out'].value}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
