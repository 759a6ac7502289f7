"""Entry point: `python -m s4mi_jax.main --config=configs/simclr_chest.py[:variant] [--workdir=DIR]`.

Reads an ml_collections config file (locked: a mistyped `--config.key=value` fails at once), picks the
trainer named by `config.trainer`, and runs it in `workdir`, resuming from the workdir's latest checkpoint
if there is one. Problems the user can fix (bad data, bad config values) print one line, not a traceback.
The workdir is never a data folder (`outputs.check_output`). Ctrl-C saves the current step and exits 130
(`interrupt`); a start that fails before its first step leaves the workdir as it found it.
"""

from __future__ import annotations

import os
import re
import sys

from s4mi_jax import interrupt

if __name__ == "__main__":  # Ctrl-C while JAX imports: one line, not a traceback.
    interrupt.quiet_until_started("s4mi_jax")

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from s4mi_jax import outputs, trainers  # noqa: E402
from s4mi_jax.cli import config_file_flag, one_line, parse_flags  # noqa: E402
from s4mi_jax.core import compile_cache, distributed, lifeline, run, workdir_lock  # noqa: E402
from s4mi_jax.core.loop import log  # noqa: E402
from s4mi_jax.data import validate  # noqa: E402
from s4mi_jax.errors import S4MIError  # noqa: E402

_CONFIG = config_file_flag(
    "Config file, e.g. configs/simclr_chest.py or configs/simclr_chest.py:local."
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run folder (checkpoints, metrics.jsonl, results.json). Default: runs/<config>.",
)
flags.mark_flags_as_required(["config"])
compile_cache.define_flag()
# Multi-process runs (core/distributed.py). Unset: JAX_* environment variables, then JAX's detection
# (Cloud TPU VM, Slurm, Open MPI), else a single process.
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    list(distributed.MODES),
    "auto: jax.distributed when a coordinator is given or a TPU VM / Slurm / MPI job is detected; "
    "on: always; off: never (one process).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0's coordinator (multi-process runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (one per host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout",
    100,
    "Seconds without a heartbeat after which a process counts as dead and the job stops.",
)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Seconds to wait for all processes to join the coordinator."
)


def default_workdir(config_arg: str) -> str:
    """`configs/simclr_chest.py:local` -> `runs/simclr_chest_local`: rerunning a command resumes it."""
    path, _, variant = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    if variant:
        name += "_" + re.sub(r"[^A-Za-z0-9]+", "_", variant).strip("_")
    return os.path.join("runs", name)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # Orbax/Grain INFO logs drown the progress lines.
        logging.set_verbosity(logging.WARNING)
    compile_cache.enable_from_flag()  # Warm start: reruns and sweep cells skip recompiling.
    lifeline.watch_parent()  # A sweep's cell: stop (checkpoint, exit) if the sweep is killed.
    try:  # Before anything starts a JAX backend (log() does).
        distributed.initialize(
            distributed.Settings(
                mode=_DISTRIBUTED.value,
                coordinator_address=_COORDINATOR.value,
                num_processes=_NUM_PROCESSES.value,
                process_id=_PROCESS_ID.value,
                heartbeat_timeout=_HEARTBEAT.value,
                initialization_timeout=_INIT_TIMEOUT.value,
            )
        )
    except S4MIError as e:
        print(f"s4mi_jax: error: {e}", file=sys.stderr)
        sys.exit(2)
    config_arg = flags.FLAGS["config"].serialize().split("=", 1)[1]
    try:
        validate.check_config_file(config_arg)
        config = _CONFIG.value
        config.trainer  # noqa: B018 (a config file that failed to load raises on first access)
        validate.check_config(config)  # Before anything is written.
    except S4MIError as e:
        print(f"s4mi_jax: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (OSError, SyntaxError, ImportError, AttributeError, ValueError, TypeError) as e:
        # config_flags defers a missing/broken config file to first access.
        print(f"s4mi_jax: error: bad config file {config_arg}: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    workdir = _WORKDIR.value
    if workdir is None:
        workdir = default_workdir(config_arg)
        log(f"--workdir not given; using {os.path.abspath(workdir)}")
    try:  # Never a data folder; one run per workdir (a sweep cell started twice is refused here).
        outputs.check_output(workdir, "--workdir", outputs.config_data_roots(config))
        lock = workdir_lock.acquire(workdir, jax.process_index())
    except S4MIError as e:
        print(f"s4mi_jax: error: {e}", file=sys.stderr)
        sys.exit(2)
    interrupt.started()
    try:
        try:
            log(
                f"jax {jax.__version__}: {jax.device_count()} {jax.devices()[0].platform} device(s) "
                f"in {jax.process_count()} process(es)"
            )
            results = run.run(config, workdir, trainers.get(config.trainer))
        except S4MIError as e:
            # Raised under a JAX transform, the message carries JAX's note on filtered frames: drop it.
            message = str(e).split("\n--------------------")[0]
            print(f"s4mi_jax: error: {message}", file=sys.stderr)
            sys.exit(2)
        except interrupt.Interrupted as e:
            print(e.message(), file=sys.stderr, flush=True)
            sys.exit(interrupt.EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            print(_interrupted_outside_training(workdir), file=sys.stderr, flush=True)
            sys.exit(interrupt.EXIT_INTERRUPTED)
    finally:  # Held until here (main runs in-process in the tests: the next main may reuse the workdir).
        if lock is not None:
            lock.release()
    log(f"done: results in {os.path.join(workdir, 'results.json')}" if results else "done")


def _interrupted_outside_training(workdir: str) -> str:
    """The line for a Ctrl-C before the loop started (nothing of this start is kept) or after it
    ended (the final checkpoint is saved: rerunning evaluates)."""
    from s4mi_jax.core.checkpoint import Checkpointer

    steps = Checkpointer.saved_steps(workdir)
    if not steps:
        return "interrupted before the first step; nothing was saved (rerun the command to start)."
    return (
        f"interrupted: the latest checkpoint (step {steps[-1]}) is intact; rerun the same command "
        "to resume from it."
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
