"""Ctrl-C and SIGTERM: stop at the end of the current step, save, say so in one line.

A researcher presses Ctrl-C (SIGINT); a TPU VM preemption or `kill` sends SIGTERM. Both mean the same:
finish the step that is running, save a checkpoint, print one line, exit (130 for Ctrl-C, as shells
report it; 0 for SIGTERM, a preemption the launcher resumes). A second Ctrl-C exits at once without
saving: the checkpoints already committed are intact (Orbax writes a step to a temporary folder and
renames it when complete; a half-written one is never taken for a checkpoint).

Outside the training loop Ctrl-C raises `KeyboardInterrupt` as usual; the commands catch it and print
one line instead of a traceback. While a command is still importing (JAX takes seconds), nothing has been
written yet: `quiet_until_started` makes a Ctrl-C then exit with one line.

This module imports only the standard library, so a command can install it before importing JAX.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C.


def quiet_until_started(program: str) -> None:
    """Until `started()`: a Ctrl-C prints one line and exits 130 (nothing was written yet)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        sys.stderr.write(f"{program}: interrupted while starting; nothing was written.\n")
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # Not the main thread (imported by a test runner's worker): leave it.
        pass


def started() -> None:
    """Ctrl-C raises KeyboardInterrupt again (the command's own `except KeyboardInterrupt` runs)."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:
        pass


class StopFlag:
    """Turns SIGTERM and a first Ctrl-C into a flag the training loop checks between steps; a second
    Ctrl-C exits at once. `signum` is the signal that raised it (None: not raised).

    With `forward_to_sigterm` (runs under jax.distributed), Ctrl-C is passed on as SIGTERM to this
    process, where JAX's preemption service makes every process stop at the same step (a save is
    collective); SIGTERM itself is left to that service."""

    def __init__(self, *, forward_to_sigterm: bool = False, announce: bool = True):
        self.signum: int | None = None
        self._forward, self._announce = forward_to_sigterm, announce
        self._sigints = itertools.count(1)
        self._previous: dict[int, object] = {}

    @property
    def raised(self) -> bool:
        return self.signum is not None

    @property
    def interrupted(self) -> bool:
        """The stop was a Ctrl-C (exit 130), not SIGTERM."""
        return self.signum == signal.SIGINT

    def __enter__(self) -> StopFlag:
        signals = (signal.SIGINT,) if self._forward else (signal.SIGTERM, signal.SIGINT)
        for s in signals:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # Not the main thread (some test runners): no handler.
                pass
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        # Python may run this handler again inside itself (a second Ctrl-C between two of its
        # bytecodes): count first, atomically (`next` of a C iterator), then act on the count.
        nth = next(self._sigints) if signum == signal.SIGINT else 0
        # os.write, not print: a handler that prints while the main thread prints raises
        # "reentrant call" inside the buffered writer.
        if nth > 1:
            os.write(
                2,
                b"interrupted again: exiting now without saving; the checkpoints already saved are "
                b"intact (rerun the same command to resume from the latest).\n",
            )
            os._exit(EXIT_INTERRUPTED)
        if self.signum is None or signum == signal.SIGINT:
            self.signum = signum
        if signum == signal.SIGINT and self._announce:
            os.write(
                1,
                b"interrupt: finishing the current step and saving a checkpoint (Ctrl-C again to "
                b"exit at once, without saving).\n",
            )
        if self._forward and signum == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            if previous is not None:  # None: a handler installed outside Python; leave ours.
                signal.signal(s, previous)
        self._previous = {}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, raised once the checkpoint of the current step has been saved."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step

    def message(self) -> str:
        return (
            f"interrupted: saved checkpoint at step {self.step}; rerun the same command to resume."
        )
