"""Orbax checkpoints of the whole run: train state (model, optimizer, step, RNG) and the Grain iterator.

Saves are asynchronous (training continues while the state is written) and atomic: Orbax writes into a
temporary folder and renames it when complete, so a crash or kill mid-save leaves the previous checkpoint as
the latest one. Restores go into an abstract target that carries the *current* shardings, so a run can resume
on a different device count, mesh or process count. Every process calls `save`/`restore` (Orbax
coordinates them; process 0 finalises the folder).
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from s4mi_jax.errors import S4MIError


@functools.cache  # Once per process (Orbax warns on every re-registration).
def _no_replica_parallel_on_cpu() -> None:
    """Orbax's replica-parallel save splits every replicated array across its replicas, one eager slice
    (and one XLA compile) per array and replica. Across hosts that parallelises the write; on a CPU the
    replicas share one memory, so it only costs compiles (seconds per save with 8 simulated devices).
    Orbax itself turns it off on GPUs; we turn it off on CPUs too."""
    if jax.default_backend() == "cpu":
        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)  # Its "overriding jax.Array" warning.
        try:
            ocp.type_handlers.register_type_handler(
                jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
            )
        finally:
            absl_logging.set_verbosity(verbosity)


DAMAGED_DIR = (
    "checkpoints_damaged"  # Beside `checkpoints/`: damaged ones are moved here, never deleted.
)


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC as the OS (OSError errno 28) or TensorStore (ValueError RESOURCE_EXHAUSTED) reports it."""
    if isinstance(error, OSError) and error.errno == 28:
        return True
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "No space left on device" in text


class _DropDiskFullLogs(logging.Filter):
    """Orbax logs a failed background save (with traceback) before it raises; the one-line message
    `Checkpointer` raises says it all, so those records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += str(record.exc_info[1])
        return not ("RESOURCE_EXHAUSTED" in text or "No space left on device" in text)


@functools.cache
def _quiet_disk_full_logs() -> None:
    logging.getLogger("absl").addFilter(_DropDiskFullLogs())


@functools.cache
def _quiet_failed_restore_noise() -> None:
    """A restore that fails on damaged files leaves TensorStore reads in flight; when they finish after
    Orbax closed its event loop, Python prints an "Event loop is closed" traceback per read and asyncio
    logs "Future exception was never retrieved". The caller's one line already names the damaged
    checkpoint (and what stands in for it): those are dropped, nothing else."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
            return
        previous(unraisable)

    sys.unraisablehook = hook

    class _DropUnretrieved(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "exception was never retrieved" not in record.getMessage()

    for name in ("asyncio", "absl"):
        logging.getLogger(name).addFilter(_DropUnretrieved())


def short_error(error: BaseException) -> str:
    """One line of an Orbax/TensorStore error: its first line, without Python's `raise` chain."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._pending_step: int | None = None
        _no_replica_parallel_on_cpu()
        _quiet_disk_full_logs()
        _quiet_failed_restore_noise()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                save_interval_steps=1,  # The loop decides when; every call saves.
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    @classmethod
    def for_run(cls, workdir: str, config) -> Checkpointer:
        """The run's checkpoints (`workdir/checkpoints`), kept and saved as `config` says."""
        return cls(
            os.path.join(workdir, "checkpoints"),
            max_to_keep=config.keep_ckpts,
            async_save=config.checkpoint_async,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    @staticmethod
    def saved_steps(workdir: str, folder: str = "checkpoints") -> list[int]:
        """The committed steps in `workdir/folder`, oldest first, read from the folder names alone
        (no Orbax manager: safe in an error path). Orbax's temporary folders are not steps."""
        try:
            return sorted(int(p) for p in os.listdir(os.path.join(workdir, folder)) if p.isdigit())
        except OSError:
            return []

    def save(
        self,
        step: int,
        state: Any,
        data_iter: grain.DatasetIterator | None,
        meta: dict | None = None,
    ) -> None:
        """`meta`: small JSON facts kept with the weights (e.g. the label manifest's hash)."""
        items = {"state": ocp.args.StandardSave(state)}
        if meta is not None:
            items["meta"] = ocp.args.JsonSave(meta)
        if hasattr(data_iter, "get_state"):  # A Grain iterator; plain iterators have no position.
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        except (
            OSError,
            ValueError,
            RuntimeError,
        ) as e:  # e.g. disk full: say so, and what is intact.
            if isinstance(e, OSError) or is_disk_full(e):
                raise self._save_error(step, e) from None
            raise
        self._pending_step = step

    def _save_error(self, step: int | None, error: Exception) -> S4MIError:
        reason = "[Errno 28] No space left on device" if is_disk_full(error) else short_error(error)
        step = self._pending_step if step is None else step
        return S4MIError(
            f"could not save checkpoint {step or ''} in {self.directory}: {reason}. The previous "
            f"checkpoint (step {self.latest_step()}) is intact; free space and rerun to resume from it."
        )

    def restore(
        self, abstract_state: Any, data_iter: grain.DatasetIterator | None, step: int | None = None
    ) -> Any:
        """Restores `state` (into `abstract_state`'s shapes and shardings) and the iterator in place.

        Any mesh works: arrays are read into the shardings `abstract_state` carries. Grain writes one
        iterator file per process (`process_<i>-of-<n>.json`); a checkpoint from another process count
        has none for this one, and then any saved file serves, because `pipeline.train_iterator`'s
        position (global batches taken) is the same on every process.
        """
        if step is not None:
            return self._restore(abstract_state, data_iter, step)
        return self._restore_latest_intact(abstract_state, data_iter)

    def _restore_latest_intact(self, abstract_state: Any, data_iter) -> Any:
        """The newest checkpoint that restores. Newer ones that fail while an older one restores are
        damaged (truncated chunk, empty manifest, missing iterator state): each is named in a warning
        and moved to `checkpoints_damaged/` (never deleted). If none restores, nothing is moved (the
        cause is then more likely the run's config than the files) and the latest's error is raised."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        failed: list[tuple[int, str]] = []
        for step in steps:
            try:
                state = self._restore(abstract_state, data_iter, step)
            except Exception as e:  # Orbax/TensorStore raise many types for a damaged checkpoint.
                failed.append((step, short_error(e)))
                continue
            for bad, reason in failed:
                moved = self.move_aside(bad)
                _warn(
                    f"WARNING: checkpoint {bad} in {self.directory} is damaged ({reason}); moved it "
                    f"to {moved} and resumed from step {step} instead."
                )
            if failed:
                self.manager.reload()
            return state
        bad, reason = failed[0]
        raise S4MIError(
            f"cannot restore checkpoint {bad} in {self.directory} ({reason}), nor any older one "
            f"{[s for s, _ in failed[1:]]}. If the config changed, rerun with the run's own config; "
            "else move the checkpoints folder away to start afresh."
        )

    def move_aside(self, step: int, prefix: str = "") -> str:
        """Moves checkpoint `step` to `checkpoints_damaged/<prefix><step>` beside this folder (never
        deletes it); returns where it went."""
        aside = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
        os.makedirs(aside, exist_ok=True)
        target, k = os.path.join(aside, f"{prefix}{step}"), 1
        while os.path.exists(target):
            k += 1
            target = os.path.join(aside, f"{prefix}{step}.{k}")
        os.replace(os.path.join(self.directory, str(step)), target)
        self.manager.reload()
        return target

    def _restore(self, abstract_state: Any, data_iter, step: int) -> Any:
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        foreign_iter = None
        if data_iter is not None:
            foreign_iter = self._iterator_file_of_other_process_count(step)
            if foreign_iter is None:
                items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        state = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
        if foreign_iter is not None:
            with open(foreign_iter) as f:
                data_iter.set_state(json.load(f))
        return state

    def _iterator_file_of_other_process_count(self, step: int) -> str | None:
        folder = os.path.join(self.directory, str(step), "data_iter")
        mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not os.path.isdir(folder) or os.path.exists(os.path.join(folder, mine)):
            return None
        saved = sorted(glob.glob(os.path.join(folder, "process_*-of-*.json")))
        return saved[0] if saved else None

    def wait(self) -> None:
        """Blocks until pending async saves are committed (a failed one raises here)."""
        try:
            self.manager.wait_until_finished()
        except (OSError, RuntimeError, ValueError) as e:
            raise self._save_error(None, e) from None

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _warn(message: str) -> None:
    """A warning the user must see (stdout, process 0): the progress lines go there too."""
    if jax.process_index() == 0:
        print(message, file=sys.stdout, flush=True)
