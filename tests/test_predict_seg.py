"""`s4mi_jax.predict` for segmentation: on a tiny trained supervised run the masks equal the run's
evaluation and a corrupt file is skipped; cross teaching predicts with the network `--network` names,
from its own best checkpoint; tiles go back where they came from."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import common
from s4mi_jax import predict
from s4mi_jax.core import run as core_run
from s4mi_jax.core import sharding
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.data import segmentation as segdata
from s4mi_jax.errors import ConfigError
from s4mi_jax.evaluators import pixel_predict
from s4mi_jax.evaluators import segmentation as segmetrics
from s4mi_jax.trainers import cross_teaching, segment
from tests.helpers import make_seg_folder, override


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished `:local` supervised U-Net run on 32x32 images at model size 16: 2 steps, validated
    (best/) at step 2 and tested."""
    tmp = tmp_path_factory.mktemp("seg")
    root = make_seg_folder(tmp / "data", n=20, size=32, unlabeled=(1, 2, 3))
    config = override(
        common.segmentation_config("segment", "local"),
        **{
            "data.root": root,
            "aug.image_size": 16,
            "label_fraction": 0.5,
            "total_steps": 2,
            "eval.batch_size": 8,
            "eval.overlays": 0,
        },
    )
    workdir = str(tmp / "run")
    results = segment.train_and_evaluate(config, workdir)
    return config, workdir, results


def _evaluation_maps(config, workdir):
    """The test split's class maps as the run's evaluation computes them (the segmentation evaluator's `score`):
    the data loaded at the model size, the selected checkpoint."""
    data = segdata.load(config.data, config.aug.image_size)
    with open(os.path.join(workdir, "manifest.json")) as f:
        test_keys = json.load(f)["splits"]["test"]
    idx = np.asarray([data.keys.index(k) for k in test_keys])
    x, y = segdata.eval_arrays(data, idx, config.aug)
    mesh = sharding.make_mesh(config.mesh)
    data = core_run.RunData(channels=3, num_examples=config.batch_size)
    task = segment.supervised_task(config, data, mesh)
    built = core_run.build(config, mesh, task, data)
    ckpt = Checkpointer(os.path.join(workdir, "best"))
    state = ckpt.restore(built.abstract_state, None)
    ckpt.close()
    fn = pixel_predict.make_predict_fn(built.graphdef, task.networks[""])
    return test_keys, pixel_predict.predict_all(fn, state, x, 8, mesh), y


def _predict_masks(workdir, files, out, keys, network=None):
    report = predict.run(
        workdir,
        files,
        str(out),
        batch_size=2,  # Rounded up to the 8 devices: the last (only) batch is padded.
        network=network,
        log=lambda m: None,
    )
    assert report.skipped == [] and report.predicted == files
    masks = np.stack([np.asarray(Image.open(out / "masks" / k)) for k in keys])
    assert masks.shape[1:] == (32, 32) and set(np.unique(masks)) <= {0, 255}  # The input's size.
    return masks // 255


def _assert_reported_metrics(workdir, name, masks, truth):
    """The per-image metrics the run reported for network `name` are those of predict's masks."""
    with open(os.path.join(workdir, f"{name}_per_image.json")) as f:
        reported = json.load(f)
    for row, pred, gt in zip(reported, masks[:, ::2, ::2], truth, strict=True):
        m = segmetrics.image_metrics(pred, gt, 2)
        assert m == pytest.approx({k: row[k] for k in m}, rel=1e-12)


def test_predict_reproduces_the_evaluation(run, tmp_path):
    config, workdir, results = run
    keys, want, truth = _evaluation_maps(config, workdir)
    assert len(keys) == results["num_test"] >= 3
    files = [os.path.join(config.data.root, "images", k) for k in keys]
    got = _predict_masks(workdir, files, tmp_path / "cnn", keys)
    # Back to 32x32 by nearest neighbour: each model-size pixel became a 2x2 block.
    np.testing.assert_array_equal(got, np.kron(want, np.ones((1, 2, 2), want.dtype)))
    assert 0 < want.mean() < 1  # Both classes predicted: not a constant output.
    _assert_reported_metrics(workdir, "test", got, truth)
    strip = np.asarray(Image.open(tmp_path / "cnn" / "overlays" / keys[0]))
    assert strip.shape == (32, 64, 3)  # image | prediction
    with open(tmp_path / "cnn" / "masks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == files
    assert float(rows[0]["foreground_fraction"]) == pytest.approx(got[0].mean())


def test_corrupt_file_is_skipped_and_the_others_written(run, tmp_path):
    config, workdir, _ = run
    images = Path(config.data.root) / "images"
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(images / "im00.png", folder / "a.png")
    odd = np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8)
    Image.fromarray(odd).save(folder / "b.jpg")  # Another size and format.
    (folder / "bad.png").write_bytes((images / "im00.png").read_bytes()[:200])  # Truncated.
    (folder / "notes.txt").write_text("not an image")  # Ignored: not an image extension.
    out = tmp_path / "out"
    report = predict.run(workdir, [str(folder)], str(out), log=lambda m: None)
    assert report.predicted == [str(folder / "a.png"), str(folder / "b.jpg")]
    assert [f for f, _ in report.skipped] == [str(folder / "bad.png")]
    assert f"cannot read image {folder / 'bad.png'}" in report.skipped[0][1]
    assert predict.exit_status(report) == 0
    assert np.asarray(Image.open(out / "masks" / "a.png")).shape == (32, 32)
    assert np.asarray(Image.open(out / "masks" / "b.png")).shape == (20, 28)
    assert sorted(os.listdir(out / "overlays")) == ["a.png", "b.png"]
    assert not (out / "masks" / "bad.png").exists()
    with open(out / "skipped.csv", newline="") as f:
        assert [r["file"] for r in csv.DictReader(f)] == [str(folder / "bad.png")]
    with pytest.raises(ConfigError, match="--network=cnn: a segment run has one network"):
        predict.run(workdir, [str(folder)], str(out), network="cnn", log=lambda m: None)


def test_cross_teaching_predicts_with_the_network_asked_for(tmp_path):
    """A cross-teaching workdir whose two best checkpoints hold different weights (no training:
    an initial state and one with every weight negated): the default is the U-Net of best/, --network=transformer
    the Swin-UNet of best_transformer/, each equal to the evaluation's predict function."""
    root = make_seg_folder(tmp_path / "data", n=2, size=16)
    config = override(
        common.segmentation_config("cross_teaching", "local"),
        **{"data.root": root, "aug.image_size": 16, "eval.batch_size": 8},
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(config.to_dict()))
    mesh = sharding.make_mesh(config.mesh)
    data = core_run.RunData(channels=3, num_examples=8)
    task = cross_teaching.task(config, data, mesh)
    built = core_run.build(config, mesh, task, data)
    graphdef, state = built.graphdef, built.init()
    flipped = state.replace(params=jax.tree.map(jnp.negative, state.params))
    states = {"": state, "transformer": flipped}
    meta = {"in_channels": 3, "num_classes": 2}
    for key, step in (("", 3), ("transformer", 5)):
        ckpt = Checkpointer(str(workdir / ("best" + (f"_{key}" if key else ""))))
        ckpt.save(step, states[key], None, meta)
        ckpt.close()
    files = [os.path.join(root, "images", f"im0{i}.png") for i in range(2)]
    x = segdata.eval_images(np.stack([np.asarray(Image.open(f)) for f in files]), config.aug)
    want = {  # What each network of each checkpoint predicts, through the evaluation's function.
        (net, ckpt): pixel_predict.predict_all(fn, states[ckpt], x, 8, mesh)
        for net in states
        for fn in [pixel_predict.make_predict_fn(graphdef, task.networks[net])]
        for ckpt in states
    }
    for network, key in ((None, ""), ("transformer", "transformer")):
        out = tmp_path / f"out_{key}"
        report = predict.run(str(workdir), files, str(out), network=network, log=lambda m: None)
        assert report.predicted == files
        got = np.stack([np.asarray(Image.open(out / "masks" / Path(f).name)) // 255 for f in files])
        for pair, maps in want.items():
            assert np.array_equal(got, maps) == (pair == (key, key)), (network, pair)


def test_tiles_go_back_where_they_came_from():
    rng = np.random.default_rng(0)
    for shape in ((37, 50), (10, 12), (16, 48)):  # Overlapping edge tiles; smaller than a tile.
        image = rng.integers(0, 255, (*shape, 1), dtype=np.uint8)
        pieces = segdata.to_model_size(image, None, "tile", 16)
        assert all(p[1].shape == (16, 16, 1) and p[2] is None for p in pieces)
        back = segdata.from_model_size(
            [p[1][..., 0] for p in pieces], [p[0] for p in pieces], shape
        )
        np.testing.assert_array_equal(back, image[..., 0])
    ((corner, small, _),) = segdata.to_model_size(image, image[..., 0], "resize", 8)
    assert corner is None and small.shape == (8, 8, 1)
