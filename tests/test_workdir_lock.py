"""One run per workdir (core/workdir_lock.py): a real second `main` on a locked workdir is refused, a
kill -9 leaves no lock, and a run that ends leaves the workdir as it found it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from s4mi_jax.core import workdir_lock
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_second_acquire_is_refused_naming_the_holder_and_release_tidies(tmp_path):
    workdir = tmp_path / "a" / "b"
    lock = workdir_lock.acquire(str(workdir))
    assert lock is not None and (workdir / ".lock").read_text().startswith(f"{os.getpid()} on ")
    with pytest.raises(
        workdir_lock.WorkdirLocked, match=rf"{workdir} is in use: PID {os.getpid()} on "
    ):
        workdir_lock.acquire(str(workdir))  # Another open file description: flock refuses it.
    assert workdir_lock.holder(str(workdir)).startswith(str(os.getpid()))
    # Another process index of the same job has its own file: not blocked.
    other = workdir_lock.acquire(str(workdir), process_index=1)
    assert (workdir / ".lock.process_1").exists()
    other.release()
    lock.release()
    assert not (tmp_path / "a").exists()  # The folders it created, empty again, are gone.
    assert workdir_lock.holder(str(workdir)) is None


def test_existing_workdir_is_left_byte_for_byte(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text("{}")
    before = _files(tmp_path)
    with workdir_lock.held(str(tmp_path / "w")) as lock:
        assert lock is not None and workdir_lock.holder(str(tmp_path / "w"))
    assert _files(tmp_path) == before


def test_workdir_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "w").write_text("x")
    with pytest.raises(workdir_lock.S4MIError, match="cannot write to workdir"):
        workdir_lock.acquire(str(tmp_path / "w"))


def test_object_store_paths_are_not_locked():
    assert workdir_lock.acquire("gs://bucket/run") is None
    assert workdir_lock.holder("gs://bucket/run") is None


def test_kill_9_leaves_no_lock(tmp_path):
    """A real holder process killed with SIGKILL: its lock file stays, its lock does not."""
    workdir = tmp_path / "w"
    code = textwrap.dedent(f"""
        import sys, time
        from s4mi_jax.core import workdir_lock
        workdir_lock.acquire({str(workdir)!r})
        print("locked", flush=True)
        time.sleep(3600)
    """)
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert workdir_lock.holder(str(workdir)).startswith(f"{holder.pid} on ")
        with pytest.raises(workdir_lock.WorkdirLocked, match=f"PID {holder.pid}"):
            workdir_lock.acquire(str(workdir))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=HANG_GUARD_S)
    assert (workdir / ".lock").exists() and workdir_lock.holder(str(workdir)) is None
    with workdir_lock.held(str(workdir)) as lock:  # The stale file is taken over.
        assert lock is not None
    assert not (workdir / ".lock").exists()


def test_second_main_on_a_locked_workdir_exits_2_with_one_line(tmp_path):
    """The real command, while this process holds the workdir (as a running first copy would)."""
    workdir = tmp_path / "w"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    with workdir_lock.held(str(workdir)):
        proc = subprocess.run(
            [sys.executable, "-m", "s4mi_jax.main", "--config=configs/simclr_chest.py:local",
             f"--workdir={workdir}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S,
        )  # fmt: skip
        assert os.listdir(workdir) == [".lock"]  # Nothing written by the refused run.
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert str(workdir) in errors[0] and f"PID {os.getpid()} on " in errors[0], errors[0]
    assert not workdir.exists()  # Released: the folder the lock made is gone.
