"""Nothing lost, nothing silent, through the real commands (issue "nothing lost" of the project):

- data folders are never written: `--workdir` inside `config.data.root`, `predict --output` equal to its
  input (a segmentation folder's hand-drawn masks) or to the folder beside its `images/`;
- Ctrl-C pressed at a real terminal saves the current step and exits 130 with one line; a second one
  exits at once and the latest committed checkpoint still restores; before the first step nothing is
  left behind;
- a refused start (wrong `init_from` width, a truncated weights file, a U-Net run as the encoder source)
  leaves nothing that blocks the corrected command in the same workdir;
- no traceback after the work is done: config values that used to fail only after training (seed,
  select_metric, empty probe/validation/test splits) are refused before anything is written; a
  metrics.jsonl with a non-UTF-8 byte resumes; a damaged `best/` falls back in predict and in the run;
  a full disk under `predict --output` is one line;
- messages name the file, key and fix (a config file whose get_config raises; an encoder-less run).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from configs import common
from s4mi_jax.data.sources import SAMPLE_ROOT
from s4mi_jax.trainers import classify, segment, simclr
from tests.helpers import (
    HANG_GUARD_S,
    classification_config,
    local_config,
    make_seg_folder,
    override,
)
from tests.terminal import CTRL_C, python_module, run_in_terminal

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # One CPU device, as a user's laptop.
    return env


def command(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def digest(path: Path) -> dict[str, str]:
    """Every file under `path` (names and bytes): a data folder must stay byte-identical."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def one_line_error(proc: subprocess.CompletedProcess, prefix: str, *needles: str) -> str:
    """Exit 2, no traceback, the last stderr line is the error and names what it must."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert line.startswith(prefix), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture(scope="module")
def chest(tmp_path_factory) -> Path:
    """A copy of the embedded chest X-ray sample (so its bytes can be compared before and after)."""
    root = tmp_path_factory.mktemp("data") / "chest"
    shutil.copytree(SAMPLE_ROOT, root)
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, chest) -> Path:
    """A finished 2-step `:local` SimCLR run (width 8), no probe."""
    workdir = tmp_path_factory.mktemp("ssl") / "w"
    config = local_config(total_steps=2, **{"data.root": str(chest), "eval.linear_probe": False})
    simclr.TRAINER.train_and_evaluate(config, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """A segmentation folder and a finished 2-step supervised U-Net run on it (best/ at step 2)."""
    tmp = tmp_path_factory.mktemp("seg")
    root = Path(make_seg_folder(tmp / "data", n=20, size=32))
    config = override(
        common.segmentation_config("segment", "local"),
        **{
            "data.root": str(root),
            "aug.image_size": 16,
            "total_steps": 2,
            "eval.batch_size": 8,
            "eval.overlays": 0,
        },
    )
    workdir = tmp / "run"
    segment.TRAINER.train_and_evaluate(config, str(workdir))
    assert (workdir / "best").is_dir()
    return root, workdir


# --- Data folders are never written ------------------------------------------------------------


@pytest.mark.parametrize("where", [".", "run1", "images/run"])
def test_workdir_inside_the_data_folder_is_refused(chest, where):
    before = digest(chest)
    workdir = chest / where
    proc = command(
        "s4mi_jax.main",
        "--config=configs/supervised_chest.py:local",
        f"--config.data.root={chest}",
        f"--workdir={workdir}",
    )
    one_line_error(
        proc, "s4mi_jax: error: --workdir=", "inside the data folder", "config.data.root"
    )
    assert digest(chest) == before


def test_predict_never_writes_over_the_masks_of_its_input(seg, tmp_path):
    root, workdir = seg
    before = digest(root)
    for inp, out in [(root, root), (root / "images", root), (root, root / "masks")]:
        proc = command(
            "s4mi_jax.predict", f"--workdir={workdir}", f"--input={inp}", f"--output={out}"
        )
        one_line_error(proc, "predict: error: --output=")
    # A folder holding masks predict did not write (a copy of the ground truth) is refused too.
    foreign = tmp_path / "out"
    shutil.copytree(root / "masks", foreign / "masks")
    proc = command(
        "s4mi_jax.predict", f"--workdir={workdir}", f"--input={root}", f"--output={foreign}"
    )
    one_line_error(proc, "predict: error: --output=", "did not write")
    assert digest(root) == before
    # ... while predicting again into predict's own output replaces its masks.
    fresh = tmp_path / "fresh"
    for _ in range(2):
        proc = command(
            "s4mi_jax.predict", f"--workdir={workdir}", f"--input={root}", f"--output={fresh}"
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((fresh / "masks").iterdir())) == 20


# --- Ctrl-C at a real terminal -----------------------------------------------------------------

TRAIN = [
    "--config=configs/simclr_chest.py:local",
    "--config.total_steps=400",
    "--config.log_every=1",
    "--config.ckpt_every=2",
    "--config.eval.linear_probe=False",
]


def _keys_at(*triggers: str):
    """A `react` for run_in_terminal: one Ctrl-C when each trigger text first appears, in order."""
    pending = list(triggers)

    def react(output: str) -> bytes | None:
        if pending and pending[0] in output:
            pending.pop(0)
            return CTRL_C
        return None

    return react


def _saved(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def test_ctrl_c_saves_the_current_step_and_exits_130_then_resumes(chest, tmp_path):
    workdir = tmp_path / "w"
    args = [*TRAIN, f"--config.data.root={chest}", f"--workdir={workdir}"]
    done = run_in_terminal(
        python_module("s4mi_jax.main", *args), _keys_at("step 3/"), cwd=str(ROOT), env=_env()
    )
    assert done.returncode == 130, done.output[-3000:]
    assert "Traceback" not in done.output, done.output[-3000:]
    last = [ln for ln in done.output.splitlines() if ln.strip()][-1]
    step = _saved(workdir)[-1]
    assert (
        last == f"interrupted: saved checkpoint at step {step}; rerun the same command to resume."
    )
    assert 3 <= step < 400
    resumed = command("s4mi_jax.main", *args, f"--config.halt_at_step={step + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {step} " in resumed.stdout
    assert "damaged" not in resumed.stdout


def test_second_ctrl_c_exits_at_once_and_the_saved_checkpoints_restore(chest, tmp_path):
    workdir = tmp_path / "w"
    args = [*TRAIN, f"--config.data.root={chest}", f"--workdir={workdir}"]
    done = run_in_terminal(
        python_module("s4mi_jax.main", *args),
        _keys_at("step 5/", "interrupt: finishing the current step"),
        cwd=str(ROOT),
        env=_env(),
    )
    assert done.returncode == 130, done.output[-3000:]
    assert "Traceback" not in done.output, done.output[-3000:]
    assert "interrupted again: exiting now without saving" in done.output
    saved = _saved(workdir)
    assert saved, done.output[-3000:]
    resumed = command("s4mi_jax.main", *args, f"--config.halt_at_step={saved[-1] + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {saved[-1]} " in resumed.stdout
    assert "damaged" not in resumed.stdout


def test_ctrl_c_before_the_first_step_leaves_nothing(chest, tmp_path):
    workdir = tmp_path / "w"
    args = [*TRAIN, f"--config.data.root={chest}", f"--workdir={workdir}"]
    done = run_in_terminal(
        python_module("s4mi_jax.main", *args), _keys_at("device(s) in"), cwd=str(ROOT), env=_env()
    )
    assert done.returncode == 130, done.output[-3000:]
    assert "Traceback" not in done.output, done.output[-3000:]
    last = [ln for ln in done.output.splitlines() if ln.strip()][-1].split("^C")[-1]
    if last.startswith("interrupted: saved checkpoint at step 1;"):  # It landed in the first step.
        assert _saved(workdir) == [1]
    else:
        assert last.startswith("interrupted before the first step; nothing was saved"), last
        assert not workdir.exists() or not any(workdir.iterdir())


def test_ctrl_c_in_predict_keeps_every_finished_prediction(seg, tmp_path):
    root, workdir = seg
    many = tmp_path / "many"
    many.mkdir()
    for k in range(300):  # Enough chunks that the Ctrl-C lands while predicting.
        shutil.copy(root / "images" / "im00.png", many / f"x{k:03d}.png")
    out = tmp_path / "out"
    args = [f"--workdir={workdir}", f"--input={many}", f"--output={out}", "--batch_size=2"]
    done = run_in_terminal(
        python_module("s4mi_jax.predict", *args), _keys_at("predict: 300 file(s)"), cwd=str(ROOT),
        env=_env(),
    )  # fmt: skip
    assert "Traceback" not in done.output, done.output[-3000:]
    if done.returncode == 0:
        pytest.skip("predict finished before the Ctrl-C landed")
    assert done.returncode == 130, done.output[-3000:]
    assert "predict: interrupted; the predictions finished so far are kept" in done.output
    from PIL import Image

    pngs = sorted((out / "masks").glob("*.png")) if (out / "masks").exists() else []
    rows = (out / "masks.csv").read_text().splitlines()[1:] if (out / "masks.csv").exists() else []
    assert len(rows) == len(pngs)
    for p in pngs:  # Whole files only: each reads back.
        assert Image.open(p).size == (32, 32)
    assert not list(out.rglob("*.tmp*"))


# --- A refused start leaves nothing that blocks its fix -----------------------------------------


def test_refused_init_from_leaves_nothing_and_the_fix_runs_in_the_same_workdir(
    chest, pretrained, seg, tmp_path
):
    workdir = tmp_path / "ft"
    base = [
        "--config=configs/finetune_chest.py:local",
        f"--config.data.root={chest}",
        f"--workdir={workdir}",
        "--config.total_steps=1",
    ]
    weights = tmp_path / "encoder.safetensors"
    exported = command("s4mi_jax.export_weights", f"--init_from={pretrained}", f"--out={weights}")
    assert exported.returncode == 0, exported.stderr[-3000:]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[:3000])
    _, unet_run = seg
    for bad, needles in [
        (["--config.model.width=16", f"--config.init_from={pretrained}"], ["model.width=8"]),
        ([f"--config.init_from={truncated}"], ["cannot read weights", str(truncated)]),
        ([f"--config.init_from={unet_run}"], ["holds no encoder"]),
    ]:
        proc = command("s4mi_jax.main", *base, *bad)
        one_line_error(proc, "s4mi_jax: error: ", *needles)
        assert not workdir.exists(), list(workdir.iterdir())
    fixed = command("s4mi_jax.main", *base, f"--config.init_from={pretrained}")
    assert fixed.returncode == 0, fixed.stderr[-3000:]


def test_local_pretraining_finetuned_without_local_names_the_width(chest, pretrained, tmp_path):
    proc = command(
        "s4mi_jax.main",
        "--config=configs/finetune_chest.py",
        f"--config.init_from={pretrained}",
        f"--config.data.root={chest}",
        f"--workdir={tmp_path / 'ft'}",
    )
    one_line_error(proc, "s4mi_jax: error: config.init_from=", "model.width=8", ":local")
    assert not (tmp_path / "ft").exists()


def test_start_failing_after_writing_removes_what_it_wrote(chest, tmp_path):
    """A real full disk during the start (a tmpfs with a few pages free): at every size, the run
    either starts or fails with nothing of it left in the workdir, and an earlier file is kept."""
    mount = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    from s4mi_jax.errors import S4MIError

    try:
        outcomes = set()
        for pages in (1, 2, 3, 4, 6, 8, 12):
            workdir = mount / f"w{pages}"
            workdir.mkdir()
            (workdir / "notes.txt").write_text("mine")  # The user's: never removed.
            filler = mount / "filler"
            filler.unlink(missing_ok=True)
            free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, free - pages * 4096))
            config = classification_config(
                "supervised",
                total_steps=1,
                ckpt_every=0,
                **{"data.root": str(chest), "eval.bootstrap": 2},
            )
            try:
                classify.TRAINER.train_and_evaluate(config, str(workdir))
                outcomes.add("ran")
            except S4MIError as e:
                message = str(e)
                left = sorted(p.name for p in workdir.iterdir())
                assert "No space left on device" in message, message
                assert "notes.txt" in left
                if left == ["notes.txt"]:  # Failed at start: all of it removed, the user's kept.
                    outcomes.add("failed at start")
                else:  # Failed once training had begun: what it wrote is kept, and said.
                    assert "checkpoint" in message, message
                    outcomes.add("failed after the first step")
            shutil.rmtree(workdir, ignore_errors=True)  # Orbax may still be closing a failed save.
        assert "failed at start" in outcomes, outcomes
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# --- No traceback after the work is done --------------------------------------------------------


@pytest.mark.parametrize(
    "config, flags, needles",
    [
        ("supervised_chest.py:local", ["--config.seed=-1"], ["config.seed=-1"]),
        ("supervised_chest.py:local", ["--config.data.channels=-1"], ["config.data.channels=-1"]),
        ("simclr_chest.py:local", ["--config.data.split_seed=-3"], ["config.data.split_seed=-3"]),
        ("supervised_chest.py:local", ["--config.select_metric=dice"], ["config.select_metric='dice'", "auroc"]),
        ("supervised_chest.py:local", ["--config.data.val_fraction=0"], ["config.data.val_fraction=0"]),
        ("supervised_chest.py:local", ["--config.data.test_fraction=0"], ["config.data.test_fraction=0"]),
        ("simclr_chest.py:local", ["--config.data.val_fraction=0", "--config.data.test_fraction=0"],
         ["config.data.test_fraction=0", "linear_probe"]),
    ],
)  # fmt: skip
def test_values_that_failed_after_training_are_refused_before_anything_is_written(
    chest, tmp_path, config, flags, needles
):
    workdir = tmp_path / "w"
    proc = command(
        "s4mi_jax.main",
        f"--config=configs/{config}",
        f"--config.data.root={chest}",
        f"--workdir={workdir}",
        *flags,
    )
    one_line_error(proc, "s4mi_jax: error: config.", *needles)
    assert not workdir.exists()


def test_metrics_jsonl_with_a_non_utf8_byte_resumes(pretrained, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(pretrained, workdir)
    path = workdir / "metrics.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 1
    path.write_bytes(lines[0][:5] + b"\xff\xfe" + lines[0][5:] + b"".join(lines[1:]))
    (workdir / "results.json").unlink()
    proc = command(
        "s4mi_jax.main",
        "--config=configs/simclr_chest.py:local",
        f"--config.data.root={json.loads((workdir / 'config.json').read_text())['data']['root']}",
        f"--workdir={workdir}",
        "--config.total_steps=2",
        "--config.eval.linear_probe=False",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dropped 1 damaged line(s)" in proc.stdout
    assert (workdir / "results.json").exists()
    for line in path.read_bytes().splitlines():
        json.loads(line.decode("utf-8"))


def _truncate_chunks(step_dir: Path) -> None:
    chunks = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
    assert chunks
    for path in chunks:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def test_predict_with_a_damaged_best_checkpoint_falls_back_to_the_latest(seg, tmp_path):
    root, workdir = seg
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    best = sorted((run / "best").iterdir())[0]
    _truncate_chunks(best)
    before = digest(run)
    out = tmp_path / "out"
    proc = command("s4mi_jax.predict", f"--workdir={run}", f"--input={root}", f"--output={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"warning: checkpoint {best} (" in proc.stderr and "is damaged; using" in proc.stderr
    assert len(list((out / "masks").iterdir())) == 20
    assert digest(run) == before  # predict only reads the run.


def test_run_tests_the_final_weights_when_its_best_checkpoint_is_damaged(chest, tmp_path):
    workdir = tmp_path / "w"
    args = [
        "--config=configs/supervised_chest.py:local",
        f"--config.data.root={chest}",
        f"--workdir={workdir}",
        "--config.total_steps=2",
        "--config.eval.bootstrap=2",
    ]
    first = command("s4mi_jax.main", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    best = sorted((workdir / "best").iterdir())[0]
    _truncate_chunks(best)
    (workdir / "results.json").unlink()
    again = command("s4mi_jax.main", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert (
        f"WARNING: the best checkpoint {best.name} in {workdir / 'best'} is damaged" in again.stdout
    )
    assert (workdir / "checkpoints_damaged" / f"best_{best.name}").is_dir()  # Moved, not deleted.
    results = json.loads((workdir / "results.json").read_text())
    assert results["best_step"] is None and np.isfinite(results["test"]["accuracy"])


def test_predict_output_on_a_full_disk_is_one_line(seg, tmp_path):
    root, workdir = seg
    mount = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        proc = command(
            "s4mi_jax.predict", f"--workdir={workdir}", f"--input={root}", f"--output={mount}/out"
        )
        one_line_error(proc, "predict: error: --output=", "No space left on device")
        assert not list(mount.rglob("*.tmp*"))  # No half-written file.
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# --- Messages that name the file, key and fix ---------------------------------------------------


def test_a_config_file_whose_get_config_raises_is_named(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "import ml_collections\n\n\ndef get_config(arg=None):\n"
        "    config = ml_collections.ConfigDict()\n    return config['learning_rate']\n"
    )
    proc = command("s4mi_jax.main", f"--config={path}", f"--workdir={tmp_path / 'w'}")
    one_line_error(
        proc, "s4mi_jax: error: bad config file", str(path), "line 6", "KeyError", "learning_rate"
    )


def test_a_unet_run_as_an_encoder_source_is_named_with_each_commands_flags(seg, tmp_path):
    _, workdir = seg
    proc = command(
        "s4mi_jax.export_weights", f"--init_from={workdir}", f"--out={tmp_path / 'e.npz'}"
    )
    line = one_line_error(proc, "export_weights: error: --init_from=", "holds no encoder")
    assert "config.init_encoder" not in line
    assert not (tmp_path / "e.npz").exists()


def test_the_data_cache_is_never_written_into_its_data_folder(chest):
    before = digest(chest)
    proc = command("s4mi_jax.data.cache", f"--root={chest}", f"--out={chest / 'cache.npz'}")
    one_line_error(proc, "s4mi_jax.data.cache: error: --out=", "inside the data folder")
    assert digest(chest) == before
