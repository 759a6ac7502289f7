"""The device prefetcher: same batches in the same order, and a rewind that checkpoints exactly the
batches consumed (the loop's exact-resume contract; end to end in test_resume / test_fault_injection)."""

from __future__ import annotations

import grain
import numpy as np
import pytest

from s4mi_jax.data.prefetch import DevicePrefetch


def _host():
    ds = grain.MapDataset.range(1000).shuffle(seed=0).map(lambda i: {"x": np.int64(i)})
    return iter(ds.batch(4).to_iter_dataset())


def test_same_batches_in_order_and_rewind_is_the_consumed_position():
    reference = [next(it)["x"] for it in [_host()] for _ in range(12)]
    with DevicePrefetch(_host(), lambda b: {"x": b["x"] * 1}, depth=3) as batches:
        got = [next(batches)["x"] for _ in range(5)]
        host = batches.rewound()  # The thread had read ahead; the state is after batch 5.
        state = host.get_state()
        got += [next(batches)["x"] for _ in range(7)]
    np.testing.assert_array_equal(np.stack(got), np.stack(reference))
    resumed = _host()
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["x"], reference[5])


def test_errors_of_the_reader_reach_the_consumer():
    def broken():
        yield {"x": np.zeros(2)}
        raise ValueError("bad image 7")

    batches = DevicePrefetch(broken(), lambda b: b)
    next(batches)
    with pytest.raises(ValueError, match="bad image 7"):
        next(batches)
    batches.close()


def test_depth_zero_reads_on_the_callers_thread_and_needs_no_rewind():
    host = _host()
    batches = DevicePrefetch(host, lambda b: b, depth=0)
    first = next(batches)["x"]
    assert batches._thread is None and batches.rewound() is host
    np.testing.assert_array_equal(next(_host())["x"], first)
    assert DevicePrefetch(_host(), lambda b: b).depth == 0  # The default on a CPU.
