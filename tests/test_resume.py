"""Resume and determinism: a run stopped halfway and restarted ends exactly where an uninterrupted one does."""

import importlib
import json
import os
import shutil

import jax
import numpy as np
import pytest

from s4mi_jax.core import optim, run, sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.data import augment, pipeline
from s4mi_jax.models.simclr import build_simclr_model
from s4mi_jax.trainers import pretrain, simclr
from tests.helpers import local_config, max_abs_diff

N = 6


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _restore_final(workdir, config):
    """The final checkpoint's state and the next batch its saved data iterator yields."""
    source = pretrain.load_sources(config).pretrain
    mesh = sharding.make_mesh(config.mesh)
    tx = optim.make_optimizer(config.optim, lambda s: 0.0)
    _, _, abstract = train_state.initializer(
        lambda rngs: build_simclr_model(config.model, 1, rngs), tx, config.seed, mesh
    )
    it = pipeline.train_iterator(
        source, augment.TwoViews(config.aug), batch_size=config.batch_size, seed=config.seed
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.latest_step() == N
    state = ckpt.restore(abstract, it)
    ckpt.close()
    return jax.device_get(state), next(it)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("straight"))
    config = local_config(total_steps=N, ckpt_every=N, log_every=1)
    results = simclr.train_and_evaluate(config, workdir)
    return workdir, config, results


def test_resume_matches_uninterrupted(straight, tmp_path):
    workdir_a, config, _ = straight
    workdir_b = str(tmp_path)
    halted = local_config(total_steps=N, ckpt_every=N, log_every=1, halt_at_step=N // 2)
    assert simclr.train_and_evaluate(halted, workdir_b) == {}
    assert Checkpointer(os.path.join(workdir_b, "checkpoints")).latest_step() == N // 2
    assert not os.path.exists(os.path.join(workdir_b, "results.json"))
    results_b = simclr.train_and_evaluate(config, workdir_b)  # Restart: resumes at N/2.

    state_a, next_a = _restore_final(workdir_a, config)
    state_b, next_b = _restore_final(workdir_b, config)
    assert int(state_b.step) == N
    assert max_abs_diff(state_a.params, state_b.params) == 0.0
    assert max_abs_diff(state_a.model_state, state_b.model_state) == 0.0
    assert max_abs_diff(state_a.opt_state, state_b.opt_state) == 0.0
    np.testing.assert_array_equal(next_a["index"], next_b["index"])
    np.testing.assert_array_equal(next_a["view1"], next_b["view1"])
    # The resumed run logged each step once, with the same losses as the uninterrupted run.
    assert _losses(workdir_a) == _losses(workdir_b)
    assert sorted(_losses(workdir_b)) == list(range(1, N + 1))
    assert results_b["linear_probe"] == straight[2]["linear_probe"]


def test_same_seed_same_losses_other_seed_differs(straight, tmp_path):
    workdir_a, config, _ = straight
    simclr.train_and_evaluate(config, str(tmp_path / "again"))
    assert _losses(str(tmp_path / "again")) == _losses(workdir_a)
    other = local_config(total_steps=N, ckpt_every=N, log_every=1, seed=1)
    simclr.train_and_evaluate(other, str(tmp_path / "seed1"))
    assert _losses(str(tmp_path / "seed1")) != _losses(workdir_a)


@pytest.mark.parametrize("name", ["dino", "cass"])
def test_dino_cass_resume_restores_teacher_centre_and_both_optimizers(name, tmp_path):
    """Halted at N/2 and restarted == straight N: the DINO teacher and centre (in model_state), the
    student's AdamW state, and CASS's two networks with their two Adam states, all bit for bit."""
    trainer = importlib.import_module(f"s4mi_jax.trainers.{name}")
    config_module = importlib.import_module(f"configs.{name}_chest")

    def config(**kw):
        c = config_module.get_config("local")
        c.data.verify = False
        c.eval.linear_probe = False
        if name == "dino":
            c.aug.num_local_crops = 2  # Fewer crops, same code paths: halves the compile.
        c.update(dict(total_steps=4, ckpt_every=2, log_every=1, **kw))
        return c

    def final(workdir):
        c = config()
        data = trainer.pretrain.load_data(c)
        mesh = sharding.make_mesh(c.mesh)
        abstract = run.build(c, mesh, trainer.task(c, data, mesh), data).abstract_state
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
        state = ckpt.restore(abstract, None)
        ckpt.close()
        return jax.device_get(state)

    # One straight run (checkpoints at 2 and 4); its copy, cut back to the step-2 checkpoint as if
    # killed before step 4 was saved, is restarted and must end where the straight run did.
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    trainer.train_and_evaluate(config(), a)
    shutil.copytree(a, b)
    shutil.rmtree(os.path.join(b, "checkpoints", "4"))
    os.remove(os.path.join(b, "results.json"))
    assert Checkpointer(os.path.join(b, "checkpoints")).latest_step() == 2
    trainer.train_and_evaluate(config(), b)
    state_a, state_b = final(a), final(b)
    assert int(state_b.step) == 4
    for part in ("params", "model_state", "opt_state"):
        assert max_abs_diff(getattr(state_a, part), getattr(state_b, part)) == 0.0, part
    assert _losses(a) == _losses(b) and sorted(_losses(b)) == [1, 2, 3, 4]
    if name == "dino":
        assert {"teacher", "center"} <= set(state_b.model_state)
        assert float(np.abs(state_b.model_state["center"][...]).max()) > 0  # The centre moved.
    else:
        assert set(state_b.opt_state.inner_states) == {"cnn", "vit"}
