"""Multi-node GPU runs under Slurm: one process per node (all its GPUs), the same command on every node.

    python launch/slurm.py --nodes=2 --gpus_per_node=8 --partition=gpu --time=24:00:00 -- \
        --config=configs/simclr_chest.py:research --config.data.root=/shared/cxr --workdir=/shared/runs/r50

Writes `<script_dir>/<job_name>.sbatch` and submits it with `sbatch`; `--dry_run` prints the script and
the `sbatch` command instead. In the job, `srun` starts `python -m s4mi_jax.main` once per node with
JAX_COORDINATOR_ADDRESS (first node of the allocation), JAX_NUM_PROCESSES and JAX_PROCESS_ID set, which
`s4mi_jax.main` passes to `jax.distributed.initialize`. Slurm sends SIGTERM `--signal_seconds` before the
time limit: the run saves a checkpoint and exits; resubmitting the same job resumes it. For one machine
with several GPUs no launcher is needed: `python -m s4mi_jax.main ...` uses all its GPUs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from absl import app, flags

_NODES = flags.DEFINE_integer("nodes", 1, "Nodes (hosts); one process each.")
_GPUS = flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node, all used by its one process.")
_CPUS = flags.DEFINE_integer("cpus_per_task", 16, "CPU cores per node for the process and Grain.")
_PARTITION = flags.DEFINE_string("partition", None, "Slurm partition (default: the cluster's).")
_ACCOUNT = flags.DEFINE_string("account", None, "Slurm account to charge.")
_TIME = flags.DEFINE_string("time", "24:00:00", "Wall-time limit (HH:MM:SS).")
_JOB_NAME = flags.DEFINE_string("job_name", "s4mi", "Slurm job name.")
_PORT = flags.DEFINE_integer("port", 29500, "Coordinator port on the first node.")
_PYTHON = flags.DEFINE_string("python", ".venv/bin/python", "Python with s4mi_jax installed.")
_SIGNAL_SECONDS = flags.DEFINE_integer(
    "signal_seconds", 300, "SIGTERM this many seconds before the time limit (checkpoint + exit)."
)
_SCRIPT_DIR = flags.DEFINE_string("script_dir", "slurm", "Where the .sbatch script and logs go.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the script and command; submit nothing.")


def sbatch_script(
    main_args: list[str],
    *,
    nodes: int = 1,
    gpus_per_node: int = 8,
    cpus_per_task: int = 16,
    partition: str | None = None,
    account: str | None = None,
    time: str = "24:00:00",
    job_name: str = "s4mi",
    port: int = 29500,
    python: str = ".venv/bin/python",
    signal_seconds: int = 300,
    script_dir: str = "slurm",
) -> str:
    """The batch script: SBATCH header, coordinator environment, one `srun` task per node."""
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        f"#SBATCH --time={time}",
        f"#SBATCH --signal=TERM@{signal_seconds}",
        f"#SBATCH --output={script_dir}/%x-%j.log",
    ]
    if partition:
        header.append(f"#SBATCH --partition={partition}")
    if account:
        header.append(f"#SBATCH --account={account}")
    main = shlex.join([python, "-m", "s4mi_jax.main", *main_args])
    body = [
        "set -euo pipefail",
        'COORDINATOR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
        f'export JAX_COORDINATOR_ADDRESS="$COORDINATOR:{port}"',
        'export JAX_NUM_PROCESSES="$SLURM_NNODES"',
        # (sed, not head: head would close the pipe early and pipefail would stop the job.)
        # Every GPU of the node to its one process (JAX's Slurm default is one GPU per process).
        f"export JAX_LOCAL_DEVICE_IDS={','.join(str(i) for i in range(gpus_per_node))}",
        # JAX_PROCESS_ID per task: SLURM_PROCID exists only inside each srun task. The command travels
        # as bash's positional arguments, so no quoting is nested.
        "srun --kill-on-bad-exit=1 bash -c 'export JAX_PROCESS_ID=$SLURM_PROCID; exec \"$@\"' _ "
        + main,
    ]
    return "\n".join(header + [""] + body) + "\n"


def main(argv: list[str]) -> None:
    main_args = argv[1:]
    if not main_args:
        raise app.UsageError("give the s4mi_jax.main arguments after --")
    script = sbatch_script(
        main_args,
        nodes=_NODES.value,
        gpus_per_node=_GPUS.value,
        cpus_per_task=_CPUS.value,
        partition=_PARTITION.value,
        account=_ACCOUNT.value,
        time=_TIME.value,
        job_name=_JOB_NAME.value,
        port=_PORT.value,
        python=_PYTHON.value,
        signal_seconds=_SIGNAL_SECONDS.value,
        script_dir=_SCRIPT_DIR.value,
    )
    path = os.path.join(_SCRIPT_DIR.value, f"{_JOB_NAME.value}.sbatch")
    cmd = ["sbatch", path]
    if _DRY_RUN.value:
        print(f"# {path}\n{script}\n{shlex.join(cmd)}", flush=True)
        return
    os.makedirs(_SCRIPT_DIR.value, exist_ok=True)
    with open(path, "w") as f:
        f.write(script)
    print(shlex.join(cmd), flush=True)
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    app.run(main)
