"""Checkpoints that survive damage (README "Reliability", docs/reliability.md): a damaged latest
checkpoint is moved aside and the newest intact one restored; a real disk-full (ENOSPC as TensorStore
raises it, on a tiny tmpfs) gives the one-line message and leaves the previous checkpoint intact."""

import glob
import os
import shutil
import subprocess
import uuid

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s4mi_jax.core.checkpoint import DAMAGED_DIR, Checkpointer, is_disk_full
from s4mi_jax.errors import S4MIError


def _iterator(position: int):
    it = iter(grain.MapDataset.range(100).to_iter_dataset())
    for _ in range(position):
        next(it)
    return it


def _state(step: int, n: int = 1000):
    return {"w": jnp.full((n,), float(step)), "b": jnp.arange(7.0) * step}


def _save_two(directory):
    ckpt = Checkpointer(directory, max_to_keep=3, async_save=False)
    ckpt.save(1, _state(1), _iterator(3))
    ckpt.save(2, _state(2), _iterator(5))
    ckpt.close()


def _truncate_chunks(step_dir):
    chunks = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
    assert chunks
    for path in chunks:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def _empty_manifest(step_dir):
    for path in glob.glob(os.path.join(step_dir, "state", "**", "manifest.ocdbt"), recursive=True):
        open(path, "wb").close()


def _drop_iterator(step_dir):
    for path in glob.glob(os.path.join(step_dir, "data_iter", "*.json")):
        os.remove(path)


@pytest.mark.parametrize("damage", [_truncate_chunks, _empty_manifest, _drop_iterator])
def test_damaged_latest_falls_back_to_previous(tmp_path, capsys, damage):
    directory = str(tmp_path / "checkpoints")
    _save_two(directory)
    damage(os.path.join(directory, "2"))
    ckpt = Checkpointer(directory, async_save=False)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))
    it = _iterator(0)
    state = ckpt.restore(abstract, it)
    np.testing.assert_array_equal(state["w"], _state(1)["w"])
    assert next(it) == 3  # The iterator is at step 1's position, not step 2's.
    assert ckpt.latest_step() == 1
    out = capsys.readouterr().out
    assert f"checkpoint 2 in {directory} is damaged" in out and "resumed from step 1" in out
    moved = tmp_path / DAMAGED_DIR / "2"
    assert moved.is_dir() and not (tmp_path / "checkpoints" / "2").exists()  # Kept, not deleted.
    ckpt.close()


def test_no_intact_checkpoint_moves_nothing(tmp_path):
    directory = str(tmp_path / "checkpoints")
    _save_two(directory)
    for step in ("1", "2"):
        _truncate_chunks(os.path.join(directory, step))
    ckpt = Checkpointer(directory, async_save=False)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))
    with pytest.raises(
        S4MIError, match=r"cannot restore checkpoint 2 in .*nor any older one \[1\]"
    ):
        ckpt.restore(abstract, _iterator(0))
    assert sorted(os.listdir(directory)) == ["1", "2"]
    assert not (tmp_path / DAMAGED_DIR).exists()


def test_disk_full_errors_are_recognised():
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(ValueError("RESOURCE_EXHAUSTED: Error writing ... [os_error_code='28']"))
    assert not is_disk_full(ValueError("INVALID_ARGUMENT: shape mismatch"))


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 1 MiB tmpfs (root and a mount namespace that allows it; else the test is skipped)."""
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
            capture_output=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=120)


@pytest.mark.parametrize("async_save", [False, True])
def test_real_disk_full_keeps_previous_checkpoint(tiny_filesystem, async_save):
    """ENOSPC produced by the kernel and reported by TensorStore, not a hand-made OSError."""
    directory = str(tiny_filesystem / "checkpoints")
    rng = np.random.default_rng(0)
    big = {
        "w": jnp.asarray(rng.standard_normal(150_000).astype(np.float32))
    }  # 600 KB, incompressible
    ckpt = Checkpointer(directory, max_to_keep=2, async_save=async_save)
    ckpt.save(1, big, _iterator(2))
    ckpt.wait()
    with pytest.raises(S4MIError) as info:
        ckpt.save(2, {"w": big["w"] + 1}, _iterator(4))
        ckpt.wait()
    message = str(info.value)
    assert message == (
        f"could not save checkpoint 2 in {directory}: [Errno 28] No space left on device. The "
        "previous checkpoint (step 1) is intact; free space and rerun to resume from it."
    )
    # The previous checkpoint restores exactly, after space was freed.
    for tmp in glob.glob(os.path.join(directory, "*.orbax-checkpoint-tmp*")):
        shutil.rmtree(tmp)
    again = Checkpointer(directory, async_save=False)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), big)
    it = _iterator(0)
    restored = again.restore(abstract, it)
    np.testing.assert_array_equal(restored["w"], big["w"])
    assert again.latest_step() == 1 and next(it) == 2
    again.close()


def _raw_params(directory, step):
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(directory)
    raw = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return raw["state"]["params"]


def test_training_resumes_from_previous_when_latest_is_damaged(tmp_path, capsys):
    """A run whose last checkpoint (step 4) lost half of each chunk resumes from step 2, keeps the
    damaged one aside, and ends with exactly the parameters of the undamaged run."""
    from s4mi_jax.trainers import simclr
    from tests.helpers import local_config

    workdir = tmp_path / "run"
    config = dict(total_steps=4, ckpt_every=2, log_every=2, batch_size=16, keep_ckpts=3)
    config["eval.linear_probe"] = False
    simclr.train_and_evaluate(local_config(**config), str(workdir))
    ckpts = workdir / "checkpoints"
    shutil.copytree(ckpts / "4", tmp_path / "original" / "4")
    _truncate_chunks(str(ckpts / "4"))
    capsys.readouterr()
    simclr.train_and_evaluate(local_config(**config), str(workdir))
    out = capsys.readouterr().out
    assert "checkpoint 4 in" in out and "is damaged" in out and "resumed from step 2" in out
    assert (workdir / DAMAGED_DIR / "4").is_dir()
    got, want = _raw_params(str(ckpts), 4), _raw_params(str(tmp_path / "original"), 4)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_disk_full_during_training_is_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    """`s4mi_jax.main` (in-process, as `python -m` runs it) on a workdir on an 8 MiB tmpfs: a run
    halted at step 2, the disk then filled to 300 KB free, the resumed run's save at step 4 fails
    with the kernel's ENOSPC: exit 2, the one documented line, checkpoint 2 unchanged, and no
    "saved checkpoint at step 4" claim."""
    from tests.test_bad_inputs_catalogue import run_main, tree_digest

    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=False
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        workdir = mount / "w"
        args = [
            "--config=configs/simclr_chest.py:local",
            f"--workdir={workdir}",
            "--config.total_steps=6",
            "--config.ckpt_every=2",
            "--config.log_every=2",
            "--config.batch_size=16",
            "--config.eval.linear_probe=False",
            "--config.data.verify=False",
        ]
        code, out, err = run_main([*args, "--config.halt_at_step=2"])
        assert code == 0 and "saved checkpoint at step 2" in out, err
        saved = tree_digest(workdir / "checkpoints" / "2")
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        with open(mount / "filler", "wb") as f:
            f.write(b"\0" * (free - 300 * 1024))
        code, out, err = run_main([*args, "--config.halt_at_step=4"])
        assert code == 2, (out, err)
        assert err == (
            f"s4mi_jax: error: could not save checkpoint 4 in {workdir}/checkpoints: [Errno 28] No "
            "space left on device. The previous checkpoint (step 2) is intact; free space and rerun "
            "to resume from it.\n"
        )
        assert "saved checkpoint at step 4" not in out
        assert tree_digest(workdir / "checkpoints" / "2") == saved
    finally:
        # Lazy: the failed run's Orbax threads may still hold files open in this process.
        subprocess.run(["umount", "-l", str(mount)], check=False)
