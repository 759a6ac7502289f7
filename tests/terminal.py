"""A command run in a real pseudo-terminal, so a test can press Ctrl-C as a user does.

Writing `\\x03` to the terminal makes its line discipline send SIGINT to the foreground process group,
exactly as a keyboard Ctrl-C does (not a `kill` from the test): the handlers, the process group and the
output all behave as they do at a terminal. stdout and stderr arrive merged, as a user sees them.
"""

from __future__ import annotations

import os
import pty
import select
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from tests.helpers import HANG_GUARD_S

CTRL_C = b"\x03"


class Finished(NamedTuple):
    returncode: int  # The exit status, or -signal if a signal ended it.
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
    return keys to type (e.g. CTRL_C). Returns once the command has exited."""
    pid, fd = pty.fork()
    if pid == 0:  # The child: the terminal's session leader and foreground process group.
        try:
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal (it exited).
                break
            if not data:
                break
            chunks.append(data)
            keys = react(b"".join(chunks).decode("utf-8", "replace"))
            if keys:
                os.write(fd, keys)
        else:
            os.kill(pid, 9)
            raise TimeoutError(f"{argv} did not exit within {timeout} s")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    code = os.waitstatus_to_exitcode(status)
    return Finished(code, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n"))


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
