"""docs/adding_a_method.md's worked example, taken from the page and run: one trainer file, one config
and one registry line give a method that trains, probes, resumes and compiles ahead of time."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s4mi_jax import trainers
from s4mi_jax.core import run, sharding
from tests.helpers import override

DOC = Path(__file__).resolve().parent.parent / "docs" / "adding_a_method.md"


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The page's trainer and config written as a package, registered as the page says."""
    trainer_src, config_src, registry_src = re.findall(
        r"```python\n(.*?)```", DOC.read_text(), flags=re.S
    )[:3]
    assert '"barlow_twins": "s4mi_jax.trainers.barlow_twins"' in registry_src
    pkg = tmp_path / "example_method"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "barlow_twins.py").write_text(trainer_src)
    (pkg / "barlow_twins_chest.py").write_text(config_src)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(trainers.ALL_TRAINERS, "barlow_twins", "example_method.barlow_twins")
    return (
        importlib.import_module("example_method.barlow_twins"),
        importlib.import_module("example_method.barlow_twins_chest"),
    )


def test_worked_example_trains_probes_and_compiles_ahead_of_time(example, tmp_path):
    _, config_module = example
    config = override(
        config_module.get_config("local"),
        **{"total_steps": 4, "ckpt_every": 2, "eval.probe_at_init": False, "data.verify": False},
    )
    trainer = trainers.get(config.trainer)
    results = run.run(config, str(tmp_path / "run"), trainer)
    assert results["step"] == 4 and 0.0 <= results["linear_probe"]["auroc"] <= 1.0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses and all(np.isfinite(losses))
    # Rerunning the finished command resumes it: nothing is retrained, the same probe comes out.
    again = run.run(config, str(tmp_path / "run"), trainer)
    assert again["linear_probe"] == results["linear_probe"]
    mesh = sharding.make_mesh(config.mesh)
    step, abstract_state, batch = run.aot_setup(config, mesh, trainer)
    assert set(batch) == {"view1", "view2"} and batch["view1"].shape[0] == config.batch_size
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    jax.jit(step).lower(abstract_state, batch, rng).compile()


def test_worked_example_loss_matches_numpy_under_jit(example):
    trainer_module, _ = example
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 32, 8))
    z2 = z1 + 0.3 * z2

    def reference(a, b, lambd):
        a = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
        b = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
        c = a.T @ b / len(a)
        return np.sum((np.diag(c) - 1) ** 2) + lambd * (np.sum(c**2) - np.sum(np.diag(c) ** 2))

    loss = jax.jit(trainer_module.barlow_twins_loss, static_argnums=2)
    np.testing.assert_allclose(
        float(loss(jnp.asarray(z1), jnp.asarray(z2), 0.005)), reference(z1, z2, 0.005), rtol=1e-4
    )
    constant = jnp.ones((16, 8))  # A collapsed batch: finite, and at its maximum on the diagonal.
    assert np.isfinite(float(loss(constant, constant, 0.005)))
