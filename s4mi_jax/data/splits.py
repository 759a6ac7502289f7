"""Deterministic, class-stratified, patient-grouped held-out splits.

Why grouped: chest X-ray sets hold several images per patient; a split by image leaks patients into the test
set and inflates every metric. Why stratified: a small test split must still contain every class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np


def hash_rank(items: Iterable[str], seed: int | str) -> list[str]:
    """Sorts `items` by SHA-256 of `f"{seed}:{item}"` (ties by the item itself).

    Why a hash and not an RNG permutation: an item's rank depends only on (seed, item), so the order does
    not change with input order, Python's hash seed, or other items being added or removed — and a prefix
    of the ranking taken at a larger size always contains the prefix taken at a smaller one.
    """
    return sorted(items, key=lambda g: (hashlib.sha256(f"{seed}:{g}".encode()).hexdigest(), g))


def holdout_split(
    labels: np.ndarray,
    fraction: float,
    seed: int,
    groups: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns sorted (keep, held_out) indices; held_out is ~`fraction` of each class's labeled groups.

    A group (patient) goes wholly to one side, unlabeled images included (so no held-out patient is seen
    in pretraining either); its class is its first labeled image's label; groups with no labeled image stay
    in `keep`. Each class with at least two groups gets at least one held-out group.
    """
    labels = np.asarray(labels)
    groups = list(groups) if groups is not None else [str(i) for i in range(len(labels))]
    group_label: dict[str, int] = {}
    for g, y in zip(groups, labels.tolist(), strict=True):
        if y >= 0:
            group_label.setdefault(g, y)
    held_groups: set[str] = set()
    for cls in sorted(set(group_label.values())):
        # Rank groups by a seeded hash: stable under adding/removing other groups or classes.
        members = hash_rank((g for g, y in group_label.items() if y == cls), seed)
        n = int(round(fraction * len(members)))
        if len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        held_groups.update(members[:n])
    held = np.array([g in held_groups for g in groups])
    return np.flatnonzero(~held), np.flatnonzero(held)
