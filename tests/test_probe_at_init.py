"""`eval.probe_at_init` runs after training (never before step 1) and probes the very encoder a
fresh run starts from: `init()` is a function of config.seed."""

from __future__ import annotations

import json

import jax
import numpy as np

from s4mi_jax.core import run, sharding
from s4mi_jax.trainers import pretrain, simclr
from tests.helpers import local_config, max_abs_diff


def test_probe_at_init_after_training_is_the_random_init_encoders(tmp_path):
    config = local_config(total_steps=2, **{"eval.probe_at_init": True})
    results = simclr.train_and_evaluate(config, str(tmp_path))
    assert json.loads((tmp_path / "probe_at_init.json").read_text()) == {
        "probe_at_init": results["probe_at_init"]
    }
    # The same probe of a freshly initialised encoder, computed directly: identical numbers.
    data = pretrain.load_data(config)
    mesh = sharding.make_mesh(config.mesh)
    p = run.build(config, mesh, simclr.task(config, data, mesh), data)
    a, b = p.init(), p.init()
    assert max_abs_diff(a.params, b.params) == 0.0
    ctx = run.Context(config, str(tmp_path), mesh, p, data, writer=None)
    direct = pretrain.probe_all(ctx, a, {"": lambda m: m.encoder}, "probe_at_init", "SimCLR")
    for key, value in direct["probe_at_init"].items():
        np.testing.assert_allclose(results["probe_at_init"][key], value, rtol=1e-6, err_msg=key)
    assert int(jax.device_get(a.step)) == 0
