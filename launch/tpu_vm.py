"""Cloud TPU VMs: create, install the package on every worker, run one command on all workers, stream the
log, delete. Each action prints the exact `gcloud` commands it runs; `--dry_run` only prints them.

    python launch/tpu_vm.py create  --name=s4mi --zone=us-central2-b --accelerator_type=v4-32 \
        --runtime_version=tpu-ubuntu2204-base
    python launch/tpu_vm.py setup   --name=s4mi --zone=us-central2-b
    python launch/tpu_vm.py run     --name=s4mi --zone=us-central2-b -- \
        --config=configs/simclr_chest.py:research --config.data.root=/mnt/data/cxr --workdir=/mnt/runs/r50
    python launch/tpu_vm.py logs    --name=s4mi --zone=us-central2-b
    python launch/tpu_vm.py delete  --name=s4mi --zone=us-central2-b

`run` starts `python -m s4mi_jax.main <args after -->` on every worker at once (in the background, so a
dropped ssh connection does not stop training); `jax.distributed` finds the other workers by itself on a
TPU VM. Every worker must see the same `--workdir` and data (e.g. a Filestore/NFS or gcsfuse mount).
Rerunning `run` after a preemption resumes from the last checkpoint.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from absl import app, flags

ACTIONS = ("create", "setup", "run", "logs", "delete")

_NAME = flags.DEFINE_string("name", None, "TPU VM name.", required=True)
_ZONE = flags.DEFINE_string("zone", None, "GCP zone, e.g. us-central2-b.", required=True)
_PROJECT = flags.DEFINE_string("project", None, "GCP project (default: gcloud's configured one).")
_ACCELERATOR = flags.DEFINE_string(
    "accelerator_type", "v5litepod-8", "create: TPU type and size, e.g. v4-8, v4-32, v5litepod-16."
)
_RUNTIME = flags.DEFINE_string(
    "runtime_version", "v2-alpha-tpuv5-lite", "create: TPU VM software image (--version)."
)
_SPOT = flags.DEFINE_bool("spot", False, "create: a Spot VM (cheaper, can be preempted).")
_REMOTE_DIR = flags.DEFINE_string("remote_dir", "s4mi_jax", "Folder of the code on each worker.")
_LOG = flags.DEFINE_string("log", "s4mi_run.log", "run/logs: log file on each worker.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands without running them.")

ARCHIVE = "/tmp/s4mi_jax.tar.gz"


def _where(name: str, zone: str, project: str | None) -> list[str]:
    return [name, f"--zone={zone}"] + ([f"--project={project}"] if project else [])


def _ssh(where: list[str], command: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", *where, f"--worker={worker}",
            f"--command={command}"]  # fmt: skip


def commands(
    action: str,
    *,
    name: str,
    zone: str,
    project: str | None = None,
    accelerator_type: str = "v5litepod-8",
    runtime_version: str = "v2-alpha-tpuv5-lite",
    spot: bool = False,
    remote_dir: str = "s4mi_jax",
    log: str = "s4mi_run.log",
    main_args: list[str] = (),
) -> list[list[str]]:
    """The commands (argv lists) an action runs, in order."""
    where = _where(name, zone, project)
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    if action == "create":
        return [
            [*tpu, "create", *where, f"--accelerator-type={accelerator_type}",
             f"--version={runtime_version}"] + (["--spot"] if spot else [])
        ]  # fmt: skip
    if action == "setup":
        # The committed tree (git archive HEAD): what runs is what is in git.
        install = (
            f"mkdir -p ~/{remote_dir} && tar -xzf ~/s4mi_jax.tar.gz -C ~/{remote_dir} && "
            f"cd ~/{remote_dir} && python3 -m venv .venv && .venv/bin/pip install -q -U pip && "
            '.venv/bin/pip install -q -e . "jax[tpu]"'
        )
        return [
            ["git", "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"],
            [*tpu, "scp", ARCHIVE, f"{name}:~/s4mi_jax.tar.gz", *where[1:], "--worker=all"],
            _ssh(where, install),
        ]
    if action == "run":
        if not main_args:
            raise app.UsageError("run: give the s4mi_jax.main arguments after --")
        main = " ".join(
            shlex.quote(a) for a in [".venv/bin/python", "-m", "s4mi_jax.main", *main_args]
        )
        return [_ssh(where, f"cd ~/{remote_dir} && nohup {main} > ~/{log} 2>&1 &")]
    if action == "logs":  # Process 0 prints the progress; other workers' logs hold only errors.
        return [_ssh(where, f"tail -n 100 -F ~/{log}", worker="0")]
    if action == "delete":
        return [[*tpu, "delete", *where, "--quiet"]]
    raise app.UsageError(f"unknown action {action!r}; one of {ACTIONS}")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise app.UsageError(f"give an action: one of {ACTIONS}")
    action, main_args = argv[1], argv[2:]
    cmds = commands(
        action,
        name=_NAME.value,
        zone=_ZONE.value,
        project=_PROJECT.value,
        accelerator_type=_ACCELERATOR.value,
        runtime_version=_RUNTIME.value,
        spot=_SPOT.value,
        remote_dir=_REMOTE_DIR.value,
        log=_LOG.value,
        main_args=main_args,
    )
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if not _DRY_RUN.value:
            rc = subprocess.call(cmd)
            if rc:
                sys.exit(rc)


if __name__ == "__main__":
    app.run(main)
