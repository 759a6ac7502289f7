"""Fault injection: a training process SIGKILLed at random steps and resumed ends where an uninterrupted run does.

SIGKILL gives the process no chance to save (unlike SIGTERM, see test_main.py): what survives is only what
was already on disk, i.e. the latest *complete* Orbax checkpoint (a save still in flight is a
`<step>.orbax-checkpoint-tmp` folder, never taken for a checkpoint) and metrics.jsonl, whose lines after that
checkpoint the restart must drop.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from s4mi_jax.core import metric_writer
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
TOTAL = 40
CKPT_EVERY = 4
KILLS = 3
SEED = 1234
TIMEOUT_S = HANG_GUARD_S  # Per process: a hang guard (a start costs ~10 s idle, minutes loaded).
TOL = 1e-6
ARGS = (
    "--config=configs/simclr_chest.py:local",
    f"--config.total_steps={TOTAL}",
    "--config.log_every=1",
    f"--config.ckpt_every={CKPT_EVERY}",
    "--config.optim.name=sgd",
    "--config.optim.momentum=0.9",
    "--config.eval.linear_probe=False",
    "--config.data.verify=False",
)
STEP_LINE = re.compile(r"^step (\d+)/(\d+) \| loss ")
RESUMED_LINE = re.compile(r"^resumed from step (\d+) in ")


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # One CPU device, as a user's laptop.
    # Share the tests' persistent compile cache: every restart then skips compilation (~30 s -> ~10 s).
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        env.update(
            JAX_COMPILATION_CACHE_DIR=cache,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


def _run(
    workdir: Path, log: Path, kill_at: int | None = None, extra: tuple[str, ...] = ()
) -> tuple[list[str], int]:
    """Runs the command, reading its stdout line by line; SIGKILLs it right after `step kill_at/...`.

    Returns (stdout lines, return code). A watchdog kills a hung process, so the test fails, not hangs.
    """
    with open(log, "a") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "s4mi_jax.main", *ARGS, *extra, f"--workdir={workdir}"],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,  # A file, not a pipe: a full stderr pipe could block the child.
            text=True,
        )
        timed_out = threading.Event()

        def on_timeout():
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(TIMEOUT_S, on_timeout)
        watchdog.start()
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                m = STEP_LINE.match(line)
                if kill_at is not None and m and int(m.group(1)) == kill_at:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            proc.stdout.close()
            returncode = proc.wait(timeout=TIMEOUT_S)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not timed_out.is_set(), f"no exit after {TIMEOUT_S}s: {lines[-5:]}"
    return lines, returncode


def _complete_steps(workdir: Path) -> list[int]:
    """Checkpoint steps that were fully written (Orbax renames `<step>.orbax-checkpoint-tmp` when done)."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _logged_steps(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for m in map(STEP_LINE.match, lines) if m]


def _resumed_from(lines: list[str]) -> int | None:
    found = [int(m.group(1)) for m in map(RESUMED_LINE.match, lines) if m]
    assert len(found) <= 1, lines
    return found[0] if found else None


def _metrics(workdir: Path) -> list[dict]:
    text = (workdir / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # Every line must be valid JSON.


def _final_checkpoint(workdir: Path) -> tuple[dict, dict]:
    """(raw state as nested dicts of arrays, saved data-iterator position) of step TOTAL."""
    directory = workdir / "checkpoints"
    manager = ocp.CheckpointManager(directory)
    try:
        assert manager.latest_step() == TOTAL
        args = ocp.args.Composite(state=ocp.args.StandardRestore())  # No target: nested dicts.
        state = manager.restore(TOTAL, args=args)["state"]
    finally:
        manager.close()
    position = directory / str(TOTAL) / "data_iter" / "process_0-of-1.json"
    return jax.device_get(state), json.loads(position.read_text())


def _flat(tree) -> dict[str, np.ndarray]:
    return {
        jax.tree_util.keystr(path): np.asarray(x)
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _next_kill(rng: random.Random, kind: str, resumed: int) -> int:
    """A step 2-3 intervals past `resumed`: right after a checkpoint step's log line, or between two.

    2 intervals + 1 at least, so that even with a save in flight the kill leaves a newer checkpoint than
    `resumed` (see the bound in the test) and every kill moves the run forward.
    """
    if kind == "at_checkpoint":
        step = resumed + 3 * CKPT_EVERY
    else:
        step = resumed + 2 * CKPT_EVERY + rng.randint(1, CKPT_EVERY - 1)
    return min(step, TOTAL - 1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    log = tmp / "stderr.log"
    lines, rc = _run(tmp / "w", log)
    assert rc == 0, log.read_text()[-3000:]
    assert _logged_steps(lines) == list(range(1, TOTAL + 1))
    return tmp / "w"


@pytest.mark.slow
@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_sigkill_at_random_steps_then_resume_matches_uninterrupted_run(
    tmp_path, reference, async_save
):
    log = tmp_path / "stderr.log"
    extra = (f"--config.checkpoint_async={async_save}",)

    rng = random.Random(SEED)
    kinds = ["at_checkpoint", "between"]
    kinds += [rng.choice(["at_checkpoint", "between"]) for _ in range(KILLS - 2)]
    rng.shuffle(kinds)
    workdir = tmp_path / "killed"
    resumed = 0  # Step the next process starts from.
    history = []  # (kind, started at, killed after, latest complete checkpoint then).
    for kind in [*kinds, None]:  # None: the last process runs to the end.
        kill_at = None if kind is None else _next_kill(rng, kind, resumed)
        assert kill_at is None or kill_at > resumed
        before = _complete_steps(workdir)
        lines, rc = _run(workdir, log, kill_at, extra)
        history.append((kind, resumed, kill_at))
        where = f"{history}: {lines[-5:]}"

        # It resumed from the latest complete checkpoint, and continued at the step after it.
        assert _resumed_from(lines) == (before[-1] if before else None), where
        logged = _logged_steps(lines)
        assert logged and logged[0] == resumed + 1, where
        assert logged == list(range(resumed + 1, logged[-1] + 1)), where

        if kill_at is None:
            assert rc == 0, log.read_text()[-3000:]
            assert logged[-1] == TOTAL, where
            break
        assert rc == -signal.SIGKILL, f"{where}; {log.read_text()[-3000:]}"
        assert logged[-1] == kill_at, where
        # The killed process had logged past its checkpoint: the restart has metrics lines to drop.
        assert f'{{"step": {kill_at}, ' in (workdir / "metrics.jsonl").read_text(), where
        steps = _complete_steps(workdir)
        previous, resumed = resumed, (steps[-1] if steps else 0)
        history[-1] += (resumed,)
        # Little is lost. Saves are async and each waits for the previous one to finish, so a save is in
        # flight most of the time (on a loaded CPU a save outlasts a few tiny steps). A kill after step k's
        # log line can land while save(k) waits for save(k - interval) (k a checkpoint step), or while the
        # newest checkpoint is still being written: the restart must then use the one before, so up to the
        # steps since the newest started checkpoint plus one interval are lost, never more.
        # With synchronous saves (config.checkpoint_async=False) at most one interval is lost.
        newest_started = (kill_at - 1) // CKPT_EVERY * CKPT_EVERY
        bound = newest_started - CKPT_EVERY if async_save else kill_at - CKPT_EVERY
        assert resumed >= bound, where
        # Each kill left a newer checkpoint than the process started from: the run moves forward.
        assert resumed > previous, where
        assert resumed < TOTAL, where  # The process was killed before finishing.

    print("(kind, started at, killed after, then latest checkpoint):", history)  # Shown on failure.
    # Same final train state (params, BatchNorm statistics, optimizer state, step, RNG) and data position.
    state_ref, iter_ref = _final_checkpoint(reference)
    state, iter_ = _final_checkpoint(workdir)
    assert iter_ == iter_ref
    flat_ref, flat = _flat(state_ref), _flat(state)
    assert flat.keys() == flat_ref.keys()
    assert any("opt_state" in k for k in flat) and any("model_state" in k for k in flat)
    for key, value in flat_ref.items():
        np.testing.assert_allclose(flat[key], value, rtol=0, atol=TOL, err_msg=key)

    # Every step logged exactly once, with the uninterrupted run's loss.
    rows = _metrics(workdir)
    rows_ref = _metrics(reference)
    assert [r["step"] for r in rows] == list(range(1, TOTAL + 1)), history
    assert [r["step"] for r in rows_ref] == list(range(1, TOTAL + 1))
    np.testing.assert_allclose(
        [r["train/loss"] for r in rows], [r["train/loss"] for r in rows_ref], rtol=0, atol=TOL
    )
    assert (workdir / "results.json").exists()


def test_write_json_crash_midway_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    old = {"accuracy": 0.5, "step": 10}
    metric_writer.write_json(str(path), old)
    old_text = path.read_text()

    def dump_half_then_crash(obj, f, **kwargs):
        text = json.dumps(obj, **kwargs)
        f.write(text[: len(text) // 2])
        f.flush()
        raise OSError("simulated crash (disk full) in the middle of the write")

    with monkeypatch.context() as m:
        m.setattr(metric_writer.json, "dump", dump_half_then_crash)
        with pytest.raises(OSError, match="simulated crash"):
            metric_writer.write_json(str(path), {"accuracy": 0.9, "step": 20, "note": "x" * 1000})

    # The real file is untouched and the half-written temp file is cleaned up.
    assert path.read_text() == old_text and json.loads(old_text) == old
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    # The next write replaces it completely and leaves no temp file behind.
    new = {"accuracy": 0.9, "step": 20}
    metric_writer.write_json(str(path), new)
    assert json.loads(path.read_text()) == new
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
