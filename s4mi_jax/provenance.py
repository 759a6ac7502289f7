"""What produced a result: code version, config, data, hardware, time. Every results.json writer calls
`record` and stores what it returns under `results["provenance"]`.

Fields (`record`):
- `code`: `git_commit` and `git_dirty` of the checkout the package was imported from (dirty = tracked or
  untracked changes under s4mi_jax/, configs/, launch/ or pyproject.toml; run outputs elsewhere do not
  count), or, outside a git checkout or without a `git` executable, `null` and the installed
  `package_version` (always recorded);
- `config`: the full resolved config, and `config_sha256` of its canonical JSON (equal configs, equal hash);
- `command`: this process's argv;
- `manifest_hash`: the label manifest's hash (`data/manifests.py`), or null for data without labels;
- `dataset` (and `eval_dataset` when `config.data.eval_root` is set): `fingerprint` below;
- `environment`: device kind and count, process count, platform, and the versions of Python, jax, jaxlib,
  flax, optax, orbax-checkpoint, grain, numpy and s4mi_jax;
- `started_at` / `finished_at` (UTC, ISO 8601), `wall_time_s` and `device_hours` (= wall time x device
  count / 3600) of *this invocation*: a run that was preempted and resumed reports the invocation that
  finished it (`resumed_from_step` says it was resumed, and from where).

Only the standard library is imported at module level: the sweep report (`flatten`) needs no JAX.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# What the fingerprint hashes, stored beside it so a reader knows what equal hashes mean.
FINGERPRINT_RECIPE = (
    "sha256 of the sorted lines '<path relative to the data root>\\t<size in bytes>' of every image, "
    "mask and label/metadata/list CSV file (not their contents)"
)
_CODE_PATHS = ("s4mi_jax", "configs", "launch", "pyproject.toml")


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """{git_commit, git_dirty, package_version}; git fields None when git or a checkout is absent."""
    import s4mi_jax

    repo = Path(s4mi_jax.__file__).resolve().parents[1]
    out: dict[str, Any] = {
        "git_commit": None,
        "git_dirty": None,
        "package_version": s4mi_jax.__version__,
    }

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.SubprocessError):  # No git executable, or it hung.
            return None
        return res.stdout if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit:
        status = git("status", "--porcelain", "--", *_CODE_PATHS)
        out["git_commit"] = commit.strip()
        out["git_dirty"] = None if status is None else bool(status.strip())
    return out


def _files_of(source: Any) -> tuple[Path, list[Path]]:
    """(base folder, every file the source reads) of a folder / CSV / NIfTI / .npz source."""
    root = Path(str(source.root))
    base = root.parent if root.is_file() else root
    files: list[Path] = []
    if root.is_file():  # .npz or a CSV of paths.
        files.append(root)
    for attr in ("files", "volumes", "mask_files"):
        files += [Path(p) for p in (getattr(source, attr, None) or []) if p is not None]
    for name in ("labels.csv", "metadata.csv"):
        if (base / name).is_file():
            files.append(base / name)
    return base, sorted(set(files))


def fingerprint(source: Any) -> dict[str, Any]:
    """{root, file_count, records, sha256, hashes}: identifies a dataset without reading its pixels.

    A TFDS source has no files here: its sorted record ids (file names in the release) are hashed.
    """
    while hasattr(source, "source"):  # SubsetSource: fingerprint the whole dataset.
        source = source.source
    root = str(source.root)
    if root.startswith("tfds:"):
        lines = sorted(str(k) for k in source.keys)
        recipe = "sha256 of the sorted record ids (file names) of the TFDS split"
        count = len(lines)
    else:
        base, files = _files_of(source)
        lines = []
        for p in files:
            rel = os.path.relpath(p, base) if p.is_relative_to(base) else str(p)
            lines.append(f"{Path(rel).as_posix()}\t{p.stat().st_size}")
        lines.sort()
        recipe = FINGERPRINT_RECIPE
        count = len(files)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return {
        "root": os.path.abspath(root) if not root.startswith("tfds:") else root,
        "file_count": count,
        "records": len(source),
        "sha256": digest,
        "hashes": recipe,
    }


def environment() -> dict[str, Any]:
    """Devices and library versions (the keys results.json's `environment` always had, and more)."""
    from importlib import metadata

    import flax
    import jax
    import numpy as np
    import optax

    import s4mi_jax

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    devices = jax.devices()
    return {
        "s4mi_jax_version": s4mi_jax.__version__,
        "jax_version": jax.__version__,
        "jaxlib_version": version("jaxlib"),
        "flax_version": flax.__version__,
        "optax_version": optax.__version__,
        "orbax_checkpoint_version": version("orbax-checkpoint"),
        "grain_version": version("grain"),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }


def config_dict(config: Any) -> dict:
    """The config as plain JSON types (as config.json stores it)."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(raw, default=str))


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def record(
    config: Any,
    *,
    t_start: float,
    source: Any = None,
    eval_source: Any = None,
    manifest_hash: str | None = None,
    resumed_from_step: int | None = None,
) -> dict[str, Any]:
    """The `provenance` entry of a results.json; `t_start` is this invocation's `time.time()` at start."""
    now = time.time()
    env = environment()
    cfg = config_dict(config)
    wall = now - t_start
    out = {
        "code": code_version(),
        "config": cfg,
        "config_sha256": hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest(),
        "command": list(sys.argv),
        "manifest_hash": manifest_hash,
        "dataset": None if source is None else fingerprint(source),
        "environment": env,
        "started_at": _utc(t_start),
        "finished_at": _utc(now),
        "wall_time_s": wall,
        "device_hours": wall * env["device_count"] / 3600.0,
        "resumed_from_step": resumed_from_step,
    }
    if eval_source is not None:
        out["eval_dataset"] = fingerprint(eval_source)
    return out


# Columns of a sweep's provenance.csv (launch/report.py), in order.
COLUMNS = (
    "git_commit",
    "git_dirty",
    "package_version",
    "config_sha256",
    "manifest_hash",
    "dataset_root",
    "dataset_file_count",
    "dataset_sha256",
    "device_kind",
    "device_count",
    "process_count",
    "jax_version",
    "flax_version",
    "wall_time_s",
    "device_hours",
    "finished_at",
)


def flatten(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """One flat row (COLUMNS) of a results.json's `provenance` (missing fields: None)."""
    p = provenance or {}
    code, env, data = p.get("code") or {}, p.get("environment") or {}, p.get("dataset") or {}
    row = {
        **{k: code.get(k) for k in ("git_commit", "git_dirty", "package_version")},
        "config_sha256": p.get("config_sha256"),
        "manifest_hash": p.get("manifest_hash"),
        "dataset_root": data.get("root"),
        "dataset_file_count": data.get("file_count"),
        "dataset_sha256": data.get("sha256"),
        **{
            k: env.get(k)
            for k in ("device_kind", "device_count", "process_count", "jax_version", "flax_version")
        },
        **{k: p.get(k) for k in ("wall_time_s", "device_hours", "finished_at")},
    }
    return {k: row[k] for k in COLUMNS}
