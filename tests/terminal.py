"""A command run in a real pseudo-terminal, so a test can press Ctrl-C as a user does.

Writing `\\x03` to the terminal makes its line discipline send SIGINT to the foreground process group,
exactly as a keyboard Ctrl-C does (not a `kill` from the test): the handlers, the process group and the
output all behave as they do at a terminal. stdout and stderr arrive merged, as a user sees them.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from tests.helpers import HANG_GUARD_S

CTRL_C = b"\x03"


class Finished(NamedTuple):
    returncode: int  # The exit status (128 + signal if a signal ended it).
    output: str  # stdout and stderr as the terminal showed them.


def run_in_terminal(
    argv: list[str],
    react: Callable[[str], bytes | None],
    *,
    cwd: str,
    env: dict[str, str],
    timeout: float = HANG_GUARD_S,
) -> Finished:
    """Runs `argv` in a new pseudo-terminal; after each chunk of output, `react(output so far)` may
    return keys to type (e.g. CTRL_C). Returns once the command has exited.

    The command is started by util-linux `setsid --wait --ctty` in a new session whose controlling
    terminal is the pseudo-terminal, so the command is its foreground process group. Started through
    `subprocess` (fork and exec in C), not `pty.fork()`: forking a multithreaded test process (JAX
    threads) and running Python in the child can deadlock."""
    setsid = shutil.which("setsid")
    if setsid is None:
        raise RuntimeError("util-linux setsid is needed to run a command in a terminal")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [setsid, "--wait", "--ctty", *argv],
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal closed it (the command exited).
                break
            if not data:
                break
            chunks.append(data)
            keys = react(b"".join(chunks).decode("utf-8", "replace"))
            if keys:
                os.write(master, keys)
        else:
            proc.kill()
            raise TimeoutError(f"{argv} did not exit within {timeout} s")
        code = proc.wait(timeout=timeout)
    finally:
        os.close(master)
    # `setsid --wait` returns the command's status; a signal's death reads as 128 + signal there.
    return Finished(code, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n"))


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
