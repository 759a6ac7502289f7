"""Classification data: the labeled source, its label-fraction manifest and the train/val/test
sources, checked against what the config expects before anything is written."""

from __future__ import annotations

from typing import Any, NamedTuple

import ml_collections
import numpy as np

from s4mi_jax.core.loop import log
from s4mi_jax.data import manifests
from s4mi_jax.data.sources import SubsetSource
from s4mi_jax.errors import DataError


class Splits(NamedTuple):
    source: Any
    manifest: Any
    train: Any
    val: Any
    test: Any


def load_splits(config: ml_collections.ConfigDict) -> Splits:
    """The labeled source, its manifest and the train/val/test sources (the test split is
    `data.eval_root` when given); validates the data before anything is written."""
    source, manifest, notes = manifests.open_and_split(
        config.data, fraction=config.label_fraction, seed=config.seed
    )
    if manifest is None:
        raise DataError(f"{source.root}: no labels (labels.csv with filename,label is needed).")
    if np.asarray(source.labels).ndim == 1 and len(source.class_names) < 2:
        raise DataError(
            f"{source.root}: every labeled image is class {source.class_names[0]!r}; a classifier "
            "needs at least 2 classes (or name them all in config.data.class_names)."
        )
    for note in notes:
        log(note)
    test = manifests.test_source(config.data, source, manifest)
    return Splits(
        source,
        manifest,
        SubsetSource(source, manifest.train),
        SubsetSource(source, manifest.val),
        test,
    )


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    if labels.ndim == 2:
        return labels.sum(axis=0)
    return np.bincount(labels, minlength=num_classes)


def check_expected(config, source, num_classes: int, multilabel: bool) -> None:
    """`config.data.num_classes` / `multilabel` (set by the paper configs) must match the data."""
    expected = config.data.get("num_classes")
    if expected and expected != num_classes:
        raise DataError(
            f"{source.root}: {num_classes} classes {list(source.class_names)[:12]} but "
            f"config.data.num_classes={expected} (the dataset this config was written for)."
        )
    want = config.data.get("multilabel")
    if want is not None and bool(want) != multilabel:
        kind = "one 0/1 column per class" if want else "a filename,label table"
        raise DataError(
            f"{source.root}: labels.csv is {'multi' if multilabel else 'single'}-label but "
            f"config.data.multilabel={want}; this config expects {kind}."
        )
