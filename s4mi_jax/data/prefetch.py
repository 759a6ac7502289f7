"""The next batches read, and put on the devices, in a background thread while the step runs.

`core/loop.py` used to read batch k+1 (Grain: host reads, decode, augment, batch) and copy it to the
devices on the loop's own thread, between dispatching step k and step k+1; on a small host that work
and the step's dispatch queue behind each other. Here a thread keeps `depth` batches ahead, already on
the devices.

Exact resume is kept: the thread records the host iterator's state right after each batch it takes,
and `rewound()` (called before a checkpoint is saved) stops the thread, drops the batches not yet
consumed and sets the host iterator back to the state after the last consumed one. The checkpoint then
holds exactly the position an un-prefetched loop would have saved; the dropped batches are read again.

Default depth: 2 on GPU/TPU, 0 (no thread: read and put on the loop's thread) on CPU, where the
"device" is the same cores and a reader thread measurably slowed the default config (BENCHMARKS.md).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_DONE = object()


def default_depth() -> int:
    """2 batches ahead on accelerators, none on a CPU (BENCHMARKS.md, "Input that keeps up")."""
    import jax

    return 0 if jax.devices()[0].platform == "cpu" else 2


class DevicePrefetch:
    """Iterator over `put(batch)` for the batches of `host`, up to `depth` ahead in a thread
    (`depth=0`: no thread, each batch read when asked for; None: `default_depth()`)."""

    def __init__(self, host: Iterator[Any], put: Callable[[Any], Any], depth: int | None = None):
        self.host, self.put = host, put
        self.depth = default_depth() if depth is None else max(0, depth)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stateful = hasattr(host, "get_state") and hasattr(host, "set_state")
        self._consumed_state: Any = host.get_state() if self._stateful else None

    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                batch = next(self.host)
                state = self.host.get_state() if self._stateful else None
                item = (self.put(batch), state)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # StopIteration, a data error: raised in the consumer.
            q.put((_DONE, e))

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(
            target=self._produce, args=(self._queue, self._stop), daemon=True
        )
        self._thread.start()

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> Any:
        if self.depth == 0:
            return self.put(next(self.host))
        if self._thread is None:
            self._start()
        assert self._queue is not None
        batch, state = self._queue.get()
        if batch is _DONE:
            self._join()
            raise state
        self._consumed_state = state
        return batch

    def _join(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread, self._queue = None, None

    def rewound(self) -> Iterator[Any]:
        """Stops the thread and returns the host iterator at the position after the last batch
        consumed (what a checkpoint must save); the next `next()` reads on from there."""
        if self.depth == 0:  # Nothing read ahead: the host iterator is where the loop is.
            return self.host
        self._join()
        if self._stateful:
            self.host.set_state(self._consumed_state)
        return self.host

    def close(self) -> None:
        """Stops the thread; the host iterator is left after the last batch consumed."""
        self.rewound()

    def __enter__(self) -> DevicePrefetch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
