"""Data facts a run states instead of passing over in silence: segmentation images without a mask
(a supervised run does not use them) and an external test folder (`config.data.eval_root`) that
holds training images (the test would measure memorisation)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs import common
from s4mi_jax.core import sharding
from s4mi_jax.data import sources
from s4mi_jax.data.sources import SAMPLE_ROOT, open_source
from s4mi_jax.trainers import classify, cross_teaching, fixmatch_seg, segment
from tests.helpers import HANG_GUARD_S, classification_config, make_seg_folder, override

ROOT = Path(__file__).resolve().parents[1]


def run_main(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "s4mi_jax.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def _no_mask_line(root: str, missing: int, total: int) -> str:
    return f"warning: {missing} of {total} images in {root}/images have no mask in {root}/masks"


# ---- Segmentation images without masks -------------------------------------------------------


def test_supervised_seg_run_says_how_many_images_have_no_mask(tmp_path):
    root = make_seg_folder(tmp_path / "seg", n=16, size=32, unlabeled=(1, 5, 9))
    proc = run_main(
        "--config=configs/supervised_seg_ph2.py:local",
        f"--config.data.root={root}",
        f"--workdir={tmp_path / 'run'}",
        "--config.total_steps=1",
        "--config.aug.image_size=16",
        "--config.eval.batch_size=8",
        "--config.eval.overlays=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "have no mask" in line]
    assert len(lines) == 1, proc.stdout[-3000:]
    assert lines[0].startswith(_no_mask_line(root, 3, 16)), lines[0]
    assert "uses only the 13 with masks" in lines[0]


def _seg_config(trainer: str, root: str):
    return override(
        common.segmentation_config(trainer, "local"),
        **{"data.root": root, "aug.image_size": 16, "label_fraction": 0.5},
    )


@pytest.mark.parametrize("name", ["fixmatch_seg", "cross_teaching"])
def test_semi_supervised_seg_uses_those_images_and_says_nothing(tmp_path, capsys, name):
    """FixMatch and cross teaching train on the mask-less images (unlabeled): no warning. The
    supervised task on the same data warns (the control: the warning is where tasks are built)."""
    root = make_seg_folder(tmp_path / "seg", n=16, size=32, unlabeled=(1, 5, 9))
    mesh = sharding.make_mesh(common.run_config().mesh, devices=jax.devices()[:1])
    trainer = {"fixmatch_seg": fixmatch_seg, "cross_teaching": cross_teaching}[name]
    config = _seg_config(name, root)
    trainer.task(config, segment.load_data(config), mesh)
    assert "have no mask" not in capsys.readouterr().out
    config = _seg_config("segment", root)
    segment.supervised_task(config, segment.load_data(config), mesh)
    assert _no_mask_line(root, 3, 16) in capsys.readouterr().out


# ---- eval_root overlapping the training images -----------------------------------------------


def _held_out_folder(folder: Path, copies: list[str], n_new: int) -> Path:
    """A labeled test folder: byte copies of the sample's `copies` plus `n_new` new images."""
    (folder / "images").mkdir(parents=True)
    rows = ["filename,label"]
    labels = dict(
        line.split(",") for line in (Path(SAMPLE_ROOT) / "labels.csv").read_text().split()[1:]
    )
    for name in copies:
        shutil.copyfile(Path(SAMPLE_ROOT) / "images" / name, folder / "images" / f"copy_{name}")
        rows.append(f"copy_{name},{labels[name]}")
    rng = np.random.default_rng(0)
    for i in range(n_new):
        Image.fromarray(rng.integers(0, 255, (40, 40), np.uint8)).save(
            folder / "images" / f"new{i}.png"
        )
        rows.append(f"new{i}.png,{i % 2}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_classification_eval_root_with_copies_of_training_images_warns(tmp_path):
    names = sorted(os.listdir(Path(SAMPLE_ROOT) / "images"))[:3]
    eval_root = _held_out_folder(tmp_path / "test", names, 2)
    proc = run_main(
        "--config=configs/supervised_chest.py:local",
        f"--config.data.eval_root={eval_root}",
        f"--workdir={tmp_path / 'run'}",
        "--config.total_steps=1",
        "--config.aug.image_size=16",
        "--config.eval.bootstrap=10",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "also training images" in line]
    assert len(lines) == 1, proc.stdout[-3000:]
    assert lines[0].startswith(
        f"warning: config.data.eval_root={eval_root}: 3 of 5 images are also training images in "
        f"config.data.root={SAMPLE_ROOT} (same path or same bytes), e.g. copy_{names[0]}"
    ), lines[0]
    assert "memorisation" in lines[0]


def test_classification_eval_root_equal_to_root_warns(capsys):
    config = classification_config(
        "supervised", **{"data.eval_root": SAMPLE_ROOT, "data.root": SAMPLE_ROOT + "/"}
    )
    classify.load_data(config)
    out = capsys.readouterr().out
    n = len(open_source(SAMPLE_ROOT, verify=False).files)
    assert f"warning: config.data.eval_root={SAMPLE_ROOT}: {n} of {n} images are also" in out


def test_held_out_eval_root_says_nothing(tmp_path):
    train = open_source(SAMPLE_ROOT, verify=False)
    held_out = open_source(str(_held_out_folder(tmp_path / "test", [], 3)), verify=False)
    assert sources.eval_overlap_warning(held_out, train) is None
    # Same size, other bytes: hashed, and not a match.
    size = os.path.getsize(train.files[0])
    other = tmp_path / "other" / "images"
    other.mkdir(parents=True)
    data = bytearray((Path(train.files[0])).read_bytes())
    data[-1] ^= 0xFF
    (other / "x.png").write_bytes(bytes(data))
    assert os.path.getsize(other / "x.png") == size
    assert sources.eval_overlap_warning(open_source(str(other.parent), verify=False), train) is None


def test_segmentation_eval_root_equal_to_root_warns(tmp_path, capsys):
    root = make_seg_folder(tmp_path / "seg", n=8, size=32)
    config = override(_seg_config("segment", root), **{"data.eval_root": root})
    segment.load_data(config)
    out = capsys.readouterr().out
    assert f"warning: config.data.eval_root={root}: 8 of 8 images are also training images" in out
