"""Segmentation trainers: cross teaching swaps pseudo-labels, FixMatch on 8 devices equals 1 device,
resume is exact, and a supervised run (with DEDL's APP head) writes its results and overlays."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import common
from s4mi_jax.core import optim, run, sharding, train_state
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.losses import segmentation as L
from s4mi_jax.trainers import cross_teaching, fixmatch_seg, segment
from tests.helpers import make_seg_folder, max_abs_diff, override


def _config(trainer, **kw):
    config = common.segmentation_config(trainer, "local")
    config.aug.image_size = 16
    return override(config, **kw)


def _batch(config, rng, dtype=np.float32):
    s, c = config.aug.image_size, 3
    return {
        "image": rng.normal(size=(8, s, s, c)).astype(dtype),
        "mask": rng.integers(0, 2, (8, s, s)).astype(np.int32),
        "u_weak": rng.normal(size=(8, s, s, c)).astype(dtype),
        "u_strong": rng.normal(size=(8, s, s, c)).astype(dtype),
    }


def _setup(trainer, config, devices, weights=None):
    """`trainer`'s task on 3-channel data, its step with the given class `weights`."""
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    task = trainer.task(config, run.RunData(channels=3, num_examples=8), mesh)
    tx = task.wrap_tx(optim.make_optimizer(config.optim, lambda s: 1e-3))
    graphdef, init, abstract = train_state.initializer(
        task.build_model, tx, config.seed, mesh, trainable=task.trainable
    )
    cfg = config.fixmatch if trainer is fixmatch_seg else config.cross_teaching
    step = trainer.make_train_step(graphdef, tx, weights, config.data.num_classes, cfg)
    return (
        mesh,
        graphdef,
        init,
        train_state.jit_step(step, train_state.shardings_of(abstract), mesh),
    )


def test_cross_teaching_each_network_learns_from_the_others_pseudo_labels():
    config = _config(
        "cross_teaching",
        **{"model.cnn.dropout": (0.0,) * 5, "model.transformer.drop_path": 0.0},
    )
    mesh, graphdef, init, step = _setup(cross_teaching, config, jax.devices()[:1])
    state0 = init()
    batch = _batch(config, np.random.default_rng(0))

    @jax.jit
    def unlabeled_probs(params, model_state, x):
        model = nnx.merge(graphdef, params, model_state)
        model.train()  # As in the step: batch statistics over labeled + unlabeled images together.
        return {b: jax.nn.softmax(getattr(model, b)(x)[8:]) for b in ("cnn", "transformer")}

    x = jnp.concatenate([batch["image"], batch["u_weak"]])
    probs = unlabeled_probs(state0.params, state0.model_state, x)
    hard = {b: jnp.argmax(p, -1) for b, p in probs.items()}
    assert float(jnp.mean(hard["cnn"] != hard["transformer"])) > 0.05  # The swap is visible.
    _, metrics = step(init(), sharding.put_batch(batch, mesh), state0.rng)
    for me, other in (("cnn", "transformer"), ("transformer", "cnn")):
        taught = float(L.dice_loss(probs[me], hard[other], 2))
        own = float(L.dice_loss(probs[me], hard[me], 2))
        np.testing.assert_allclose(float(metrics[f"loss_cross_{me}"]), taught, rtol=1e-4)
        assert abs(taught - own) > 1e-3
    want_weight = 0.1 * np.exp(-5.0)  # Step 0: e = 0.
    np.testing.assert_allclose(float(metrics["consistency_weight"]), want_weight, rtol=1e-6)
    sup = sum(float(metrics[f"loss_sup_{b}"]) for b in ("cnn", "transformer"))
    cross = sum(float(metrics[f"loss_cross_{b}"]) for b in ("cnn", "transformer"))
    np.testing.assert_allclose(float(metrics["loss"]), sup + want_weight * cross, rtol=1e-5)


def _one_vs_eight(trainer, config, seed: int, rtol: float):
    """Two float64 steps on 1 and on 8 devices from the same init and batches: metrics and the whole
    state agree to `rtol`. Returns (fresh state, {devices: (final state, per-step metrics)})."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        batches = [_batch(config, rng, np.float64) for _ in range(2)]
        out = {}
        for n in (1, 8):
            mesh, _, init, step = _setup(
                trainer, config, jax.devices()[:n], jnp.asarray([0.6, 2.0])
            )
            state, logs = init(), []
            for i, b in enumerate(batches):
                key = jax.random.fold_in(state.rng, i)
                state, m = step(state, sharding.put_batch(b, mesh), key)
                logs.append({k: float(v) for k, v in m.items()})
            out[n] = (jax.device_get(state), logs)
        fresh = jax.device_get(init())
    for a, b in zip(out[1][1], out[8][1], strict=True):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=rtol / 100, err_msg=k)
    for part in ("params", "model_state", "opt_state"):
        assert max_abs_diff(getattr(out[1][0], part), getattr(out[8][0], part)) < rtol, part
    assert max_abs_diff(fresh.params, out[1][0].params) > 1e-4  # The steps did something.
    return fresh, out


def test_fixmatch_with_ema_teacher_eight_devices_match_one_device_float64():
    """With the EMA teacher (the plain student path runs in the resume test below)."""
    config = _config(
        "fixmatch_seg",
        **{"model.dtype": "float64", "fixmatch.threshold": 0.5, "fixmatch.ema_decay": 0.9},
    )
    fresh, out = _one_vs_eight(fixmatch_seg, config, seed=1, rtol=1e-10)
    assert out[1][1][0]["confident_fraction"] > 0 and out[1][1][0]["loss_u"] > 0
    # The EMA teacher moved, and only through the EMA (its weights are not trained parameters).
    assert max_abs_diff(fresh.model_state["teacher"], out[1][0].model_state["teacher"]) > 1e-6
    assert "teacher" not in out[1][0].params


def test_cross_teaching_eight_devices_match_one_device_float64():
    """Both networks (U-Net and Swin-UNet) and both Adam states. Agreement is ~1e-10, not 1e-15: Adam
    divides by sqrt(v), so float64 reduction-order noise on near-zero gradients (Swin attention, Dice
    sums) becomes a relative difference in the update."""
    config = _config("cross_teaching", **{"model.cnn.dtype": "float64"})
    config.model.transformer.dtype = "float64"
    _, out = _one_vs_eight(cross_teaching, config, seed=2, rtol=1e-8)
    assert out[1][1][1]["loss_cross_cnn"] > 0 and out[1][1][1]["loss_cross_transformer"] > 0


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_fixmatch_resume_matches_uninterrupted(tmp_path):
    root = make_seg_folder(tmp_path / "data", n=16, size=16, unlabeled=(1, 2, 3))

    def config(**kw):
        return _config(
            "fixmatch_seg",
            **{
                "data.root": root,
                "label_fraction": 0.5,
                "eval.batch_size": 8,
                "eval_every": 4,
                "ckpt_every": 4,
                **kw,
            },
        )

    # One straight run (checkpoints at 2 and 4); a copy cut back to step 2, as if killed before step 4
    # was saved, restarts and must end where the straight run did.
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    results_a = fixmatch_seg.train_and_evaluate(config(ckpt_every=2), a)
    shutil.copytree(a, b)
    shutil.rmtree(os.path.join(b, "checkpoints", "4"))
    os.remove(os.path.join(b, "results.json"))
    results_b = fixmatch_seg.train_and_evaluate(config(ckpt_every=2), b)
    c = config()
    mesh = sharding.make_mesh(c.mesh)
    data = run.RunData(channels=3, num_examples=4)
    abstract = run.build(c, mesh, fixmatch_seg.task(c, data, mesh), data).abstract_state
    states = []
    for w in (a, b):
        ckpt = Checkpointer(os.path.join(w, "checkpoints"))
        states.append(jax.device_get(ckpt.restore(abstract, None)))
        ckpt.close()
    for part in ("params", "model_state", "opt_state"):
        assert max_abs_diff(getattr(states[0], part), getattr(states[1], part)) == 0.0, part
    assert _losses(a) == _losses(b) and sorted(_losses(b)) == [2, 4]  # log_every=2
    assert results_a["test"] == results_b["test"] and results_b["num_unlabeled"] >= 3


def test_supervised_run_with_app_writes_results_and_overlays(tmp_path):
    root = make_seg_folder(tmp_path / "data", n=12, size=16)
    config = _config(
        "segment",
        **{"data.root": root, "app.enabled": True, "app.expand": 2, "app.hidden": (8,)},
    )
    results = segment.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["method"] == "supervised_seg" and results["num_train"] >= 8
    assert set(results["test"]) >= {"dice", "iou", "hd95", "asd", "assd", "iou_micro", "dice_micro"}
    assert results["best_step"] in (2, 4)
    overlays = tmp_path / "run" / "overlays"
    assert {p.name for p in overlays.iterdir()} == {"step_2", "step_4", "test"}
    assert len(list((overlays / "test").iterdir())) == 2
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert any("train/app_ce" in r for r in rows) and any("val/iou" in r for r in rows)
    # The same provenance as every results.json (s4mi_jax/provenance.py): masks are fingerprinted.
    prov = results["provenance"]
    assert (
        prov["manifest_hash"] == results["manifest_hash"] and prov["config"]["trainer"] == "segment"
    )
    n_images = len(os.listdir(os.path.join(root, "images")))
    n_masks = len(os.listdir(os.path.join(root, "masks")))
    n_csv = len([f for f in os.listdir(root) if f.endswith(".csv")])
    assert prov["dataset"]["records"] == n_images
    assert prov["dataset"]["file_count"] == n_images + n_masks + n_csv
    assert prov["environment"]["device_count"] == jax.device_count() and prov["device_hours"] > 0
