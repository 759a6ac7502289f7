"""The sweep runner's plan and its resumability (dry runs: no training)."""

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from absl import flags

from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


def _sweep_module():
    """launch/sweep.py, loaded once per process (it defines absl flags) even if this file is
    imported under two names."""
    if "s4mi_launch_sweep" in sys.modules:
        return sys.modules["s4mi_launch_sweep"]
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "launch" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["s4mi_launch_sweep"] = module
    return module


def test_plan_pretrains_once_per_seed_before_its_cells():
    sweep = _sweep_module()
    runs = sweep.plan(
        "S",
        data_root="D",
        variant="local",
        fractions=["0.01", "1.0"],
        seeds=["0", "1"],
        methods=["supervised", "finetune"],
        pretrain_config="configs/simclr_chest.py",
        pretrain_overrides=["total_steps=9"],
        cell_overrides=["total_steps=5"],
    )
    workdirs = [w for w, _ in runs]
    assert len(runs) == 2 * (1 + 2 * 2)
    assert workdirs[0] == "S/pretrain/seed_0" and workdirs[5] == "S/pretrain/seed_1"
    by_dir = dict(runs)
    cell = by_dir["S/finetune/frac_0.01/seed_1"]
    assert "--config=configs/finetune_chest.py:local,label_fraction=0.01,seed=1" in cell
    assert "--config.init_from=S/pretrain/seed_1" in cell and "--config.total_steps=5" in cell
    assert "--config.data.root=D" in cell
    assert not any(
        a.startswith("--config.init_from") for a in by_dir["S/supervised/frac_1.0/seed_0"]
    )
    assert "--config.total_steps=9" in by_dir["S/pretrain/seed_0"]
    # Only methods that need pretraining trigger it.
    plain = sweep.plan(
        "S",
        data_root=None,
        variant="",
        fractions=["0.1"],
        seeds=["0"],
        methods=["supervised"],
        pretrain_config="p.py",
        pretrain_overrides=[],
        cell_overrides=[],
    )
    assert plain == [
        (
            "S/supervised/frac_0.1/seed_0",
            [
                "--config=configs/supervised_chest.py:label_fraction=0.1,seed=0",
                "--workdir=S/supervised/frac_0.1/seed_0",
            ],
        )
    ]


def test_dry_run_marks_finished_cells_as_skipped(tmp_path):
    done = tmp_path / "supervised" / "frac_0.1" / "seed_0"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch" / "sweep.py"),
            f"--sweep_dir={tmp_path}",
            "--methods=supervised",
            "--fractions=0.1,1.0",
            "--seeds=0",
            "--dry_run",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 2
    assert "done, skipped" in out[0] and "frac_0.1" in out[0]
    assert "done, skipped" not in out[1] and "frac_1.0" in out[1]


def _sweep(*args, cwd=ROOT):
    """launch/sweep.py as a real command (`--dry_run` or not: `args` say)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "launch" / "sweep.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=HANG_GUARD_S,
    )


BAD_GRIDS = [
    # (flags, the flag and the value the one line must name, what else it must say)
    (["--fractions=0.1,ten"], "--fractions", "ten", "not a number"),
    (["--fractions=1,10"], "--fractions", "10", "use 0.1 for 10%"),
    (["--fractions=10"], "--fractions", "10", "use 0.1 for 10%"),
    (["--fractions=50"], "--fractions", "50", "use 0.5 for 50%"),
    (["--fractions=0,0.1"], "--fractions", "0", "(0, 1]"),
    (["--fractions=-0.1"], "--fractions", "-0.1", "(0, 1]"),
    (["--fractions=nan"], "--fractions", "nan", "(0, 1]"),
    (["--fractions=0.1,0.10"], "--fractions", "0.10", "twice"),
    (["--fractions="], "--fractions", "", "empty"),
    (["--seeds=0,one"], "--seeds", "one", "integers"),
    (["--seeds=0,-1"], "--seeds", "-1", "integers"),
    (["--seeds=1.5"], "--seeds", "1.5", "integers"),
    (["--seeds=0,1,0"], "--seeds", "0", "twice"),
    (["--methods=supervise"], "--methods", "supervise", "did you mean 'supervised'"),
    (["--methods=finetune,finetune"], "--methods", "finetune", "twice"),
    (["--methods=supervised,cross_teaching"], "--methods", "cross_teaching", "two sweeps"),
]


def _refused(proc, flag, value, says, sweep_dir):
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(err) == 1 and flag in err[0] and says in err[0], err
    assert value in err[0].split(flag, 1)[1], err
    assert proc.stdout == "" and not sweep_dir.exists()


GRID = ["--methods=supervised", "--fractions=1.0", "--seeds=0"]


@pytest.mark.parametrize("bad,flag,value,says", BAD_GRIDS, ids=[" ".join(g[0]) for g in BAD_GRIDS])
def test_a_bad_grid_is_refused_before_anything_runs(tmp_path, bad, flag, value, says):
    """One line naming the flag and the value, exit 2, nothing written (not even the sweep's folder);
    `--dry_run` checks the same. (Unchecked, `--fractions=1,10` trains a 100% cell, then one at
    label_fraction=10.)"""
    sweep_dir = tmp_path / "sweep"
    proc = _sweep(f"--sweep_dir={sweep_dir}", *GRID, *bad, "--dry_run")
    _refused(proc, flag, value, says, sweep_dir)


@pytest.mark.parametrize(
    "bad,flag,value,says",
    [
        (["--fractions=ten"], "--fractions", "ten", "not a number"),
        (["--seeds=one"], "--seeds", "one", "integers"),
        (["--methods=supervise"], "--methods", "supervise", "did you mean 'supervised'"),
    ],
)
def test_a_bad_grid_starts_no_cell(tmp_path, bad, flag, value, says):
    """The real command (no --dry_run): refused before a cell starts. (Unchecked, these start a cell
    that fails on its config; total_steps=1 keeps any that would train short.)"""
    sweep_dir = tmp_path / "sweep"
    proc = _sweep(f"--sweep_dir={sweep_dir}", *GRID, *bad, "--cell_override=total_steps=1")
    _refused(proc, flag, value, says, sweep_dir)


def test_the_sweep_folder_is_never_inside_a_data_folder(tmp_path):
    """--sweep_dir in (or at) --data_root, or in a data folder a --cell_override names, or in the
    data folder a cell's config reads by default: refused in one line, exit 2, nothing written."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    seg_sample = (
        ROOT / "s4mi_jax" / "data" / "sample" / "nuclei"
    )  # configs/supervised_seg_ph2.py:local
    cases = [
        ([f"--sweep_dir={data}/sweep", f"--data_root={data}"], "--data_root"),
        ([f"--sweep_dir={data}", f"--data_root={data}"], "--data_root"),
        ([f"--sweep_dir={tmp_path}/link/sweep", f"--data_root={data}"], "--data_root"),
        (
            [f"--sweep_dir={data}/sweep", f"--cell_override=data.eval_root={data}"],
            "config.data.eval_root",
        ),
        (
            [f"--sweep_dir={seg_sample}/sweep", "--methods=supervised_seg", "--fractions=0.5"],
            "config.data.root",
        ),
    ]
    for args, named in cases:
        for dry_run in ([], ["--dry_run"]):
            if not dry_run and "--methods=supervised_seg" in args:
                continue  # Outside tmp_path: without the check this would write into the package.
            grid = ["--methods=supervised", "--fractions=1.0", "--seeds=0"]
            proc = _sweep(*grid, *args, "--cell_override=total_steps=1", *dry_run)
            err = proc.stderr.strip().splitlines()
            assert proc.returncode == 2, (args, proc.stdout[-2000:], proc.stderr[-2000:])
            assert len(err) == 1 and "--sweep_dir=" in err[0] and named in err[0], err
            assert "inside the data folder" in err[0], err
            assert proc.stdout == ""
        assert sorted(p.name for p in data.iterdir()) == [], args
    assert not (seg_sample / "sweep").exists()
    # A sweep folder beside the data is fine.
    ok = _sweep(f"--sweep_dir={tmp_path}/runs", f"--data_root={data}", "--dry_run")
    assert ok.returncode == 0, ok.stderr


def test_a_stopped_cell_that_does_not_stop_is_killed_and_said_so(tmp_path, capfd):
    """A cell that ignores the forwarded SIGTERM is killed after --stop_grace_s, and the sweep says so
    (its progress since the last checkpoint is lost: that must not be silent)."""
    sweep = _sweep_module()
    ready = tmp_path / "ignoring"
    child = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        f"time.sleep({HANG_GUARD_S})\n"
    )
    result = {}
    grace = flags.FLAGS["stop_grace_s"].value
    flags.FLAGS["stop_grace_s"].value = 0.5
    try:
        thread = threading.Thread(
            target=lambda: result.update(
                code=sweep._run_cell([sys.executable, "-c", child], dict(os.environ), "[1/1]")
            )
        )
        thread.start()
        deadline = time.monotonic() + HANG_GUARD_S
        while not ready.exists():  # The cell ignores SIGTERM from here on: no race.
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        sweep._Stop.signum, sweep._Stop.since = signal.SIGTERM, time.monotonic()
        thread.join(HANG_GUARD_S)
    finally:
        flags.FLAGS["stop_grace_s"].value = grace
        sweep._Stop.signum, sweep._Stop.now = None, False
    assert result["code"] == -signal.SIGKILL
    err = capfd.readouterr().err
    assert "did not stop within --stop_grace_s=0.5" in err and "killed" in err, err
