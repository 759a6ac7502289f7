"""Where the program may write: never into data.

Every command resolves the paths it will write (a run's workdir, `predict --output`, `score --output`,
`export_weights --out`, a sweep's folder, the data cache) through `check_output` before it writes
anything. A path that is a data folder of the run, or lies inside one, is refused in one line, as is a
file path that is one of the inputs: a run's checkpoints never land among the images, and predicted
masks never replace the hand-drawn ones.

Paths are compared after resolving symlinks and `..` (`os.path.realpath`), so `data/../data` and a
symlink to the data folder are caught too. Object-store paths (`gs://...`) are compared as text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import ml_collections

from s4mi_jax.errors import ConfigError


def _real(path: str) -> str:
    if "://" in path:
        return path.rstrip("/")
    return os.path.realpath(os.path.expanduser(path))


def _inside(path: str, folder: str) -> bool:
    """`path` is `folder` or lies below it (both already resolved)."""
    if path == folder:
        return True
    sep = "/" if "://" in folder else os.sep
    return path.startswith(folder.rstrip(sep) + sep)


def config_data_roots(config: ml_collections.ConfigDict) -> dict[str, str]:
    """The data folders a run reads: config key -> path (`data.root`, `data.eval_root`,
    `data.tfds_data_dir`); keys not set are left out."""
    data = config.get("data") or {}
    roots = {}
    for key in ("root", "eval_root", "tfds_data_dir"):
        value = data.get(key) if hasattr(data, "get") else None
        if isinstance(value, str) and value:
            # A CSV/.npz/TFDS source is a file or a name: its folder holds the data.
            roots[f"config.data.{key}"] = value
    return roots


def check_output(
    path: str,
    what: str,
    data_roots: Mapping[str, str],
    input_files: Iterable[str] = (),
) -> None:
    """Raises ConfigError (one line naming `what`, e.g. "--workdir") if `path` is, or lies inside, one
    of `data_roots` (name -> folder or data file), or is one of `input_files`."""
    target = _real(path)
    for name, root in data_roots.items():
        folder = _real(root)
        if "://" not in folder and os.path.isfile(folder):
            # A file source (labels CSV, .npz): writing beside it is allowed, over it is not.
            if target == folder:
                raise ConfigError(
                    f"{what}={path} is the data file {root} ({name}): the program never writes "
                    "over its inputs; choose another path."
                )
            continue
        if _inside(target, folder):
            raise ConfigError(
                f"{what}={path} is inside the data folder {root} ({name}): the program never "
                "writes into data; choose a folder outside it (e.g. runs/<name>)."
            )
    for item in input_files:
        if target == _real(item):
            raise ConfigError(
                f"{what}={path} is one of the input files: the program never writes over its "
                "inputs; choose another path."
            )
