"""The command-line entry point as a user runs it: outputs, resume, SIGTERM, and clear errors on bad input."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s4mi_jax.data.sources import SAMPLE_ROOT
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "--config=configs/simclr_chest.py:local"


def run_main(*args, timeout=HANG_GUARD_S):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # One CPU device, as a user's laptop.
    return subprocess.run(
        [sys.executable, "-m", "s4mi_jax.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "w"
    proc = run_main(LOCAL, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


@pytest.mark.slow
def test_main_writes_checkpoint_metrics_results(finished_run):
    workdir, proc = finished_run
    assert "step 6/6" in proc.stdout and "img/s" in proc.stdout and "ETA" in proc.stdout
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6]
    assert all(
        np.isfinite(r["train/loss"]) and r["train/images_per_sec"] > 0
        for r in rows
        if "train/loss" in r
    )
    results = json.loads((workdir / "results.json").read_text())
    probe = results["linear_probe"]
    assert 0.0 <= probe["accuracy"] <= 1.0 and 0.0 <= probe["auroc"] <= 1.0
    assert probe["num_test"] == 64 and probe["num_train"] == 224
    config = json.loads((workdir / "config.json").read_text())
    assert config["trainer"] == "simclr" and config["total_steps"] == 6
    assert (workdir / "checkpoints" / "6").is_dir()
    assert any((workdir / "tensorboard").iterdir())


@pytest.mark.slow
def test_rerun_of_finished_run_resumes_and_changes_no_checkpoint(finished_run):
    workdir, _ = finished_run
    before = tree_digest(workdir / "checkpoints")
    proc = run_main(LOCAL, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from step 6" in proc.stdout
    assert tree_digest(workdir / "checkpoints") == before


@pytest.mark.slow
def test_sigterm_saves_and_exits_then_resumes(tmp_path):
    workdir = tmp_path / "w"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "s4mi_jax.main",
            LOCAL,
            f"--workdir={workdir}",
            "--config.total_steps=400",
            "--config.log_every=1",
            "--config.ckpt_every=1000",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: saved checkpoint at step" in out
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 3 <= saved[-1] < 400
    assert not (workdir / "results.json").exists()
    resumed = run_main(
        LOCAL,
        f"--workdir={workdir}",
        "--config.total_steps=400",
        "--config.log_every=100",
        "--config.ckpt_every=1000",
        f"--config.halt_at_step={saved[-1] + 2}",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {saved[-1]}" in resumed.stdout


def _assert_clear_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-3000:]


def test_missing_data_root_is_one_clear_error(tmp_path):
    proc = run_main(LOCAL, f"--workdir={tmp_path / 'w'}", f"--config.data.root={tmp_path / 'nope'}")
    _assert_clear_error(proc, "s4mi_jax: error:", str(tmp_path / "nope"), "config.data.root")
    assert not (tmp_path / "w").exists()  # Nothing written.


def test_empty_folder_is_one_clear_error(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    proc = run_main(LOCAL, f"--workdir={tmp_path / 'w'}", f"--config.data.root={tmp_path / 'data'}")
    _assert_clear_error(proc, "no images", str(tmp_path / "data" / "images"))
    assert not (tmp_path / "w").exists()


def test_corrupt_png_is_one_clear_error_and_existing_run_untouched(tmp_path, finished_run):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE_ROOT, data)
    victim = sorted((data / "images").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:200])  # Truncated PNG.
    workdir = tmp_path / "w"
    shutil.copytree(finished_run[0], workdir)
    before = tree_digest(workdir)
    proc = run_main(LOCAL, f"--workdir={workdir}", f"--config.data.root={data}")
    _assert_clear_error(proc, "cannot read image", str(victim))
    assert tree_digest(workdir) == before


def test_config_key_typo_is_one_clear_error(tmp_path):
    proc = run_main(LOCAL, f"--workdir={tmp_path / 'w'}", "--config.optim.base_lrr=0.1")
    _assert_clear_error(proc, "base_lrr", "base_lr")
    assert not (tmp_path / "w").exists()


def test_labels_csv_naming_missing_file_is_clear(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "images" / "a.png")
    (data / "labels.csv").write_text("filename,label\na.png,0\nb.png,1\n")
    proc = run_main(LOCAL, f"--workdir={tmp_path / 'w'}", f"--config.data.root={data}")
    _assert_clear_error(proc, "labels.csv line 3", "b.png")


def test_wrong_type_on_command_line_is_one_clear_error(tmp_path):
    proc = run_main(LOCAL, f"--workdir={tmp_path / 'w'}", "--config.batch_size=abc")
    _assert_clear_error(proc, "bad config or flag", "--config.batch_size=abc", "invalid literal")


def test_missing_config_file_is_one_clear_error(tmp_path):
    proc = run_main("--config=configs/nope.py", f"--workdir={tmp_path / 'w'}")
    _assert_clear_error(proc, "bad config file", "configs/nope.py")


def test_error_raised_under_jax_transform_is_one_line(tmp_path):
    proc = run_main(
        "--config=configs/supervised_chest.py:local",
        f"--workdir={tmp_path / 'w'}",
        "--config.model.name=resnet7",
    )
    _assert_clear_error(proc, "config.model.name='resnet7'", "['resnet18', 'resnet50', 'vit'")
    assert "For simplicity" not in proc.stderr and proc.stderr.count("\n") <= 2
