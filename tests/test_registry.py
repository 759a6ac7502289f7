"""The trainer registry: every registered trainer builds its step ahead of time from its config alone
(what `s4mi_jax.aot` compiles), and an unknown name lists the registered ones."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import pytest

from s4mi_jax import trainers
from s4mi_jax.core import run, sharding
from s4mi_jax.errors import ConfigError

# A `:local` config of each registered trainer.
CONFIGS = {
    "simclr": "simclr_chest",
    "dino": "dino_chest",
    "cass": "cass_chest",
    "classify": "supervised_chest",
    "segment": "supervised_seg_ph2",
    "fixmatch_seg": "fixmatch_seg_ph2",
    "cross_teaching": "cross_teaching_ph2",
    "picie": "picie_ph2",
}


def test_every_registered_trainer_has_a_config_here():
    assert set(CONFIGS) == set(trainers.ALL_TRAINERS)


def test_unknown_trainer_lists_the_registered_ones():
    with pytest.raises(
        ConfigError, match=r"config.trainer='simclrr': expected one of \[.*'simclr'"
    ):
        trainers.get("simclrr")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_trainer_builds_and_traces_its_step_without_data(name, tmp_path):
    config = importlib.import_module(f"configs.{CONFIGS[name]}").get_config("local")
    config.data.root = str(tmp_path / "no_such_folder")  # Nothing may be read.
    if name in ("cass",):  # Pretrained starts are loaded by a run, not by the AOT build.
        config.model.cnn.init_from = config.model.vit.init_from = ""
    mesh = sharding.make_mesh(config.mesh)
    step, abstract_state, batch = run.aot_setup(config, mesh, trainers.get(name))
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    new_state, metrics = jax.eval_shape(step, abstract_state, batch, rng)  # The whole step, traced.
    assert jax.tree.structure(new_state) == jax.tree.structure(abstract_state)
    assert metrics["loss"].shape == () and all(b.shape[0] > 0 for b in batch.values())
