"""Multi-process runs on `jax.distributed` over 127.0.0.1: 2 processes x 4 simulated CPU devices.

The real command (`python -m s4mi_jax.main`) runs in every process, as on a TPU pod or a GPU cluster.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from s4mi_jax.core import optim, sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.data import augment, pipeline
from s4mi_jax.models.simclr import build_simclr_model
from s4mi_jax.trainers import pretrain
from tests.conftest import _CACHE
from tests.helpers import HANG_GUARD_S, local_config, max_abs_diff

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT = 5  # --heartbeat_timeout for the kill test: a dead peer stops the job after about this.
# float64 and SGD: 1 x 8 and 2 x 4 devices then agree to ~1e-15 (see test_sharding.py).
EXACT = [
    "--config=configs/simclr_chest.py:local",
    "--config.model.dtype=float64",
    "--config.optim.name=sgd",
    "--config.data.verify=False",
    "--config.log_every=1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, x64: bool = False) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(
        JAX_COMPILATION_CACHE_DIR=os.path.abspath(_CACHE),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        PYTHONUNBUFFERED="1",
    )
    if x64:
        env["JAX_ENABLE_X64"] = "1"
    return env


def _start(args, *, devices=4, process_id=None, port=None, x64=False, heartbeat=30):
    cmd = [sys.executable, "-m", "s4mi_jax.main", *args]
    if process_id is not None:
        cmd += [
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={process_id}",
            f"--heartbeat_timeout={heartbeat}",
            "--initialization_timeout=600",  # Both processes start and import: minutes when loaded.
        ]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_env(devices, x64),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _start_pair(args, **kw):
    port = _free_port()
    return [_start(args, process_id=i, port=port, **kw) for i in range(2)]


def _finish(procs, timeout=HANG_GUARD_S):  # A hang guard; a loaded 2-core machine needs minutes.
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return outs


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _restore(workdir, config, data_iter=None):
    mesh = sharding.make_mesh(config.mesh)
    tx = optim.make_optimizer(config.optim, lambda s: 0.0)
    _, _, abstract = train_state.initializer(
        lambda rngs: build_simclr_model(config.model, 1, rngs), tx, config.seed, mesh
    )
    ckpt = Checkpointer(str(workdir / "checkpoints"))
    state = ckpt.restore(abstract, data_iter)
    ckpt.close()
    return jax.device_get(state)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    """2 processes x 4 devices == 1 process x 8 devices: losses, metrics, parameters, probe."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*EXACT, "--config.total_steps=3"]
    procs = [_start([*args, f"--workdir={one}"], devices=8, x64=True)]
    procs += _start_pair([*args, f"--workdir={two}"], x64=True)
    outs = _finish(procs)
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "8 cpu device(s) in 2 process(es)" in outs[1][0]
    # Only process 0 prints progress and writes files (Gloo's own connection lines aside).
    assert "step 1/3" in outs[1][0] and "step" not in outs[2][0] and "done" not in outs[2][0]

    rows_one, rows_two = _rows(one), _rows(two)
    assert [r["step"] for r in rows_two] == [1, 2, 3, 3]  # Logged once, not once per process.
    for a, b in zip(rows_one, rows_two, strict=True):
        for key in a:
            if key != "train/images_per_sec":
                np.testing.assert_allclose(a[key], b[key], rtol=1e-10, err_msg=key)
    assert rows_one[0]["train/loss"] != rows_one[2]["train/loss"]
    results = json.loads((two / "results.json").read_text())
    assert results["environment"]["process_count"] == 2
    iter_files = os.listdir(two / "checkpoints" / "3" / "data_iter")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(iter_files)

    # Restored here (1 process, 8 devices): the same parameters, and the 2-process iterator
    # position resumes this process's (global) stream at the same batch.
    config = local_config(**{"model.dtype": "float64", "optim.name": "sgd"})
    source = pretrain.load_sources(config).pretrain
    iters = [
        pipeline.train_iterator(
            source, augment.TwoViews(config.aug), batch_size=config.batch_size, seed=config.seed
        )
        for _ in range(2)
    ]
    with jax.enable_x64(True):
        state_one = _restore(one, config, iters[0])
        state_two = _restore(two, config, iters[1])
    assert max_abs_diff(state_one.params, state_two.params) < 1e-10
    assert max_abs_diff(state_one.model_state, state_two.model_state) < 1e-10
    assert max_abs_diff(state_one.opt_state, state_two.opt_state) < 1e-10
    np.testing.assert_array_equal(next(iters[0])["index"], next(iters[1])["index"])


@pytest.mark.slow
def test_sigterm_on_one_process_saves_on_all_then_resumes_on_one(tmp_path):
    """Preemption of one worker: both save the same step and exit 0; one process resumes it."""
    workdir = tmp_path / "w"
    args = [
        "--config=configs/simclr_chest.py:local",
        "--config.data.verify=False",
        "--config.eval.linear_probe=False",
        "--config.total_steps=400",
        "--config.log_every=1",
        "--config.ckpt_every=1000",
        f"--workdir={workdir}",
    ]
    procs = _start_pair(args)
    for line in procs[0].stdout:
        if line.startswith("step 2/"):
            procs[1].send_signal(signal.SIGTERM)  # The non-coordinator: the signal must travel.
            break
    outs = _finish(procs)
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "SIGTERM: saved checkpoint at step" in outs[0][0]
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 2 <= saved[0] < 400
    iter_files = os.listdir(workdir / "checkpoints" / str(saved[0]) / "data_iter")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(iter_files)

    resumed = _start([*args, f"--config.halt_at_step={saved[0] + 1}"], devices=1)
    out, err = resumed.communicate(timeout=HANG_GUARD_S)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed from step {saved[0]}" in out
    assert "1 cpu device(s) in 1 process(es)" in out
    assert [r["step"] for r in _rows(workdir)][-1] == saved[0] + 1


@pytest.mark.slow
def test_killed_process_stops_the_other_within_heartbeat_bound(tmp_path):
    args = [
        "--config=configs/simclr_chest.py:local",
        "--config.data.verify=False",
        "--config.total_steps=100000",
        "--config.log_every=1",
        f"--workdir={tmp_path / 'w'}",
    ]
    procs = _start_pair(args, heartbeat=HEARTBEAT)
    for line in procs[0].stdout:
        if line.startswith("step 2/"):
            procs[1].kill()
            break
    t_kill = time.monotonic()
    try:
        _, err = procs[0].communicate(timeout=HEARTBEAT + 40)
    finally:
        procs[0].kill()
        procs[1].communicate()
    elapsed = time.monotonic() - t_kill
    assert procs[0].returncode != 0
    assert "another task died" in err or "stopped sending heartbeats" in err, err[-3000:]
    print(f"survivor exited {elapsed:.1f}s after the kill (heartbeat timeout {HEARTBEAT}s)")
    assert elapsed < HEARTBEAT + 30
