"""Grain input pipelines: per-process shard -> seeded shuffle -> random views -> batch -> prefetch.

The training iterator is infinite (shuffle, then repeat: a fresh order every epoch) and checkpointable
(`get_state`/`set_state`, saved by Orbax with the model), so a resumed run sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grain
import jax
import ml_collections
import numpy as np

from s4mi_jax.data import augment


class Prepared:
    """`source` with a transform's deterministic `prepare` applied once per record and kept: a small
    dataset is decoded and resized in its first epoch only. On a 2-core CPU, decoding PNGs while the
    step runs slowed the default on-device SimCLR step by 115 ms (e2e 0.77 of the step speed; 0.94
    from pre-decoded arrays; BENCHMARKS.md)."""

    def __init__(self, source, prepare: Callable[[dict], dict]):
        self._source, self._prepare, self._kept = source, prepare, {}

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        record = self._kept.get(index)
        if record is None:  # Two reader threads may both prepare it once: same values.
            record = self._kept[index] = self._prepare(self._source[index])
        return record


def keep_prepared(source, transform, num_workers: int, max_bytes: int):
    """`Prepared(source, transform.prepare)` when the transform has a deterministic part, the records
    are read in this process (`num_workers=0`; worker processes would each keep a copy) and all of
    them, measured on the first, fit in `max_bytes`; else `source` unchanged."""
    prepare = getattr(transform, "prepare", None)
    if prepare is None or num_workers > 0 or max_bytes <= 0 or len(source) == 0:
        return source
    first = prepare(source[0])
    per_record = sum(np.asarray(v).nbytes for v in first.values())
    return Prepared(source, prepare) if len(source) * per_record <= max_bytes else source


def train_iterator(
    source,
    transform: grain.transforms.RandomMap,
    *,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    keep_in_memory_bytes: int = 0,
) -> grain.DatasetIterator:
    """Infinite iterator of per-process batches of `batch_size` (= global batch / process count).

    One global stream (shuffle, repeat, augment: all keyed by the element's global position), of which
    process p reads and augments only elements p, p+n, p+2n, ... So global batch k holds the same images
    with the same augmentations on any number of processes (only their row order differs), a run can
    resume on another process count, and the iterator position (batches taken) is the same on every
    process. `keep_in_memory_bytes`: see `keep_prepared` (the values are the same either way).
    """
    source = keep_prepared(source, transform, num_workers, keep_in_memory_bytes)
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    ds = ds.random_map(transform, seed=seed)
    ds = ds[process_index::process_count]  # Lazy: each process touches only its own elements.
    ds = ds.batch(batch_size, drop_remainder=True)  # Batch before mp_prefetch (grain#1129).
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * batch_size))
    if num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it)


def run_iterator(
    config: ml_collections.ConfigDict, source, transform: grain.transforms.RandomMap, **kw
) -> grain.DatasetIterator:
    """`train_iterator` of a run: this process's share of `config.batch_size`, `config.seed`,
    `config.data.num_workers` and `keep_in_memory_mb`; `kw` overrides (another batch size or seed)."""
    args = dict(
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
        num_workers=config.data.num_workers,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        keep_in_memory_bytes=int(config.data.get("keep_in_memory_mb", 0) * 2**20),
    )
    return train_iterator(source, transform, **{**args, **kw})


def eval_batches(
    source,
    cfg: ml_collections.ConfigDict,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    view: Callable[[np.ndarray, ml_collections.ConfigDict], np.ndarray] = augment.eval_view,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `source` in fixed-shape global batches; this process yields its rows.

    The last batch is padded; `mask` marks real rows, so results never depend on padding and every batch
    has one shape (one compilation).
    """
    local = batch_size // process_count
    for start in range(0, len(source), batch_size):
        rows = range(start + process_index * local, start + (process_index + 1) * local)
        images, labels, mask = [], [], []
        for i in rows:
            real = i < len(source)
            rec = source[i if real else 0]
            images.append(view(rec["image"], cfg))
            labels.append(rec["label"])
            mask.append(real)
        yield {
            "image": np.stack(images),
            "label": np.asarray(labels, np.int32),
            "mask": np.asarray(mask, bool),
        }
