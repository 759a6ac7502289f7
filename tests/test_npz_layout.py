"""The README's `.npz` layout (`images` (N, H, W[, C]) uint8, optional `labels` (N,)) in every trainer
that builds a label manifest, and its integer-label checks (docs/data.md)."""

import json
import os

import numpy as np
import pytest

from s4mi_jax.data.sources import open_source, source_keys
from s4mi_jax.errors import DataError
from s4mi_jax.trainers import classify, simclr
from tests.helpers import classification_config, local_config

STEPS = dict(total_steps=2, eval_every=2, log_every=2, ckpt_every=2)


def _npz(path, labels=True, n=40, channels=None):
    rng = np.random.default_rng(0)
    shape = (n, 16, 16) if channels is None else (n, 16, 16, channels)
    arrays = {"images": rng.integers(0, 255, shape).astype(np.uint8)}
    if labels is True:
        arrays["labels"] = np.arange(n) % 2
    elif labels is not None:
        arrays["labels"] = labels
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return _npz(tmp_path_factory.mktemp("npz") / "data.npz")


@pytest.fixture(scope="module")
def simclr_run(npz, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("simclr"))
    config = local_config(**STEPS, batch_size=16, **{"data.root": npz, "eval.linear_probe": True})
    results = simclr.train_and_evaluate(config, workdir)
    return workdir, results


def test_keys_of_an_npz_without_keys_are_row_numbers(npz):
    source = open_source(npz)
    assert source_keys(source) == [f"{i:08d}" for i in range(40)]
    assert source.class_names == ["0", "1"] and source.channels == 1


def test_simclr_with_labels_pretrains_and_probes(simclr_run):
    workdir, results = simclr_run
    assert results["step"] == 2 and results["train_images"] > 0
    assert any(k.startswith("linear_probe") for k in results)
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["step"] == 2


@pytest.mark.parametrize("method", ["supervised", "linear_probe", "finetune"])
def test_classification_trains_on_npz(npz, simclr_run, method, tmp_path):
    init = {} if method == "supervised" else {"init_from": simclr_run[0]}
    config = classification_config(
        method, **STEPS, batch_size=16, **{"data.root": npz, "eval.bootstrap": 10}, **init
    )
    results = classify.train_and_evaluate(config, str(tmp_path))
    assert results["method"] == method and results["best_step"] == 2
    assert results["class_names"] == ["0", "1"] and 0 <= results["test"]["auroc"] <= 1
    with open(tmp_path / "manifest.json") as f:
        manifest = json.load(f)
    used = set(manifest["splits"]["train"]) | set(manifest["splits"]["test"])
    assert used <= {f"{i:08d}" for i in range(40)} and manifest["splits"]["test"]


def test_unlabeled_npz_pretrains(tmp_path):
    root = _npz(tmp_path / "u.npz", labels=None, n=16)
    config = local_config(**STEPS, batch_size=16, **{"data.root": root})
    assert simclr.train_and_evaluate(config, str(tmp_path / "run"))["step"] == 2


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0, 1, np.nan, 1]), r"'labels' row 2 is nan; labels must be integer ids"),
        (np.array([0, 0.7, 1, 1]), r"'labels' row 1 is 0.7, not an integer class id"),
        (np.array([0, 1, 1.2, 1]), r"'labels' row 2 is 1.2, not an integer class id"),
        (np.array([0, 1, -3, 1]), r"'labels' row 2 is -3; labels are ids >= 0, or -1"),
        (np.array([0, 2, 2, 0]), r"class ids \[0, 2\] skip \[1\]"),
        (np.array(["a", "b", "a", "b"]), r"'labels' has dtype <U1; expected integer class ids"),
    ],
)
def test_bad_npz_labels_are_refused(tmp_path, labels, message):
    root = _npz(tmp_path / "bad.npz", labels=labels, n=4)
    with pytest.raises(DataError, match=message):
        open_source(root)


def test_minus_one_is_unlabeled_and_integer_floats_are_ids(tmp_path):
    source = open_source(_npz(tmp_path / "ok.npz", labels=np.array([0.0, 1.0, -1.0, 1.0]), n=4))
    assert source.labels.tolist() == [0, 1, -1, 1] and source.class_names == ["0", "1"]
