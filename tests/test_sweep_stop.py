"""launch/sweep.py as real processes: stopping the sweep stops its cell (SIGTERM, SIGINT, and kill -9 of
the sweep itself), a locked cell is skipped, every cell gets the one compilation cache, and a dry run
piped into `head` ends quietly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from s4mi_jax.core import lifeline, workdir_lock
from tests.conftest import _CACHE
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, "launch/sweep.py"]
CELL = ["--methods=supervised", "--fractions=1.0", "--seeds=0"]


def alive(pid: int) -> bool:
    """Running (a zombie no init reaps counts as gone): /proc where there is one, else kill(pid, 0)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return stat.read_text().rpartition(")")[2].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still running"
        time.sleep(0.2)


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)  # One CPU device, as test_main's runs (they share cache entries).
    return env


_EXEC_WITH_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, getattr(signal, sys.argv[1])); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def with_sigint(disposition: str, argv: list[str]) -> list[str]:
    """`argv` started with SIGINT at `disposition` ("SIG_DFL", "SIG_IGN"; both survive exec). With
    SIG_DFL the sweep gets SIGINT as a terminal's foreground job does: a test run started in the
    background by a shell without job control (`pytest ... &` in a script or a tool's shell) ignores
    SIGINT, every process it starts inherits that, and the sweep keeps ignoring an ignored signal (as
    `nohup` and `&` ask), so the SIGINT test would wait for a cell that trains 100000 steps. A small
    exec wrapper, not `preexec_fn`: Python code between fork and exec of this multithreaded test
    process (JAX threads) can deadlock."""
    return [sys.executable, "-c", _EXEC_WITH_SIGINT, disposition, *argv]


def catches(pid: int, sig: int) -> bool:
    """`pid` has a handler for `sig` (its SigCgt mask in /proc)."""
    return bool(int(_proc_field(pid, "SigCgt"), 16) >> (sig - 1) & 1)


def _start_training_sweep(tmp_path: Path) -> tuple[subprocess.Popen, int, list[str]]:
    """A one-cell sweep whose cell trains "forever"; returns it once the cell logged a step, with the
    cell's PID and the output so far."""
    sweep = subprocess.Popen(
        with_sigint("SIG_DFL", [
            *SWEEP, f"--sweep_dir={tmp_path / 'sweep'}", *CELL, f"--compile_cache={_CACHE}",
            "--cell_override=total_steps=100000", "--cell_override=log_every=1",
            "--cell_override=ckpt_every=100000", "--cell_override=data.verify=False"]),
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines, child = [], None
    for line in sweep.stdout:
        lines.append(line)
        if line.startswith("[1/1] pid "):
            child = int(line.split()[2])
        if line.startswith("step 2/"):
            break
    assert child is not None and alive(child), "".join(lines[-20:])
    return sweep, child, lines


def _proc_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split()[1]
    raise KeyError(name)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_sweep_stops_its_cell(tmp_path, sig):
    sweep, child, lines = _start_training_sweep(tmp_path)
    cell = tmp_path / "sweep" / "supervised" / "frac_1.0" / "seed_0"
    try:
        # The cell runs in its own process group, with the sweep's one compilation cache.
        assert os.getpgid(child) == child != os.getpgid(sweep.pid)
        environ = dict(
            kv.split("=", 1) for kv in Path(f"/proc/{child}/environ").read_text().split("\0") if kv
        )
        assert environ["S4MI_COMPILE_CACHE"] == os.path.abspath(_CACHE)
        assert f"compile cache shared by every cell: {os.path.abspath(_CACHE)}\n" in lines
        assert workdir_lock.holder(str(cell)).startswith(f"{child} on ")
        # A sweep that ignored `sig` would never stop: fail now, not at the hang guard.
        assert catches(sweep.pid, sig), f"the sweep does not catch {signal.Signals(sig).name}"
        sweep.send_signal(sig)
        out, _ = sweep.communicate(timeout=HANG_GUARD_S)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        if alive(child):
            os.kill(child, signal.SIGKILL)
    assert sweep.returncode == 128 + sig, out[-3000:]
    assert not alive(child)  # Reaped by the sweep, not orphaned.
    assert "SIGTERM: saved checkpoint at step" in out, out[-3000:]  # Stopped as a preemption.
    assert f"sweep stopped by {signal.Signals(sig).name}" in out
    assert any(p.name.isdigit() for p in (cell / "checkpoints").iterdir())
    assert not (cell / "results.json").exists() and not (cell / ".lock").exists()


@pytest.mark.slow
def test_kill_9_of_the_sweep_stops_its_cell(tmp_path):
    sweep, child, _ = _start_training_sweep(tmp_path)
    try:
        assert _proc_field(child, "PPid") == str(sweep.pid)
        sweep.send_signal(signal.SIGKILL)  # Nothing in the sweep runs: the kernel tells the cell.
        sweep.wait(timeout=HANG_GUARD_S)
        rest = sweep.stdout.read()  # The cell shares the pipe: EOF once it has exited.
        _wait_gone(child)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
    assert "SIGTERM: saved checkpoint at step" in rest, rest[-3000:]


def test_parent_watch_fallback_stops_an_orphan(tmp_path):
    """Without PR_SET_PDEATHSIG (not Linux): the child's own watch sees its parent die."""
    marker = tmp_path / "got_sigterm"
    child_code = textwrap.dedent(f"""
        import signal, sys, time
        from s4mi_jax.core import lifeline
        def on_term(*_):
            open({str(marker)!r}, "w").close()
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        assert lifeline.watch_parent(interval_s=0.1) is not None
        print("watching", flush=True)
        time.sleep(3600)
    """)
    parent_code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from s4mi_jax.core import lifeline
        child = subprocess.Popen([sys.executable, "-c", {child_code!r}], cwd={str(ROOT)!r},
                                 env=lifeline.child_env(dict(os.environ)))
        print(child.pid, flush=True)
        time.sleep(3600)
    """)
    env = {k: v for k, v in os.environ.items() if k != lifeline.ENV}
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    lines = [parent.stdout.readline(), parent.stdout.readline()]  # The child's pid, its "watching".
    child = int(next(line for line in lines if line.strip().isdigit()))
    try:
        assert "watching\n" in lines and _proc_field(child, "PPid") == str(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=HANG_GUARD_S)
        _wait_gone(child)
    finally:
        parent.kill()
        if alive(child):
            os.kill(child, signal.SIGKILL)
    assert marker.exists()


def _done_sweep(tmp_path: Path) -> list[str]:
    """A one-cell sweep whose cell is finished: it starts nothing and exits 0."""
    cell = tmp_path / "sweep" / "supervised" / "frac_1.0" / "seed_0"
    cell.mkdir(parents=True)
    (cell / "results.json").write_text("{}")
    return [*SWEEP, f"--sweep_dir={tmp_path / 'sweep'}", *CELL, f"--compile_cache={_CACHE}"]


def test_a_sweep_started_with_sigint_ignored_says_so(tmp_path):
    """Started with SIGINT ignored (a script's `&`, a tool's background shell), the sweep keeps ignoring
    it, as asked, but says so at once and how to stop it instead: a SIGINT that does nothing must not
    be silent (the SIGINT stop test waited an hour for such a sweep)."""
    command = _done_sweep(tmp_path)
    for disposition, says in (("SIG_IGN", True), ("SIG_DFL", False)):
        proc = subprocess.run(
            with_sigint(disposition, command), cwd=ROOT, env=_env(), capture_output=True,
            text=True, timeout=HANG_GUARD_S,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        told = [line for line in proc.stderr.splitlines() if "SIGINT" in line]
        if says:
            assert len(told) == 1 and "ignored" in told[0], proc.stderr[-3000:]
            assert "will not stop" in told[0] and "SIGTERM" in told[0], told
        else:
            assert told == [], proc.stderr[-3000:]


def test_the_cell_gets_sigterm_at_its_default_even_if_the_launcher_ignores_it():
    """An ignored SIGTERM survives exec: a cell started by a sweep that was started with SIGTERM
    ignored would ignore the sweep's stop (and PR_SET_PDEATHSIG) until its training loop installs a
    handler, then train on. `preexec_fn` gives the cell SIGTERM at its default: it stops at once."""
    parent = textwrap.dedent("""
        import signal, subprocess, sys
        from s4mi_jax.core import lifeline
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = "import signal; print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)"
        subprocess.run([sys.executable, "-c", code], preexec_fn=lifeline.preexec_fn(), check=True)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", parent], cwd=ROOT, capture_output=True, text=True,
        timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "True\n", (proc.stdout, proc.stderr[-3000:])


def test_locked_cells_are_skipped_and_reported(tmp_path):
    """A cell running elsewhere, and a fine-tuning cell whose pretraining runs elsewhere: both skipped,
    the sweep goes on and exits 1 naming them; nothing trains."""
    sweep_dir = tmp_path / "sweep"
    pretrain = sweep_dir / "pretrain" / "seed_0"
    busy = sweep_dir / "supervised" / "frac_0.1" / "seed_0"
    with workdir_lock.held(str(pretrain)), workdir_lock.held(str(busy)):
        proc = subprocess.run(
            [*SWEEP, f"--sweep_dir={sweep_dir}", "--methods=supervised,finetune", "--fractions=0.1",
             "--seeds=0"],
            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=HANG_GUARD_S,
        )  # fmt: skip
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert lines[1].startswith(f"[1/3] running elsewhere (PID {os.getpid()} on ")
    assert "pretrain/seed_0" in lines[1]
    assert lines[2].startswith(f"[2/3] running elsewhere (PID {os.getpid()} on ")
    assert lines[3].startswith(f"[3/3] needs {pretrain}, skipped: ")
    assert "3 cell(s) skipped" in proc.stderr and "Traceback" not in proc.stderr
    assert not (sweep_dir / "finetune").exists()  # Nothing started.


def test_dry_run_into_a_closed_pipe_ends_quietly(tmp_path):
    """`sweep.py --dry_run | head -n 2`, through a real shell pipe, with more output than a pipe holds."""
    seeds = ",".join(str(s) for s in range(2000))
    cmd = (
        f"{sys.executable} launch/sweep.py --sweep_dir={tmp_path} --methods=supervised "
        f"--fractions=0.01,0.1 --seeds={seeds} --dry_run 2>{tmp_path / 'err'} | head -n 2"
    )
    proc = subprocess.run(
        ["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    assert (tmp_path / "err").read_text() == ""
    # The reader gone before the first line: the same, exit 128 + SIGPIPE.
    sweep = subprocess.Popen(
        [*SWEEP, f"--sweep_dir={tmp_path}", *CELL, "--dry_run"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sweep.stdout.close()
    _, err = sweep.communicate(timeout=HANG_GUARD_S)
    assert sweep.returncode == 128 + signal.SIGPIPE and err == "", err
