"""Each self-supervised method learns on real chest X-rays, and the collapse alarm tells when one does not.

Short runs of the real command on the shared chest X-ray folder (skipped without it): the fixed DINO head
keeps the teacher's entropy far from log K and the alarm silent, and the alarm
(`config.collapse=stop`, so the run ends where it fires) catches DINO with the official std 0.02 at
`:local` widths. SimCLR and CASS: tests/test_ssl_health_cass.py (two files, so two test workers share them).

These are learning dynamics, not sharding (1 device = 8 is tested elsewhere), so each run is one process
on one CPU device with XLA's optimisations on, as a user's run: 3-6x faster steps than the suite's
8 simulated devices with optimisations off, and the same numbers as `python -m s4mi_jax.main` gives.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import dino_chest
from tests.helpers import HANG_GUARD_S
from tests.test_real_data import SHARED

CHEST = SHARED / "chest_xray_pneumonia"
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not CHEST.is_dir(), reason=f"no shared datasets at {SHARED}")


def run_short(config: str, workdir: Path, steps: int, batch_size: int = 64, **kw):
    """`python -m s4mi_jax.main --config=<config>` for `steps` steps, alarm set to stop the run."""
    overrides = {
        "data.root": str(CHEST),
        "data.verify": False,
        "total_steps": steps,
        "batch_size": batch_size,
        "log_every": 10,
        "ckpt_every": 10_000,
        "eval.linear_probe": False,
        "eval.probe_at_init": False,
        "collapse": "stop",
        **kw,
    }
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="false")
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "s4mi_jax.main", f"--config={config}", f"--workdir={workdir}"]
        + [f"--config.{k}={v}" for k, v in overrides.items()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def metrics(workdir: Path) -> list[dict]:
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_dino_teacher_stays_sharp_and_the_alarm_silent(tmp_path):
    run = run_short("configs/dino_chest.py:local", tmp_path, 120, batch_size=32)
    assert run.returncode == 0, run.stderr[-2000:]  # collapse=stop: a fired alarm exits 2.
    rows = [r for r in metrics(tmp_path) if "train/teacher_entropy" in r]
    log_k = math.log(dino_chest.get_config("local").model.head_out_dim)
    assert rows[-1]["step"] == 120
    assert max(r["train/teacher_entropy"] for r in rows[len(rows) // 2 :]) < 0.6 * log_k
    assert "collapse" not in run.stdout + run.stderr


def test_alarm_fires_on_dino_with_the_official_std_at_narrow_widths(tmp_path):
    """The head this project had before the fix: official std 0.02 at `:local` widths, no BatchNorm,
    with the official SGD recipe."""
    run = run_short(
        "configs/dino_chest.py:local,sgd", tmp_path, 300, **{"model.head_init": "fixed"}
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "representation collapse at step" in run.stderr and "collapse_" in run.stderr
