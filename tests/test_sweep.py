"""The sweep runner's plan and its resumability (dry runs: no training)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

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
