"""Segmentation: `data.eval_root` replaces only the test split, and `s4mi_jax.score` re-scores a finished
run exactly (its own test split; an external image+mask folder as a run trained with it as `eval_root`;
`predict`'s masks as the checkpoint)."""

from __future__ import annotations

import json
import math
import os

import pytest

from configs import common
from s4mi_jax import predict, score
from s4mi_jax.errors import DataError
from s4mi_jax.trainers import segment
from tests.helpers import make_seg_folder, override

N_EVAL = 6  # Images of the external folder; one has no mask, so 5 are scored.


def _same(a: dict, b: dict) -> None:
    """Exactly equal metric dicts (NaN equals NaN)."""
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), (k, a[k], b[k])


def _config(root, **overrides):
    return override(
        common.segmentation_config("segment", "local"),
        **{
            "data.root": root,
            "aug.image_size": 16,
            "label_fraction": 0.5,
            "total_steps": 2,
            "eval.batch_size": 8,
            "eval.overlays": 0,
            **overrides,
        },
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished 2-step supervised U-Net runs on 32x32 images at model size 16, without and with
    `data.eval_root` (a separate folder of 6 images, 5 with a mask)."""
    tmp = tmp_path_factory.mktemp("score_seg")
    root = make_seg_folder(tmp / "data", n=20, size=32, unlabeled=(1, 2, 3))
    folder = make_seg_folder(tmp / "external", n=N_EVAL, size=32, unlabeled=(0,), seed=7)
    plain, external = str(tmp / "plain"), str(tmp / "external_run")
    r_plain = segment.train_and_evaluate(_config(root), plain)
    r_ext = segment.train_and_evaluate(_config(root, **{"data.eval_root": folder}), external)
    return dict(
        root=root, folder=folder, plain=plain, external=external, r_plain=r_plain, r_ext=r_ext
    )


def test_eval_root_replaces_only_the_test_split(runs):
    r_plain, r_ext = runs["r_plain"], runs["r_ext"]
    manifests = []
    for run in (runs["plain"], runs["external"]):
        with open(os.path.join(run, "manifest.json")) as f:
            manifests.append(json.load(f))
    assert manifests[0] == manifests[1] and r_plain["manifest_hash"] == r_ext["manifest_hash"]
    for k in ("num_train", "num_val", "num_unlabeled"):
        assert r_plain[k] == r_ext[k]
    assert r_plain["num_test"] == len(manifests[0]["splits"]["test"])
    assert r_ext["num_test"] == N_EVAL - 1  # The folder's images with a mask.
    with open(os.path.join(runs["external"], "test_per_image.json")) as f:
        keys = [row["key"] for row in json.load(f)]
    assert keys == [f"im{i:02d}.png" for i in range(1, N_EVAL)]
    assert "eval_dataset" in r_ext["provenance"]


def test_bad_eval_root_stops_before_anything_is_written(runs, tmp_path):
    no_masks = make_seg_folder(tmp_path / "no_masks", n=3, size=32, unlabeled=(0, 1, 2))
    os.rmdir(os.path.join(no_masks, "masks"))
    workdir = tmp_path / "run"
    config = _config(runs["root"], **{"data.eval_root": no_masks})
    with pytest.raises(DataError, match=r"config\.data\.eval_root=.* has no masks/ folder"):
        segment.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_score_reproduces_the_runs_own_test_metrics(runs):
    for run, results in ((runs["plain"], runs["r_plain"]), (runs["external"], runs["r_ext"])):
        scored = score.score(run, log=lambda m: None)
        assert scored["num_test"] == results["num_test"]
        _same(scored["test"], results["test"])


def test_score_on_a_folder_equals_a_run_trained_with_it_as_eval_root(runs):
    scored = score.score(runs["plain"], data_root=runs["folder"], log=lambda m: None)
    assert scored["num_test"] == N_EVAL - 1
    _same(scored["test"], runs["r_ext"]["test"])


def test_score_of_predict_masks_equals_the_checkpoint(runs, tmp_path):
    folder = runs["folder"]
    report = predict.run(runs["plain"], [folder], str(tmp_path), log=lambda m: None)
    assert len(report.predicted) == N_EVAL
    from_masks = score.score(
        runs["plain"], data_root=folder, predictions_dir=str(tmp_path), log=lambda m: None
    )
    from_model = score.score(runs["plain"], data_root=folder, log=lambda m: None)
    _same(from_masks["test"], from_model["test"])
    assert "dice" in score.table(from_masks)


def test_bad_inputs_are_one_line_and_exit_2(runs, tmp_path, capsys):
    from absl import flags

    no_masks = make_seg_folder(tmp_path / "no_masks", n=2, size=32, unlabeled=(0, 1))
    os.rmdir(os.path.join(no_masks, "masks"))
    partial = tmp_path / "partial"
    predict.run(
        runs["plain"], [os.path.join(runs["folder"], "images", "im01.png")], str(partial),
        log=lambda m: None,
    )  # fmt: skip
    cases = {
        "has no masks/ folder": [f"--data_root={no_masks}"],
        "no prediction for 4 of the 5": [
            f"--data_root={runs['folder']}",
            f"--predictions={partial}",
        ],
        "one network; leave it out": ["--network=transformer"],
    }
    for expected, args in cases.items():
        fv = flags.FlagValues()
        score.define_flags(fv)
        fv(["score", f"--workdir={runs['plain']}", *args])
        with pytest.raises(SystemExit) as exit_info:
            score.main(["score"], fv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(lines) == 1, (expected, lines)
        assert lines[0].startswith("score: error: ") and expected in lines[0], (expected, lines)
