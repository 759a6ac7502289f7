"""The S4MI classification table: methods x label fractions x seeds, run one after another, resumable.

    python launch/sweep.py --sweep_dir=runs/sweep_chest \
        --data_root=../shared/data/chest_xray_pneumonia --variant=local \
        --fractions=0.01,0.1,1.0 --seeds=0,1,2 --methods=supervised,linear_probe,finetune
    python launch/report.py --sweep_dir=runs/sweep_chest

For each seed, SimCLR is pretrained once (`<sweep_dir>/pretrain/seed_<s>`) on the training pool (never the
validation or test images); `linear_probe` and `finetune` cells start from it. Each cell is
`python -m s4mi_jax.main` in `<sweep_dir>/<method>/frac_<f>/seed_<s>`: a cell with a results.json is
skipped, an interrupted one resumes from its own checkpoint, so rerunning the command finishes the sweep.
`--dry_run` prints the commands without running them.

Stopping: Ctrl-C, SIGTERM or SIGHUP stops the cell running now, as a preemption (SIGTERM: it saves a
checkpoint and exits; after `--stop_grace_s` it is killed; a second Ctrl-C kills it at once), then the
sweep exits 128+signal. The cell runs in its own process group and gets SIGTERM from the kernel if the
sweep is killed outright (kill -9; `s4mi_jax/core/lifeline.py`), so no cell trains on as an orphan.
A cell whose workdir is locked by a live run (another sweep, a hand-started rerun;
`s4mi_jax/core/workdir_lock.py`) is reported and skipped, with the cells that start from it, and the
sweep goes on; it then exits 1 naming them: rerun the command once they finish. (Not waiting: the other
run may take hours, and this sweep's remaining cells need not.)
Every cell uses one persistent compilation cache (`--compile_cache`, resolved once here and passed as
S4MI_COMPILE_CACHE): cells of one config compile their programs once.

Segmentation (S4MI's semi-supervised claim): `--methods=supervised_seg,fixmatch_seg,cross_teaching`
with `--fractions=0.1,0.3,0.5,0.7,1.0` runs the PH2 configs (`--variant=''` for the default scale, or
`nuclei` / `lung`); the semi-supervised methods skip 100% (no unlabeled images left) and nothing is
pretrained. `picie` (unsupervised, PiCIE) adds the "unsupervised" row: one cell per seed, whatever
the fractions (`<method>/frac_0/seed_<s>`; it uses no training labels).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

from absl import app, flags

# `python launch/sweep.py` puts launch/ (not the repo root) on sys.path; make the package importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s4mi_jax.core import lifeline, workdir_lock  # noqa: E402

NEEDS_PRETRAINING = ("linear_probe", "finetune")
# Segmentation methods (the S4MI semi-supervised claim) and their config files; the semi-supervised
# ones need unlabeled images, so they skip fraction 1.0 (supervised_seg at 100% is their baseline).
SEGMENTATION = {
    "supervised_seg": "configs/supervised_seg_ph2.py",
    "fixmatch_seg": "configs/fixmatch_seg_ph2.py",
    "cross_teaching": "configs/cross_teaching_ph2.py",
    "picie": "configs/picie_ph2.py",
}
SEMI_SUPERVISED = ("fixmatch_seg", "cross_teaching")
UNSUPERVISED = ("picie",)  # No training labels: one cell per seed, reported at label fraction 0.


DEFAULT_CELL_CONFIG = "configs/{method}_chest.py"
# `--pretrain_config=random`: no pretraining; probe / fine-tune cells start from the random init.
RANDOM_INIT = "random"
PRETRAIN_ONLY = "pretrain"  # `--methods=pretrain`: the pretraining runs only (e.g. a CASS start).


def config_file(method: str, cell_config: str = DEFAULT_CELL_CONFIG) -> str:
    """`cell_config` with {method} filled in; a segmentation method's PH2 config when `cell_config`
    is the default (e.g. configs/paper/cross_teaching.py replaces it)."""
    if method in SEGMENTATION and cell_config == DEFAULT_CELL_CONFIG:
        return SEGMENTATION[method]
    return cell_config.format(method=method)


# Not `required=True`: that registers a validator every absl parse in the process runs (the test suite
# loads this file beside `s4mi_jax.main`); main() checks it instead.
_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "Output folder of the sweep (required).")
_DATA_ROOT = flags.DEFINE_string("data_root", None, "Dataset folder (None: embedded sample).")
_VARIANT = flags.DEFINE_string("variant", "local", "Config variant for every run ('' for default).")
_FRACTIONS = flags.DEFINE_list("fractions", ["0.01", "0.1", "1.0"], "Label fractions.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (labeled subset, init, data order).")
_METHODS = flags.DEFINE_list(
    "methods",
    ["supervised", "linear_probe", "finetune"],
    f"Classification methods, or segmentation methods {list(SEGMENTATION)} (not mixed); "
    "'pretrain' runs the pretraining only.",
)
_PRETRAIN_CONFIG = flags.DEFINE_string(
    "pretrain_config",
    "configs/simclr_chest.py",
    "Self-supervised pretraining config, or 'random': the cells probe / fine-tune the random init.",
)
_CELL_CONFIG = flags.DEFINE_string(
    "cell_config",
    "configs/{method}_chest.py",
    "Config of each cell; {method} is replaced by the method name (e.g. configs/paper/finetune.py "
    "or configs/paper/cross_teaching.py for the S4MI paper configs; default for segmentation "
    "methods: their PH2 configs).",
)
_PRETRAIN_OVERRIDES = flags.DEFINE_multi_string(
    "pretrain_override",
    [],
    "Extra `key=value` config overrides for pretraining; {seed} is replaced by the seed (e.g. "
    "model.cnn.init_from=runs/simclr/pretrain/seed_{seed}).",
)
_CELL_OVERRIDES = flags.DEFINE_multi_string(
    "cell_override", [], "Extra `key=value` config overrides for every classification cell."
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands only.")
_STOP_GRACE = flags.DEFINE_float(
    "stop_grace_s",
    600.0,
    "On Ctrl-C / SIGTERM: seconds the running cell gets to save its checkpoint before it is killed.",
)
if "compile_cache" not in flags.FLAGS:  # s4mi_jax.core.compile_cache may have defined it.
    flags.DEFINE_string(
        "compile_cache",
        None,
        "Compilation cache shared by every run of the sweep (S4MI_COMPILE_CACHE), or 'off'. "
        "Default: the user's cache folder (s4mi_jax/core/compile_cache.py): cells of one config "
        "compile once.",
    )
_COMPILE_CACHE = flags.FlagHolder(flags.FLAGS, flags.FLAGS["compile_cache"])


def _config_arg(path: str, variant: str, **kw) -> str:
    parts = [variant] if variant else []
    parts += [f"{k}={v}" for k, v in kw.items()]
    return f"--config={path}" + (":" + ",".join(parts) if parts else "")


def plan(
    sweep_dir: str,
    *,
    data_root: str | None,
    variant: str,
    fractions: list[str],
    seeds: list[str],
    methods: list[str],
    pretrain_config: str,
    pretrain_overrides: list[str],
    cell_overrides: list[str],
    cell_config: str = DEFAULT_CELL_CONFIG,
) -> list[tuple[str, list[str]]]:
    """(workdir, command) for every run, pretraining first, in the order they run."""
    data = [f"--config.data.root={data_root}"] if data_root else []
    runs = []
    random_init = pretrain_config == RANDOM_INIT
    for seed in seeds:
        pre_dir = (
            RANDOM_INIT if random_init else os.path.join(sweep_dir, "pretrain", f"seed_{seed}")
        )
        wants_pretraining = any(m in NEEDS_PRETRAINING or m == PRETRAIN_ONLY for m in methods)
        if wants_pretraining and not random_init:
            cmd = [_config_arg(pretrain_config, variant), f"--config.seed={seed}", *data]
            cmd += [f"--config.{o}".replace("{seed}", seed) for o in pretrain_overrides]
            runs.append((pre_dir, cmd + [f"--workdir={pre_dir}"]))
        for method in methods:
            if method == PRETRAIN_ONLY:
                continue
            if method in UNSUPERVISED:
                workdir = os.path.join(sweep_dir, method, "frac_0", f"seed_{seed}")
                cmd = [_config_arg(config_file(method), variant, seed=seed), *data]
                runs.append((workdir, cmd + [f"--workdir={workdir}"]))
                continue
            for frac in fractions:
                if method in SEMI_SUPERVISED and float(frac) >= 1.0:
                    continue
                workdir = os.path.join(sweep_dir, method, f"frac_{frac}", f"seed_{seed}")
                cmd = [
                    _config_arg(
                        config_file(method, cell_config), variant, label_fraction=frac, seed=seed
                    ),
                    *data,
                    *[f"--config.{o}" for o in cell_overrides],
                ]
                if method in NEEDS_PRETRAINING:
                    cmd.append(f"--config.init_from={pre_dir}")
                runs.append((workdir, cmd + [f"--workdir={workdir}"]))
    return runs


class _Stop:
    """What the signal handler tells the loop: the first signal received, when, and a second one."""

    signum: int | None = None
    since: float = 0.0
    now: bool = False


def _on_signal(signum: int, frame) -> None:
    """Only records (printing or signalling from a handler can interrupt the loop mid-write)."""
    del frame
    if _Stop.signum is None:
        _Stop.signum, _Stop.since = signum, time.monotonic()
    else:  # A second Ctrl-C: no more waiting.
        _Stop.now = True


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to the cell's process group (its data-loading workers too), else to the cell alone."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except OSError:
        proc.send_signal(sig)


def _run_cell(command: list[str], env: dict[str, str], label: str) -> int:
    """Runs one cell to its end, or until a signal stops it; returns its exit code. The cell never
    outlives this function: however it ends (a signal, an exception here), the cell is stopped (SIGTERM,
    then SIGKILL after --stop_grace_s) and reaped."""
    proc = subprocess.Popen(command, env=lifeline.child_env(env), preexec_fn=lifeline.preexec_fn())
    forwarded = False
    try:
        print(f"{label} pid {proc.pid}", flush=True)
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if _Stop.signum is not None and not forwarded:
                name = signal.Signals(_Stop.signum).name
                print(
                    f"sweep: {name}: stopping the running cell (pid {proc.pid}) as a preemption: "
                    f"it saves a checkpoint (killed after {_STOP_GRACE.value:.0f} s, or at a second "
                    "Ctrl-C)",
                    file=sys.stderr,
                    flush=True,
                )
                _signal_group(proc, signal.SIGTERM)
                forwarded = True
            if _Stop.now or (forwarded and time.monotonic() - _Stop.since > _STOP_GRACE.value):
                _signal_group(proc, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            if not forwarded:
                _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE.value)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _cache_env() -> tuple[dict[str, str], str]:
    """The environment of every cell: one compilation cache folder for all (or 'off'), and its name."""
    from s4mi_jax.core import compile_cache

    folder = compile_cache.resolve(_COMPILE_CACHE.value)
    env = dict(os.environ, **{compile_cache.ENV: folder or "off"})
    return env, folder or "off"


def main(argv: list[str]) -> None:
    try:
        _main(argv)
    except BrokenPipeError:  # `sweep.py --dry_run | head`: the reader has all it wants.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # The exit's flush of stdout must not fail again.
        sys.exit(128 + signal.SIGPIPE)


def _main(argv: list[str]) -> None:
    del argv
    if not _SWEEP_DIR.value:
        raise app.UsageError("--sweep_dir is required: the sweep's output folder.")
    runs = plan(
        _SWEEP_DIR.value,
        data_root=_DATA_ROOT.value,
        variant=_VARIANT.value,
        fractions=_FRACTIONS.value,
        seeds=_SEEDS.value,
        methods=_METHODS.value,
        pretrain_config=_PRETRAIN_CONFIG.value,
        pretrain_overrides=_PRETRAIN_OVERRIDES.value,
        cell_overrides=_CELL_OVERRIDES.value,
        cell_config=_CELL_CONFIG.value,
    )
    env, cache = _cache_env()
    if not _DRY_RUN.value:
        print(f"compile cache shared by every cell: {cache}", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if (
                signal.getsignal(sig) is not signal.SIG_IGN
            ):  # `nohup`, a script's `&`: keep ignoring.
                signal.signal(sig, _on_signal)
    locked: list[str] = []  # Cells running elsewhere, and cells that start from one of them.
    for i, (workdir, args) in enumerate(runs, start=1):
        command = [sys.executable, "-m", "s4mi_jax.main", *args]
        label = f"[{i}/{len(runs)}]"
        done = os.path.exists(os.path.join(workdir, "results.json"))
        holder = None if done else workdir_lock.holder(workdir)
        waits_for = [d for d in locked if f"--config.init_from={d}" in args]
        if holder or waits_for:
            why = f"running elsewhere (PID {holder})" if holder else f"needs {waits_for[0]}"
            print(f"{label} {why}, skipped: {shlex.join(command)}", flush=True)
            locked.append(workdir)
            continue
        print(f"{label} {'done, skipped: ' if done else ''}{shlex.join(command)}", flush=True)
        if done or _DRY_RUN.value:
            continue
        if _Stop.signum is not None:
            break
        returncode = _run_cell(command, env, label)
        if _Stop.signum is not None:
            break
        if returncode != 0:
            holder = workdir_lock.holder(workdir)
            if holder:  # Another sweep started it between our check and the cell's own.
                print(f"{label} running elsewhere (PID {holder}), skipped", flush=True)
                locked.append(workdir)
                continue
            sys.exit(f"run failed (exit {returncode}): {workdir}; rerun to resume the sweep.")
    if _Stop.signum is not None:
        name = signal.Signals(_Stop.signum).name
        print(f"sweep stopped by {name}; rerun the same command to resume it.", file=sys.stderr)
        sys.exit(128 + _Stop.signum)
    if locked:
        message = (
            f"{len(locked)} cell(s) skipped, running elsewhere or waiting for one that is: "
            f"{', '.join(locked)}. Rerun this command once they finish to complete the sweep."
        )
        if _DRY_RUN.value:
            print(message, file=sys.stderr)
        else:
            sys.exit(message)


if __name__ == "__main__":
    app.run(main)
