"""Each self-supervised method learns on real chest X-rays, and the collapse alarm tells when one does not.

Short runs on the shared chest X-ray folder (skipped without it), through the real trainers and loop:
the fixed DINO head keeps the teacher's entropy far from log K and the alarm silent, and the alarm
(`config.collapse=stop`, so the run ends where it fires) catches DINO with the official std 0.02 at
`:local` widths. SimCLR and CASS: tests/test_ssl_health_cass.py (two files, so two test workers share them).
"""

import json
import math

import pytest

from configs import dino_chest
from s4mi_jax.errors import S4MIError
from s4mi_jax.trainers import dino
from tests.helpers import override
from tests.test_real_data import SHARED

CHEST = SHARED / "chest_xray_pneumonia"
pytestmark = pytest.mark.skipif(not CHEST.is_dir(), reason=f"no shared datasets at {SHARED}")


def _short(config, steps: int, batch_size: int = 64, **kw):
    return override(
        config,
        **{
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
        },
    )


def _metrics(workdir) -> list[dict]:
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_dino_teacher_stays_sharp_and_the_alarm_silent(tmp_path, capsys):
    config = _short(dino_chest.get_config("local"), 120, batch_size=32)
    dino.train_and_evaluate(config, str(tmp_path))  # collapse=stop: would raise.
    rows = [r for r in _metrics(tmp_path) if "train/teacher_entropy" in r]
    log_k = math.log(config.model.head_out_dim)
    assert rows[-1]["step"] == 120
    assert max(r["train/teacher_entropy"] for r in rows[len(rows) // 2 :]) < 0.6 * log_k
    assert "collapse" not in capsys.readouterr().out


def test_alarm_fires_on_dino_with_the_official_std_at_narrow_widths(tmp_path):
    """The head this project had before the fix: official std 0.02 at `:local` widths, no BatchNorm,
    with the official SGD recipe."""
    config = _short(dino_chest.get_config("local,sgd"), 300, **{"model.head_init": "fixed"})
    with pytest.raises(S4MIError, match=r"representation collapse at step \d+: collapse_"):
        dino.train_and_evaluate(config, str(tmp_path))
