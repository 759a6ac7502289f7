"""A child run that stops when the launcher that started it dies (`launch/sweep.py` and its cells).

A launcher stopped by a signal it can catch stops its child itself; one killed outright (kill -9, the
OOM killer) cannot, and its child would go on training as an orphan. Two ways the child notices:

- Linux: the launcher starts the child with `prctl(PR_SET_PDEATHSIG, SIGTERM)` (`preexec_fn()`): the
  kernel sends SIGTERM the moment the launcher dies.
- Anywhere: the launcher puts its PID in `S4MI_PARENT_PID`; the child's `watch_parent()` polls its
  parent PID and sends itself SIGTERM once that parent is gone (re-parented to init or a subreaper).

Either way the run gets SIGTERM, which it handles as a preemption: it saves a checkpoint and exits, so
the next launch resumes it. Until its training loop handles SIGTERM, the child has it at the default
action, whatever the launcher inherited: a stop that comes while it starts ends it there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Callable

ENV = "S4MI_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable | None:
    """libc's prctl (Linux only), loaded in the launcher: a preexec_fn should not load libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def preexec_fn(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """For `subprocess.Popen(preexec_fn=...)`: the child gets its own process group (a Ctrl-C at the
    terminal reaches the launcher, which stops the child itself), `sig` at its default action and, on
    Linux, `sig` when the launcher dies. A launcher that died before this ran is caught by comparing
    the parent PID.

    The default action: an ignored signal stays ignored across exec, so a launcher started with SIGTERM
    ignored would start children deaf to its own stop (and to the kernel's) until their training loop
    handles SIGTERM; a stop that came earlier would be lost and the child would train on. At its
    default, SIGTERM ends a child that is still starting at once (nothing to save yet)."""
    prctl = _prctl()
    launcher = os.getpid()

    def setup() -> None:
        os.setpgid(0, 0)
        signal.signal(sig, signal.SIG_DFL)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != launcher:  # Died between fork and prctl: nobody would signal us.
            os.kill(os.getpid(), sig)

    return setup


def child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` plus this launcher's PID, for the child's `watch_parent()`."""
    return {**env, ENV: str(os.getpid())}


def watch_parent(interval_s: float = 2.0, sig: int = signal.SIGTERM) -> threading.Thread | None:
    """If started by a launcher (`S4MI_PARENT_PID`), a daemon thread that sends this process `sig`
    once that launcher is no longer its parent. Returns the thread (None: not a launcher's child)."""
    try:
        parent = int(os.environ.get(ENV, ""))
    except ValueError:
        return None
    if os.getppid() != parent:  # Started by something else that copied the environment: no watch.
        return None
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(interval_s):
            if os.getppid() != parent:
                os.kill(os.getpid(), sig)
                return

    thread = threading.Thread(target=watch, name="s4mi-parent-watch", daemon=True)
    thread.stop = stop  # type: ignore[attr-defined]
    thread.start()
    return thread
