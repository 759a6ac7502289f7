"""The collapse alarm stays silent on SimCLR and fires on CASS from random initialisation (real X-rays).

See tests/test_ssl_health.py for the shared settings.
"""

import pytest

from configs import cass_chest, simclr_chest
from s4mi_jax.errors import S4MIError
from s4mi_jax.trainers import cass, simclr
from tests.test_ssl_health import CHEST, SHARED, _short

pytestmark = pytest.mark.skipif(not CHEST.is_dir(), reason=f"no shared datasets at {SHARED}")


def test_simclr_keeps_the_alarm_silent(tmp_path, capsys):
    config = _short(simclr_chest.get_config("local"), 120, batch_size=32)
    simclr.train_and_evaluate(config, str(tmp_path))
    assert "collapse" not in capsys.readouterr().out


def test_alarm_fires_on_cass_from_random_init(tmp_path):
    # Measured at this size: spread 0.71 (step 50) -> 0.14 (200) -> 0.06 (300); branch cosine 0.99.
    config = _short(cass_chest.get_config("local"), 500)
    assert config.model.cnn.init_from == "random"
    with pytest.raises(S4MIError, match=r"representation collapse at step \d+: collapse_"):
        cass.train_and_evaluate(config, str(tmp_path))
