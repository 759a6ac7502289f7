"""Metrics to `metrics.jsonl` (one JSON object per logged step) and TensorBoard, from process 0 only.

Why our own writer: clu's `metric_writers` import TensorFlow (clu 0.0.12;
`from clu import metric_writers` fails without it); tensorboardX writes the same
event files without it. On resume, lines from steps after the restored checkpoint are dropped, so the file
always describes one consistent run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax

from s4mi_jax.errors import S4MIError


class MetricWriter:
    def __init__(self, workdir: str, *, resume_step: int | None = None, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._truncate_after(resume_step or 0)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter  # Optional at import time: tests may skip it.

            # purge_step: events after the restored checkpoint (from a killed run) are dropped.
            self._tb = SummaryWriter(
                os.path.join(workdir, "tensorboard"),
                purge_step=resume_step + 1 if resume_step else None,
            )

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        rows, damaged = read_metrics(self.path)
        if damaged:
            print(
                f"warning: {self.path}: dropped {damaged} damaged line(s) (not UTF-8 or not JSON; "
                "the other lines are kept).",
                flush=True,
            )
        lines = [json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, self.path)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: _jsonable(v) for k, v in values.items()}
        self._file.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def read_metrics(path: str) -> tuple[list[dict], int]:
    """(rows of a metrics.jsonl, how many damaged lines were dropped). A line cut short by a kill (the
    last, without its newline) is dropped silently, as the writer expects; any other line that is not
    UTF-8 JSON of an object (a flipped byte, an editor's save) is dropped and counted, never raised:
    a finished run stays resumable and its curves readable."""
    with open(path, "rb") as f:
        raw = f.read().split(b"\n")
    rows, damaged = [], 0
    for i, line in enumerate(raw):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif i != len(raw) - 1:  # Not the unterminated last line of a kill.
            damaged += 1
    return rows, damaged


def _jsonable(v):
    v = float(v) if hasattr(v, "__float__") else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them visible rather than invalid.
    return v


def write_json(path: str, obj) -> None:
    """Atomic JSON write (temp file + rename): a crash never leaves a half-written file."""
    if jax.process_index() != 0:
        return
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())  # Durable before the rename, also across a power loss.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# Keys that may differ when a run resumes: they change how a run is watched, not what it computes.
RESUMABLE_CHANGES = (
    "halt_at_step",
    "log_every",
    "ckpt_every",
    "keep_ckpts",
    "nonfinite",
    "allow_config_change",
    "allow_data_change",
    "data.accept_label_warnings",
    "data.num_workers",
    "data.verify",
    "eval.batch_size",
    # Layout only: the same computation on another mesh (a resumed run may move to other hardware).
    "mesh.data",
    "mesh.fsdp",
    "sharding.fsdp_min_size",
)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_config_json(path: str) -> dict:
    """A run's `config.json`; a damaged one is named (not a JSONDecodeError traceback)."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise S4MIError(
            f"cannot read {path}: {e}. The run's config record is damaged; restore it from a backup, "
            "or move it away and rerun with the same config (checkpoints are kept)."
        ) from None
    if not isinstance(config, dict):
        raise S4MIError(f"{path} does not hold a config (a JSON object); restore or move it away.")
    return config


DATA_FINGERPRINT = "data_fingerprint.json"


def _check_data(workdir: str, config, sources: dict) -> dict | None:
    """The data's fingerprints (provenance.fingerprint); on resume they must equal the recorded ones
    (`config.allow_data_change=True` resumes anyway). None when no source was given."""
    if not sources:
        return None
    from s4mi_jax import provenance

    now = {k: provenance.fingerprint(s) for k, s in sources.items() if s is not None}
    path = os.path.join(workdir, DATA_FINGERPRINT)
    if os.path.exists(path) and not config.get("allow_data_change", False):
        before = read_config_json(path)
        for key, fp in now.items():
            old = before.get(key)
            if old and (old.get("sha256"), old.get("records")) != (fp["sha256"], fp["records"]):
                raise S4MIError(
                    f"{workdir} was trained on other data: {fp['root']} now has {fp['records']} "
                    f"records in {fp['file_count']} files, the run recorded {old.get('records')} in "
                    f"{old.get('file_count')} ({path}). Point config.data at the run's data, use another "
                    "--workdir, or pass --config.allow_data_change=True to resume anyway."
                )
    return now


def prepare_workdir(workdir: str, config, data: dict | None = None) -> None:
    """Creates the run folder and records the config; called only after the inputs were validated.

    A workdir that already holds a run of another config is refused (resuming it would silently mix
    two experiments) unless `config.allow_config_change` is set; keys in RESUMABLE_CHANGES may differ.
    `data` ({"dataset": source, ...}): fingerprinted into `data_fingerprint.json`; a resumed run whose
    data changed since is refused unless `config.allow_data_change` is set.
    """
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "config.json")
    new = json.loads(json.dumps(config.to_dict(), default=str))
    if os.path.exists(path) and not config.get("allow_config_change", False):
        old = _flatten(read_config_json(path))
        flat = _flatten(new)
        changed = sorted(
            k
            for k in set(old) | set(flat)
            if old.get(k) != flat.get(k)
            and k not in RESUMABLE_CHANGES
            # A key added to the configs after the run started, at its neutral default.
            and not (k not in old and flat.get(k) in (None, False))
        )
        if changed:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {flat.get(k)!r}" for k in changed[:5])
            raise S4MIError(
                f"{workdir} holds a run of another config ({shown}{', ...' if len(changed) > 5 else ''})."
                " Use another --workdir, or pass --config.allow_config_change=True to continue it."
            )
    fingerprints = _check_data(workdir, config, data or {})
    try:
        os.makedirs(workdir, exist_ok=True)
        write_json(path, new)
        if fingerprints:
            write_json(os.path.join(workdir, DATA_FINGERPRINT), fingerprints)
    except OSError as e:
        raise S4MIError(f"cannot write to workdir {workdir}: {e}") from None


def run_environment() -> dict:
    """What produced a result: package and library versions, devices (`provenance.environment`)."""
    from s4mi_jax import provenance

    return provenance.environment()
