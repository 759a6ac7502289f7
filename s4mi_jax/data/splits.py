"""The seeded, order-free ranking that every split and label-fraction manifest is cut from
(`data/manifests.py`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def hash_rank(items: Iterable[str], seed: int | str) -> list[str]:
    """Sorts `items` by SHA-256 of `f"{seed}:{item}"` (ties by the item itself).

    Why a hash and not an RNG permutation: an item's rank depends only on (seed, item), so the order does
    not change with input order, Python's hash seed, or other items being added or removed — and a prefix
    of the ranking taken at a larger size always contains the prefix taken at a smaller one.
    """
    return sorted(items, key=lambda g: (hashlib.sha256(f"{seed}:{g}".encode()).hexdigest(), g))
