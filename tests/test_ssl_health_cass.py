"""The collapse alarm stays silent on SimCLR and fires on CASS from random initialisation (real X-rays).

See tests/test_ssl_health.py for the shared settings (the real command, one device).
"""

import pytest

from configs import cass_chest
from tests.test_ssl_health import CHEST, SHARED, run_short

pytestmark = pytest.mark.skipif(not CHEST.is_dir(), reason=f"no shared datasets at {SHARED}")


def test_simclr_keeps_the_alarm_silent(tmp_path):
    run = run_short("configs/simclr_chest.py:local", tmp_path, 120, batch_size=32)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "collapse" not in run.stdout + run.stderr


def test_alarm_fires_on_cass_from_random_init(tmp_path):
    # Measured at this size: spread 0.71 (step 50) -> 0.14 (200) -> 0.06 (300); branch cosine 0.99.
    assert cass_chest.get_config("local").model.cnn.init_from == "random"
    run = run_short("configs/cass_chest.py:local", tmp_path, 500)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "representation collapse at step" in run.stderr and "collapse_" in run.stderr
