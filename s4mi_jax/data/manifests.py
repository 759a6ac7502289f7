"""Label-fraction manifests: the images each cell of a label-efficiency sweep trains and tests on.

Why: S4MI compares methods at label fractions (1%, 10%, 100%, ...). For the comparison to mean anything,
every cell must be tested on the same patients, the 1% subset must lie inside the 10% one (else a gain from
10% could be a lucky draw, not more labels), no patient may sit on two sides, and the subset must be
reproducible on another machine from the file names alone. So:

1. Each patient (group) gets a stratum: the sorted tuple of the classes among its labeled images — `(c,)`
   for ordinary single-label data, the label set for multi-label data (`()` = no positive label).
2. `test`, then `val`, are carved per stratum from the patients ranked by a hash seeded with `split_seed`:
   the first `round(test_fraction * m)` patients go to test, the next `round(val_fraction * m)` to val
   (m = the stratum's patients; halves round up). A stratum with at least 3 patients gets at least one
   in each split whose fraction is > 0; one with 1-2 patients may have none in val/test (with the
   defaults it then stays wholly in the train pool). Neither split depends on `fraction` or `seed`.
3. The rest is the `train_pool`. `train` takes, per stratum, the first
   `max(min_per_class, ceil(fraction * m_pool))` pool patients ranked by a hash seeded with `seed` (all of
   them if the stratum has fewer). The fraction is therefore counted in *patients per stratum*, rounded
   up, not in images: at 1% each stratum still has `min_per_class` patients, so the realised share can be
   well above 1% (see `counts`). The ranking does not depend on `fraction`, so subsets are nested.
4. `unlabeled` = pool images not in `train` plus unlabeled (-1) images, except those of test/val patients
   (they stay out of everything, so semi-supervised training never sees a test patient).

Nothing depends on input order or Python's hash seed: groups are ranked by SHA-256 of their id, and with
`groups=None` each sample is its own group named by its key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s4mi_jax.data import validate
from s4mi_jax.data.sources import (
    SubsetSource,
    is_labeled,
    notes_of,
    open_from_config,
    open_test_folder,
    source_keys,
)
from s4mi_jax.data.splits import hash_rank
from s4mi_jax.errors import DataError

FORMAT = "s4mi-manifest/1"
SPLITS = ("train", "val", "test", "unlabeled", "train_pool")
_EPS = 1e-9  # 0.1 * 30 == 3.0000000000000004: without it ceil would take one group too many.

Stratum = tuple[int, ...]


@dataclass(frozen=True, eq=False, repr=False)
class Manifest:
    """One cell's subsets as sorted int64 indices into the inputs given to `make_manifest`.

    `hash` identifies the cell across machines: it covers the sorted keys of train/val/test and
    fraction/seed/split_seed, not indices, so it does not change with input order.
    """

    fraction: float
    seed: int
    split_seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unlabeled: np.ndarray
    train_pool: np.ndarray
    sample_keys: tuple[str, ...]
    counts: dict[str, dict[str, Any]]
    params: dict[str, Any]  # val_fraction, test_fraction, min_per_class.
    hash: str

    def keys(self, split: str) -> list[str]:
        """Keys of `split` (one of SPLITS), aligned with its index array."""
        return [self.sample_keys[i] for i in self._indices(split)]

    def _indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}.")
        return getattr(self, split)

    def to_json(self) -> dict[str, Any]:
        """Parameters, hash, per-split sorted key lists and per-class counts (plain JSON types)."""
        return {
            "format": FORMAT,
            "hash": self.hash,
            "fraction": self.fraction,
            "seed": self.seed,
            "split_seed": self.split_seed,
            **self.params,
            "sample_keys": list(self.sample_keys),
            "splits": {s: sorted(self.keys(s)) for s in SPLITS},
            "counts": copy.deepcopy(self.counts),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Writes `to_json()` atomically (temp file + os.replace): a crash never leaves half a manifest."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_json(), f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, keys: Sequence[str] | None = None) -> Manifest:
        """Reads a saved manifest; with `keys`, indices point into `keys` (e.g. a re-listed folder).

        Raises DataError if the file is unreadable, was edited (hash mismatch), or `keys` lacks an image
        the manifest uses.
        """
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read manifest {path}: {e}") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DataError(f"{path} is not an s4mi manifest (expected format {FORMAT!r}).")
        try:
            fraction, seed, split_seed = float(d["fraction"]), int(d["seed"]), int(d["split_seed"])
            split_keys = {s: d["splits"][s] for s in SPLITS}
            params = {k: d[k] for k in ("val_fraction", "test_fraction", "min_per_class")}
            sample_keys = [str(k) for k in (d["sample_keys"] if keys is None else keys)]
            counts, stored_hash = d["counts"], d["hash"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"manifest {path} is incomplete or malformed ({e!r}).") from None
        digest = manifest_hash(
            *(split_keys[s] for s in ("train", "val", "test")),
            fraction=fraction,
            seed=seed,
            split_seed=split_seed,
        )
        if digest != stored_hash:
            raise DataError(f"manifest {path} was modified: its hash does not match its key lists.")
        index = {k: i for i, k in enumerate(sample_keys)}
        missing = sorted({k for s in SPLITS for k in split_keys[s]} - index.keys())
        if missing:
            raise DataError(
                f"manifest {path} uses {len(missing)} image(s) not in the data, e.g. {missing[:3]}. "
                "Point it at the data it was made for, or make a new manifest."
            )
        arrays = {s: _index_array([index[k] for k in split_keys[s]]) for s in SPLITS}
        return cls(
            fraction=fraction,
            seed=seed,
            split_seed=split_seed,
            sample_keys=tuple(sample_keys),
            counts=counts,
            params=params,
            hash=stored_hash,
            **arrays,
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self._indices(s))}" for s in SPLITS)
        return (
            f"Manifest(fraction={self.fraction}, seed={self.seed}, split_seed={self.split_seed}, "
            f"{sizes}, hash={self.hash[:12]})"
        )


def manifest_hash(
    train: Sequence[str],
    val: Sequence[str],
    test: Sequence[str],
    *,
    fraction: float,
    seed: int,
    split_seed: int,
) -> str:
    """SHA-256 hex of a canonical JSON of the sorted split keys and the cell's parameters."""
    canonical = json.dumps(
        {
            "fraction": float(fraction),
            "seed": int(seed),
            "split_seed": int(split_seed),
            "train": sorted(train),
            "val": sorted(val),
            "test": sorted(test),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def make_manifest(
    keys: Sequence[str],
    labels: np.ndarray,
    groups: Sequence[str] | None,
    *,
    fraction: float,
    seed: int,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    min_per_class: int = 1,
) -> Manifest:
    """Splits labeled data into test/val (fixed by `split_seed`) and a nested `fraction` train subset.

    `labels` is (N,) int with -1 = unlabeled, or (N, C) multi-hot (a row with any -1 is unlabeled).
    `groups` holds a patient id per sample (None: each sample is its own patient). `test_fraction=0`
    means no test split (an external test set is used). See the module docstring for the rules.
    """
    keys = [str(k) for k in keys]
    labels = np.asarray(labels)
    _check_args(keys, labels, groups, fraction, val_fraction, test_fraction, min_per_class)
    group_of = keys if groups is None else [str(g) for g in groups]
    labeled = is_labeled(labels)
    if not labeled.any():
        raise DataError("make_manifest: no labeled samples (every label is -1).")
    sample_classes = _sample_classes(labels, labeled)

    # 1. One stratum per patient, from the classes of its labeled images (order-independent).
    group_classes: dict[str, set[int]] = defaultdict(set)
    for i in np.flatnonzero(labeled):
        group_classes[group_of[i]].update(sample_classes[i])
    by_stratum: dict[Stratum, list[str]] = defaultdict(list)
    for g, classes in group_classes.items():
        by_stratum[tuple(sorted(classes))].append(g)

    # 2. Test and val, then the pool: depend on split_seed only.
    test_groups: set[str] = set()
    val_groups: set[str] = set()
    pool: dict[Stratum, list[str]] = {}
    for stratum in sorted(by_stratum):
        ranked = hash_rank(by_stratum[stratum], f"manifest-split:{split_seed}")
        n_test = _n_heldout(test_fraction, len(ranked))
        n_val = _n_heldout(val_fraction, len(ranked))
        test_groups.update(ranked[:n_test])
        val_groups.update(ranked[n_test : n_test + n_val])
        pool[stratum] = ranked[n_test + n_val :]
    _check_pool(group_classes, pool, fraction, val_fraction, test_fraction)

    # 3. The nested train subset: a prefix of a fraction-independent ranking, per stratum.
    train_groups: set[str] = set()
    for members in pool.values():
        ranked = hash_rank(members, f"manifest-train:{seed}")
        take = max(min_per_class, math.ceil(fraction * len(ranked) - _EPS))
        train_groups.update(ranked[:take])
    pool_groups = {g for members in pool.values() for g in members}
    in_train, in_val, in_test, in_pool = (
        np.array([g in gs for g in group_of], bool)
        for gs in (train_groups, val_groups, test_groups, pool_groups)
    )
    splits = {
        "train": _index_array(np.flatnonzero(labeled & in_train)),
        "val": _index_array(np.flatnonzero(labeled & in_val)),
        "test": _index_array(np.flatnonzero(labeled & in_test)),
        "train_pool": _index_array(np.flatnonzero(labeled & in_pool)),
        # Test/val patients' unlabeled images are left out too: no test patient is ever trained on.
        "unlabeled": _index_array(np.flatnonzero(~(in_val | in_test) & ~(labeled & in_train))),
    }
    counts = {
        s: _counts(idx, labels, labeled, group_of, sample_classes) for s, idx in splits.items()
    }
    counts["train"]["share_of_pool"] = len(splits["train"]) / max(1, len(splits["train_pool"]))
    digest = manifest_hash(
        *([keys[i] for i in splits[s]] for s in ("train", "val", "test")),
        fraction=fraction,
        seed=seed,
        split_seed=split_seed,
    )
    return Manifest(
        fraction=float(fraction),
        seed=int(seed),
        split_seed=int(split_seed),
        sample_keys=tuple(keys),
        counts=counts,
        params={
            "val_fraction": float(val_fraction),
            "test_fraction": float(test_fraction),
            "min_per_class": int(min_per_class),
        },
        hash=digest,
        **splits,
    )


def _check_args(keys, labels, groups, fraction, val_fraction, test_fraction, min_per_class) -> None:
    if isinstance(fraction, bool) or not (0 < fraction <= 1):  # `not (...)` also rejects NaN.
        raise DataError(
            f"label fraction {fraction!r} is not in (0, 1]; use e.g. 0.01 for 1% or 1.0 for all labels."
        )
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise DataError(f"{name}={value!r} must be in [0, 1).")
    if val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves nothing to train on; "
            "it must be < 1."
        )
    if min_per_class < 0:
        raise DataError(f"min_per_class={min_per_class} must be >= 0.")
    n = len(keys)
    if labels.ndim not in (1, 2) or len(labels) != n:
        raise DataError(
            f"labels must be (N,) or (N, C) with N = {n} keys; got shape {labels.shape}."
        )
    if groups is not None and len(groups) != n:
        raise DataError(f"groups has {len(groups)} entries for {n} keys.")
    if len(set(keys)) != n:
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))
        raise DataError(
            f"duplicate key {dup!r}: keys must identify samples uniquely (e.g. relative file names)."
        )


def _sample_classes(labels: np.ndarray, labeled: np.ndarray) -> list[tuple[int, ...]]:
    """Classes of each sample: (label,) single-label; positive columns multi-label; () if unlabeled."""
    if labels.ndim == 1:
        return [(int(y),) if ok else () for y, ok in zip(labels.tolist(), labeled, strict=True)]
    return [
        tuple(np.flatnonzero(row > 0).tolist()) if ok else ()
        for row, ok in zip(labels, labeled, strict=True)
    ]


def _n_heldout(frac: float, m: int) -> int:
    """round(frac * m), halves up; >= 1 when frac > 0 and the stratum has >= 3 patients."""
    n = math.floor(frac * m + 0.5 + _EPS)
    return max(n, 1) if frac > 0 and m >= 3 else n


def _check_pool(group_classes, pool, fraction, val_fraction, test_fraction) -> None:
    """Every class with labeled data must keep a patient in the train pool, else no fraction reaches it."""
    all_classes = set().union(*group_classes.values())
    pool_classes = set().union(*(group_classes[g] for ms in pool.values() for g in ms))
    lost = sorted(all_classes - pool_classes)
    if lost:
        n_groups = {c: sum(c in cs for cs in group_classes.values()) for c in lost}
        detail = ", ".join(f"class {c} ({n_groups[c]} patient(s))" for c in lost)
        raise DataError(
            f"label fraction {fraction}: {detail} {'has' if len(lost) == 1 else 'have'} no patient left in the train pool — all went to "
            f"test/val (test_fraction={test_fraction}, val_fraction={val_fraction}). Lower "
            "test_fraction/val_fraction, or add labeled patients of that class."
        )


def _counts(idx, labels, labeled, group_of, sample_classes) -> dict[str, Any]:
    """Samples, patients and per-class counts (multi-label: positives per column) of one split."""
    if labels.ndim == 1:
        classes = sorted({int(y) for y in labels[labeled].tolist()})
    else:
        classes = list(range(labels.shape[1]))
    per_class = dict.fromkeys(classes, 0)
    for i in idx:
        for c in sample_classes[i]:
            per_class[c] += 1
    return {
        "samples": len(idx),
        "groups": len({group_of[i] for i in idx}),
        "labeled": int(labeled[idx].sum()) if len(idx) else 0,
        "per_class": {str(c): v for c, v in per_class.items()},
    }


def _index_array(indices) -> np.ndarray:
    out = np.sort(np.asarray(indices, np.int64))
    out.flags.writeable = False  # The dataclass is frozen; its arrays should be too.
    return out


def open_and_split(data, *, fraction: float, seed: int):
    """(source, manifest or None for unlabeled data, notes): the data checks every trainer that splits
    labels runs, and what `inspect_data` runs, so the two cannot disagree.

    Opens `config.data` (every file, label and patient check of `data/validate.py`), makes the
    label-fraction manifest and checks that every split has every class.
    """
    source = open_from_config(data)
    if not is_labeled(source.labels).any():
        return source, None, notes_of(source)
    accept = bool(data.get("accept_label_warnings", False))
    validate.check_patients_per_class(source, accept)
    manifest = make_manifest(
        source_keys(source),
        source.labels,
        source.groups,
        fraction=fraction,
        seed=seed,
        split_seed=data.split_seed,
        val_fraction=data.val_fraction,
        # The same with and without data.eval_root (it replaces only the test split: `test_source`).
        test_fraction=data.test_fraction,
    )
    notes = notes_of(source) + validate.check_splits(
        manifest, source.class_names, fraction, accept, root=source.root
    )
    return source, manifest, notes


def test_source(data, source, manifest: Manifest) -> SubsetSource:
    """The test split of classification and of pretraining's linear probe: the manifest's carved test
    patients, or, with `data.eval_root`, every labeled image of that folder (read with the training
    data's channels and class names).

    Why only the test split: the manifest (train/val/unlabeled, its hash) must be the same with and
    without an external test set, so a finished run can be re-scored on one (`s4mi_jax.score`) and
    runs with and without it train on the same images.
    """
    if not data.get("eval_root"):
        return SubsetSource(source, manifest.test)
    return labeled_test_folder(
        data.eval_root,
        data,
        source.channels,
        source.class_names,
        multilabel=source.labels.ndim == 2,
    )


def labeled_test_folder(
    root: str,
    data,
    channels: int,
    class_names: Sequence[str],
    *,
    multilabel: bool,
    what: str = "config.data.eval_root",
) -> SubsetSource:
    """The labeled images of the folder `root`, checked against the training data's label kind and
    classes; `what` names the folder in errors (`config.data.eval_root`, `--data_root`)."""
    folder = open_test_folder(root, data, channels, class_names)
    validate.check_test_labels(folder, class_names, multilabel, f"{what}={root}")
    return SubsetSource(folder, np.flatnonzero(is_labeled(folder.labels)))
