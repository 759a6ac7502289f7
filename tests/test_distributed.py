"""When and how `jax.distributed` is started (the multi-process runs themselves: test_multihost.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from s4mi_jax.core import distributed
from s4mi_jax.core.distributed import Settings
from s4mi_jax.errors import ConfigError
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


def test_settings_from_environment():
    env = {
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "2",
    }
    s = distributed.from_env(Settings(), env)
    assert (s.coordinator_address, s.num_processes, s.process_id) == ("10.0.0.1:1234", 4, 2)
    flags_win = distributed.from_env(Settings(process_id=0), env)
    assert flags_win.process_id == 0
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='four'"):
        distributed.from_env(Settings(), {"JAX_NUM_PROCESSES": "four"})


@pytest.mark.parametrize(
    "settings,env,expected",
    [
        (Settings(), {}, False),  # A laptop: one process.
        (Settings(coordinator_address="127.0.0.1:1"), {}, True),
        (Settings(mode="off", coordinator_address="127.0.0.1:1"), {}, False),
        (Settings(mode="on"), {}, True),
        (Settings(), {"SLURM_NTASKS": "4", "SLURM_PROCID": "1"}, True),
        (
            Settings(),
            {"SLURM_NTASKS": "1", "SLURM_PROCID": "0"},
            False,
        ),  # One task: no coordinator.
        (Settings(), {"OMPI_COMM_WORLD_SIZE": "2"}, True),
        (Settings(), {"TPU_WORKER_HOSTNAMES": "t0,t1"}, True),
    ],
)
def test_when_to_initialize(settings, env, expected):
    if not env and not settings.coordinator_address and distributed.cluster_detected({}):
        pytest.skip("libtpu is installed here: a TPU VM is detected")
    assert distributed.should_initialize(settings, env) is expected


def test_partial_settings_are_a_one_line_error():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "s4mi_jax.main", "--config=configs/simclr_chest.py:local",
         "--coordinator_address=127.0.0.1:1", "--workdir=/nonexistent/never"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "give all of --coordinator_address, --num_processes and --process_id" in proc.stderr
