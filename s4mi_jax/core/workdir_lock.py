"""One run per workdir: an exclusive `flock` on a lock file inside it, held while the run lives.

Two processes training into one workdir (a sweep cell started twice, a rerun while the first still runs)
would interleave checkpoints and metrics. The kernel drops a `flock` when its process ends, however it
ends (kill -9 included), so a crashed run never leaves a lock behind; a lock file left by a kill -9 is
just an unlocked file the next run takes over.

- The file is `<workdir>/.lock` for process 0 of a run and `.lock.process_<i>` for the others: the
  processes of one multi-process job (which may share the workdir) do not block each other, and a second
  job on the same workdir is refused by process 0's lock (by every process's, on a shared file system).
- It holds the holder's PID and host, so a refused run can say who holds it.
- A run that ends normally removes the file (while still holding the lock), and the folders it created
  if they are still empty: a run refused for bad input leaves no workdir behind, and an existing workdir
  is left byte for byte as it was. Taking the lock checks that the locked file is still the one at the
  path, so a run that raced a removal retries instead of locking an unlinked file.
- Object-store paths (`gs://...`) cannot be locked and are not; neither are file systems without
  `flock` support (a warning, then the run goes on).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator

from s4mi_jax.errors import S4MIError

LOCK_NAME = ".lock"


class WorkdirLocked(S4MIError):
    """Another live process holds the workdir's lock."""

    def __init__(self, workdir: str, holder: str | None):
        self.workdir, self.holder = workdir, holder
        who = f"PID {holder}" if holder else "another process"
        super().__init__(
            f"workdir {workdir} is in use: {who} holds its lock {lock_path(workdir)} (a run still "
            "going, e.g. another copy of this command); stop it first, or use another --workdir."
        )


def lock_path(workdir: str, process_index: int = 0) -> str:
    """The lock file of `process_index` in `workdir`."""
    name = LOCK_NAME if process_index == 0 else f"{LOCK_NAME}.process_{process_index}"
    return os.path.join(workdir, name)


def _lockable(workdir: str) -> bool:
    return "://" not in workdir


def _missing_parents(path: str) -> list[str]:
    """The folders `os.makedirs(path)` will create, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _read_holder(path: str) -> str | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return text or None


def holder(workdir: str, process_index: int = 0) -> str | None:
    """Who holds `workdir`'s lock ("PID on HOST", or "unknown"), None when nobody: writes nothing."""
    import fcntl

    path = lock_path(workdir, process_index)
    if not _lockable(workdir):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(path) or "unknown"
    except OSError:
        return None
    finally:
        os.close(fd)  # Also drops the lock this probe may just have taken.
    return None


class WorkdirLock:
    """A held lock (see `acquire`); `release()` gives it up and tidies what it created."""

    def __init__(self, path: str, fd: int, created: list[str]):
        self.path, self._fd, self._created = path, fd, created

    def release(self) -> None:
        """Removes the lock file while holding it, drops the lock, removes the folders made for it
        that are still empty."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
        for folder in self._created:
            try:
                os.rmdir(folder)
            except OSError:  # Not empty: the run wrote there.
                break


def acquire(workdir: str, process_index: int = 0) -> WorkdirLock | None:
    """Takes `workdir`'s lock for this process (creating the folder if needed) without waiting.

    Raises WorkdirLocked when another process holds it, S4MIError when the workdir cannot be created;
    returns None where locking is not possible (an object store, a file system without flock)."""
    import fcntl

    if not _lockable(workdir):
        return None
    created = _missing_parents(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise S4MIError(f"cannot write to workdir {workdir}: {e}") from None
    path = lock_path(workdir, process_index)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise S4MIError(f"cannot write to workdir {workdir}: {e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirLocked(workdir, _read_holder(path)) from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                from s4mi_jax.core.loop import log

                log(f"warning: cannot lock {path} ({e.strerror}); running without a workdir lock")
                return None
            raise S4MIError(f"cannot lock workdir {workdir}: {e}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # The holder removed the file between our open and our lock: take the new one.
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
    return WorkdirLock(path, fd, created)


@contextlib.contextmanager
def held(workdir: str, process_index: int = 0) -> Iterator[WorkdirLock | None]:
    """`acquire` ... `release`: the lock for the duration of a `with` block (e.g. one `main`)."""
    lock = acquire(workdir, process_index)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
