"""Classification at label fractions: pretrained weights in, frozen encoder, results, bad input."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from configs import simclr_chest
from s4mi_jax.core import optim, pretrained, sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.errors import ConfigError, DataError
from s4mi_jax.models.classifier import build_classifier
from s4mi_jax.trainers import classify, simclr
from tests.helpers import classification_config, max_abs_diff


def cls_config(method, **overrides):
    settings = dict(
        total_steps=4, eval_every=2, log_every=2, ckpt_every=2, **{"eval.bootstrap": 20}
    )
    return classification_config(method, **{**settings, **overrides})


def _raw_state(workdir):
    directory, step = pretrained.resolve(workdir)
    manager = ocp.CheckpointManager(directory)
    raw = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return raw


def _encoder_leaves(tree):
    """{path: array} for the encoder part of a params/model_state tree (nnx State or raw dict)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {}
    for path, x in flat:
        keys = [pretrained._key(p) for p in path]
        if keys[0] == "encoder":
            out["/".join(keys)] = np.asarray(x)
    return out


@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    config = simclr_chest.get_config("local")
    config.data.verify = False
    config.eval.linear_probe = False
    config.total_steps = 3
    simclr.train_and_evaluate(config, workdir)
    return workdir


def test_finetune_init_loads_exact_pretrained_encoder(pretrain_dir):
    config = cls_config("finetune", init_from=pretrain_dir)
    mesh = sharding.make_mesh(config.mesh)
    tx = optim.make_optimizer(config.optim, lambda s: 1e-3)
    _, init, _ = train_state.initializer(
        lambda rngs: build_classifier(config.model, 1, 2, rngs), tx, 0, mesh
    )
    fresh = init()
    loaded, source, step = pretrained.load_encoder(fresh, pretrain_dir)
    assert (source, step) == ("encoder", 3)
    raw = _raw_state(pretrain_dir)
    for tree, raw_tree in (
        (loaded.params, raw["params"]),
        (loaded.model_state, raw["model_state"]),
    ):
        got, want = _encoder_leaves(tree), _encoder_leaves(raw_tree)
        assert got.keys() == want.keys() and len(got) > 10
        for k in got:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # The head is not from the checkpoint (SimCLR has none of this shape): left as initialised.
    assert max_abs_diff(loaded.params["head"], fresh.params["head"]) == 0.0


def test_linear_probe_trains_head_and_never_moves_encoder(pretrain_dir, tmp_path):
    workdir = str(tmp_path)
    results = classify.train_and_evaluate(
        cls_config("linear_probe", init_from=pretrain_dir), workdir
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.latest_step() == 4
    ckpt.close()
    final = _raw_state(workdir)
    raw = _raw_state(pretrain_dir)
    for key in ("params", "model_state"):
        got, want = _encoder_leaves(final[key]), _encoder_leaves(raw[key])
        assert got.keys() == want.keys()
        for k in got:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    head = np.asarray(final["params"]["head"]["kernel"]["value"])
    assert np.abs(head).max() > 0  # Zero-initialised head did train.
    assert results["method"] == "linear_probe" and results["init_from"]["step"] == 3


def test_supervised_results_manifest_and_metrics(tmp_path):
    workdir = str(tmp_path)
    results = classify.train_and_evaluate(
        cls_config("supervised", label_fraction=0.1, seed=1), workdir
    )
    with open(os.path.join(workdir, "manifest.json")) as f:
        manifest = json.load(f)
    assert results["manifest_hash"] == manifest["hash"]
    assert results["num_train"] < 40 and results["num_test"] == 64 and results["num_val"] == 32
    for key in (
        "accuracy",
        "balanced_accuracy",
        "micro_f1",
        "macro_f1",
        "weighted_f1",
        "auroc",
        "recall",
        "precision/0",
        "f1/1",
    ):
        assert key in results["test"], key
    lo, hi = results["test_ci95"]["accuracy"]
    assert lo <= results["test"]["accuracy"] <= hi
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert any("val/auroc" in r for r in rows) and any("test/accuracy" in r for r in rows)
    assert results["best_step"] in (2, 4)
    # Checkpoints carry the manifest hash.
    meta = json.load(open(os.path.join(workdir, "checkpoints", "4", "meta", "metadata")))
    assert meta["manifest_hash"] == manifest["hash"]


def test_checkpoint_from_another_model_names_the_parameter(pretrain_dir, tmp_path):
    config = cls_config("finetune", init_from=pretrain_dir, **{"model.width": 4})
    with pytest.raises(
        ConfigError, match=r"parameter encoder/\S+ has shape \(8,\) in the checkpoint but \(4,\)"
    ):
        classify.train_and_evaluate(config, str(tmp_path))


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="init_from"):
        classify.train_and_evaluate(cls_config("finetune"), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="init_from"):
        classify.train_and_evaluate(
            cls_config("finetune", init_from=str(tmp_path / "nope")), str(tmp_path / "b")
        )
    with pytest.raises(DataError):
        classify.train_and_evaluate(
            cls_config("supervised", label_fraction=0.0), str(tmp_path / "c")
        )
    assert not any((tmp_path / d).exists() for d in "abc")


def test_multilabel_folder_end_to_end(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["filename,b,tfh,other"]
    for i in range(60):
        y = rng.integers(0, 2, 3)
        img = rng.integers(0, 60, (24, 24, 3))
        img[..., 0] += 150 * y[0]  # Make the labels learnable from colour.
        img[..., 1] += 150 * y[1]
        Image.fromarray(img.astype(np.uint8)).save(data / "images" / f"im{i:02d}.png")
        lines.append(f"im{i:02d}.png," + ",".join(map(str, y)))
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    results = classify.train_and_evaluate(
        cls_config("supervised", **{"data.root": str(data)}), str(tmp_path / "w")
    )
    assert results["class_names"] == ["b", "tfh", "other"]
    assert "micro_f1" in results["test"] and "balanced_accuracy" not in results["test"]


def test_pretraining_results_record_provenance(pretrain_dir):
    """trainers/pretrain.py (SimCLR, DINO, CASS) writes the same provenance as classification."""
    with open(os.path.join(pretrain_dir, "results.json")) as f:
        results = json.load(f)
    prov = results["provenance"]
    with open(os.path.join(pretrain_dir, "config.json")) as f:
        assert prov["config"] == json.load(f) and prov["config"]["trainer"] == "simclr"
    assert prov["code"]["package_version"] and "git_commit" in prov["code"]
    assert len(prov["manifest_hash"]) == 64  # The 100% split that keeps val/test out.
    assert prov["dataset"]["records"] == 320 and len(prov["dataset"]["sha256"]) == 64
    assert prov["environment"]["device_count"] == jax.device_count()
    assert prov["device_hours"] == pytest.approx(prov["wall_time_s"] * jax.device_count() / 3600)
    assert results["environment"]["jax_version"] == jax.__version__
