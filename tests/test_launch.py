"""Launch scripts: their dry runs print exactly the commands docs/accelerators.md documents, and the
Slurm script really gives each task the coordinator settings (run under stand-in `scontrol`/`srun`)."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "docs" / "accelerators.md").read_text()  # Where the launch commands are.
TPU = ["--name=s4mi", "--zone=us-central2-b"]
MAIN = ["--config=configs/simclr_chest.py:research", "--config.data.root=/mnt/data/cxr"]


def _dry_run(script, *args):
    proc = subprocess.run(
        [sys.executable, f"launch/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _documented_block(command: str) -> str:
    """The lines right after `command` in a documented code block, up to the next command or fence."""
    start = README.index(command + "\n") + len(command) + 1
    end = min(README.index("\n```", start), README.find("\npython launch/", start) % 10**9)
    return README[start:end] + "\n"


@pytest.mark.parametrize(
    "action,extra",
    [
        ("create", ["--accelerator_type=v4-32", "--runtime_version=tpu-ubuntu2204-base"]),
        ("setup", []),
        ("run", ["--", *MAIN, "--workdir=/mnt/runs/r50"]),
        ("logs", []),
        ("delete", []),
    ],
)
def test_tpu_vm_dry_run_prints_documented_commands(action, extra):
    out = _dry_run("tpu_vm.py", action, *TPU, "--dry_run", *extra)
    command = " ".join(["python launch/tpu_vm.py", action, *TPU, *extra])
    assert out == _documented_block(command)
    assert all(
        line.startswith(("gcloud compute tpus tpu-vm", "git archive")) for line in out.splitlines()
    )
    if action == "run":
        assert "--worker=all" in out and "s4mi_jax.main " + " ".join(MAIN) in out
    if action == "create":
        assert "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base" in out


def test_tpu_vm_run_without_arguments_is_refused():
    proc = subprocess.run(
        [sys.executable, "launch/tpu_vm.py", "run", *TPU, "--dry_run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert proc.returncode != 0 and "give the s4mi_jax.main arguments after --" in proc.stderr


SLURM = [
    "--nodes=2",
    "--gpus_per_node=8",
    "--partition=gpu",
    "--time=24:00:00",
    "--dry_run",
    "--",
    "--config=configs/simclr_chest.py:research",
    "--config.data.root=/shared/cxr",
    "--workdir=/shared/runs/r50",
]


def test_slurm_dry_run_prints_documented_script():
    out = _dry_run("slurm.py", *SLURM)
    block = re.search(
        r"prints the batch script and the command that submits it:\n\n```bash\n(.*?)```",
        README,
        re.S,
    )
    assert out == block.group(1)
    assert "python launch/slurm.py " + " ".join(SLURM) in README
    assert "#SBATCH --nodes=2" in out and "#SBATCH --signal=TERM@300" in out
    assert out.rstrip().endswith("sbatch slurm/s4mi.sbatch")


def test_slurm_script_sets_coordinator_for_every_task(tmp_path):
    """Runs the generated script with stand-ins: `srun` starts 2 tasks, `python` prints its env/args."""
    script = _dry_run("slurm.py", "--nodes=2", "--gpus_per_node=2", "--dry_run", "--python",
                      str(tmp_path / "python"), "--", "--workdir=/x y", "--config=c.py")  # fmt: skip
    body = script.split("\n", 1)[1].rsplit("\n\n", 1)[0]  # Drop the "# path" line and sbatch.
    (tmp_path / "job.sbatch").write_text(body)
    stubs = {
        "scontrol": '#!/bin/bash\nprintf "node17\\nnode18\\n"\n',
        # srun: every task in turn, with its SLURM_PROCID.
        "srun": '#!/bin/bash\nshift\nfor i in 0 1; do SLURM_PROCID=$i "$@"; done\n',
        "python": '#!/bin/bash\necho "$JAX_COORDINATOR_ADDRESS $JAX_NUM_PROCESSES $JAX_PROCESS_ID '
        '$JAX_LOCAL_DEVICE_IDS | $*"\n',
    }
    for name, text in stubs.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(stat.S_IRWXU)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node[17-18]",
               SLURM_NNODES="2")  # fmt: skip
    proc = subprocess.run(["bash", str(tmp_path / "job.sbatch")], env=env, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"node17:29500 2 {i} 0,1 | -m s4mi_jax.main --workdir=/x y --config=c.py" for i in (0, 1)
    ]
