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

Checked before anything runs or is written (a dry run too; one line, exit 2): every fraction is a number
in (0, 1] (`10` is refused as a percentage: 0.1 is 10%), seeds are integers >= 0, methods are the
sweep's own and not mixed between classification and segmentation, nothing is given twice, every
config loads, and `--sweep_dir` is not (inside) a data folder of the runs (`s4mi_jax/outputs.py`).

Stopping: Ctrl-C, SIGTERM or SIGHUP stops the cell running now, as a preemption (SIGTERM: it saves a
checkpoint and exits; after `--stop_grace_s` it is killed, and the sweep says so; a second Ctrl-C kills
it at once), then the sweep exits 128+signal. A stop asked at any moment, the sweep's own start
included, starts no further cell. A signal the sweep was started with ignored stays ignored (`nohup`
asks that of SIGHUP; a shell script's `&` of SIGINT), and the sweep says so at start: such a SIGINT
stops nothing, SIGTERM does. The cell runs in its own process group, with SIGTERM at its default until
its training loop handles it (it stops at once while starting), and gets SIGTERM from the kernel if the
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

import difflib
import importlib.util
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stop:
    """What the signal handler tells the loop: the first signal received, when, and a second one;
    `ignored`: the stop signals this sweep was started with ignored (None: handlers not installed)."""

    signum: int | None = None
    since: float = 0.0
    now: bool = False
    ignored: list[str] | None = None


def _on_signal(signum: int, frame) -> None:
    """Only records (printing or signalling from a handler can interrupt the loop mid-write)."""
    del frame
    if _Stop.signum is None:
        _Stop.signum, _Stop.since = signum, time.monotonic()
    else:  # A second Ctrl-C: no more waiting.
        _Stop.now = True


def _catch_stop_signals() -> list[str]:
    """Records SIGINT/SIGTERM/SIGHUP from now on (once); returns the names of those left ignored: a
    signal ignored when the sweep started (`nohup`, a script's `&`) stays ignored, as asked."""
    if _Stop.ignored is None:
        _Stop.ignored = []
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:
                _Stop.ignored.append(signal.Signals(sig).name)
            else:
                signal.signal(sig, _on_signal)
    return _Stop.ignored


if __name__ == "__main__":
    # First thing: a stop asked while the sweep is still importing and checking is recorded (it then
    # starts no cell), not a KeyboardInterrupt traceback or a silent death.
    _catch_stop_signals()

from absl import app, flags  # noqa: E402

# `python launch/sweep.py` puts launch/ (not the repo root) on sys.path; make the package importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s4mi_jax import outputs  # noqa: E402
from s4mi_jax.core import lifeline, workdir_lock  # noqa: E402
from s4mi_jax.errors import ConfigError  # noqa: E402

CLASSIFICATION = ("supervised", "linear_probe", "finetune")
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
METHODS = (*CLASSIFICATION, PRETRAIN_ONLY, *SEGMENTATION)  # What `--methods` may name.


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
_PRETRAIN_VARIANT = flags.DEFINE_string(
    "pretrain_variant",
    None,
    "Config variant of the pretraining alone (e.g. local,sgd for DINO's SGD recipe), when the cells' "
    "configs do not have it; default: --variant.",
)
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
    pretrain_variant: str | None = None,
) -> list[tuple[str, list[str]]]:
    """(workdir, command) for every run, pretraining first, in the order they run.
    `pretrain_variant` (default `variant`) is the pretraining's own."""
    pretrain_variant = variant if pretrain_variant is None else pretrain_variant
    data = [f"--config.data.root={data_root}"] if data_root else []
    runs = []
    random_init = pretrain_config == RANDOM_INIT
    for seed in seeds:
        pre_dir = (
            RANDOM_INIT if random_init else os.path.join(sweep_dir, "pretrain", f"seed_{seed}")
        )
        wants_pretraining = any(m in NEEDS_PRETRAINING or m == PRETRAIN_ONLY for m in methods)
        if wants_pretraining and not random_init:
            cmd = [_config_arg(pretrain_config, pretrain_variant), f"--config.seed={seed}", *data]
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


def _fraction(text: str, given: list[str]) -> float:
    """`text` as a label fraction in (0, 1], or ConfigError saying what it looks like instead."""
    flag = f"--fractions={','.join(given)}"
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"{flag}: {text!r} is not a number; a label fraction is a number in (0, 1], the share "
            "of the training labels a cell uses (0.1 for 10%)."
        ) from None
    if 1 < value <= 100:
        one = " (1 means all the labels, not 1%)" if any(_is_one(g) for g in given) else ""
        raise ConfigError(
            f"{flag}: {text} looks like a percentage; label fractions are in (0, 1]: use "
            f"{value / 100:g} for {text}%{one}."
        )
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ConfigError(
            f"{flag}: {text} is not in (0, 1]; a label fraction is the share of the training "
            "labels a cell uses (0.1 for 10%, 1.0 for all)."
        )
    return value


def _is_one(text: str) -> bool:
    try:
        return float(text) == 1
    except ValueError:
        return False


def _no_repeats(flag: str, given: list[str], values: list) -> None:
    seen: dict = {}
    for text, value in zip(given, values, strict=True):
        if value in seen:
            same = "" if seen[value] == text else f" (the same as {seen[value]})"
            raise ConfigError(
                f"{flag}={','.join(given)}: {text} is given twice{same}; each cell would run twice."
            )
        seen[value] = text


def check_grid(fractions: list[str], seeds: list[str], methods: list[str]) -> None:
    """Raises ConfigError (one line naming the flag and the bad value) unless the grid is one the
    sweep can run: a typo found after hours of pretraining, or a cell trained at label_fraction=10,
    costs the whole sweep."""
    if not methods:
        raise ConfigError("--methods is empty: name at least one, e.g. --methods=supervised.")
    for method in methods:
        if method not in METHODS:
            close = difflib.get_close_matches(method, METHODS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"--methods={','.join(methods)}: {method!r} is not a method of the sweep; {hint}"
                f"known: {', '.join(METHODS)}."
            )
    _no_repeats("--methods", methods, methods)
    seg = [m for m in methods if m in SEGMENTATION]
    if seg and len(seg) < len(methods):
        other = next(m for m in methods if m not in SEGMENTATION)
        raise ConfigError(
            f"--methods={','.join(methods)}: {seg[0]} (segmentation, PH2 configs) and {other} "
            "(classification) do not share a table or a data folder; run them as two sweeps, each "
            "with its own --sweep_dir."
        )
    if not seeds:
        raise ConfigError("--seeds is empty: give at least one, e.g. --seeds=0.")
    for seed in seeds:
        if not re.fullmatch(r"[0-9]+", seed):
            raise ConfigError(
                f"--seeds={','.join(seeds)}: {seed!r} is not a seed; seeds are integers >= 0."
            )
    _no_repeats("--seeds", seeds, [int(s) for s in seeds])
    values = [_fraction(f, fractions) for f in fractions]
    uses_fractions = any(m not in UNSUPERVISED and m != PRETRAIN_ONLY for m in methods)
    if uses_fractions and not fractions:
        raise ConfigError("--fractions is empty: give at least one, e.g. --fractions=0.1,1.0.")
    _no_repeats("--fractions", fractions, values)


_CONFIGS: dict[str, object] = {}  # Config file -> its loaded module.


def _load_config(arg: str):
    """`--config=FILE[:ARG]` as `s4mi_jax.main` loads it (`get_config(ARG)`); ConfigError in one line
    if it does not: every cell would fail, maybe after hours of pretraining."""
    from s4mi_jax.cli import check_config_loads

    path, sep, variant = arg.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"--config={arg}: no config file {path} (from {os.getcwd()}).")
    try:
        if path not in _CONFIGS:
            spec = importlib.util.spec_from_file_location("_s4mi_sweep_config", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _CONFIGS[path] = module
        module = _CONFIGS[path]
        return module.get_config(variant) if sep else module.get_config()
    except Exception:  # Whatever the user's file raises: the one line cli.py writes for main.
        check_config_loads(arg)
        raise


_DATA_KEYS = ("root", "eval_root", "tfds_data_dir")


def data_roots(runs: list[tuple[str, list[str]]], data_root: str | None) -> dict[str, str]:
    """The data folders the runs read (name -> path): `--data_root`, then each run's config's
    `data.root` / `eval_root` / `tfds_data_dir` with the overrides the sweep passes it. The sweep's
    folder must be outside them all (`s4mi_jax/outputs.py`)."""
    roots = {"--data_root": data_root} if data_root else {}
    loaded: dict[str, dict[str, str]] = {}
    for _, args in runs:
        config_arg = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
        # One load per config and fraction: the seed (an integer, checked) moves no data folder,
        # and a 2000-seed grid would otherwise load 2000 times as many configs.
        key = re.sub(r"([:,])seed=[0-9]+(?=,|$)", r"\1", config_arg)
        if key not in loaded:
            loaded[key] = outputs.config_data_roots(_load_config(config_arg))
        found = dict(loaded[key])
        for a in args:  # The sweep's --config.data.* overrides win, as in the run.
            key, _, value = a.partition("=")
            if key.startswith("--config.data.") and key[len("--config.data.") :] in _DATA_KEYS:
                found[key[2:]] = value
        path = config_arg.partition(":")[0]
        for name, root in found.items():
            if root and root not in roots.values():
                roots[f"{name} of {path}"] = root
    return roots


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to the cell's process group (its data-loading workers too), else to the cell alone."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except OSError:
        proc.send_signal(sig)


def _run_cell(command: list[str], env: dict[str, str], label: str) -> int | None:
    """Runs one cell to its end, or until a signal stops it; returns its exit code (None: a stop was
    asked before it started, so it was not). The cell never outlives this function: however it ends
    (a signal, an exception here), the cell is stopped (SIGTERM, then SIGKILL after --stop_grace_s)
    and reaped."""
    if _Stop.signum is not None:
        return None
    proc = subprocess.Popen(command, env=lifeline.child_env(env), preexec_fn=lifeline.preexec_fn())
    forwarded = killed = False
    try:
        print(f"{label} pid {proc.pid}", flush=True)
        while True:
            # Checked before waiting: a stop that came while the cell was being started reaches it
            # at once (it is still importing; SIGTERM at its default ends it there).
            if _Stop.signum is not None and not forwarded:
                name = signal.Signals(_Stop.signum).name
                print(
                    f"sweep: {name}: stopping the running cell (pid {proc.pid}) as a preemption: "
                    f"it saves a checkpoint (killed after {_STOP_GRACE.value:g} s, or at a second "
                    "Ctrl-C)",
                    file=sys.stderr,
                    flush=True,
                )
                _signal_group(proc, signal.SIGTERM)
                forwarded = True
            late = forwarded and time.monotonic() - _Stop.since > _STOP_GRACE.value
            if (_Stop.now or late) and not killed:
                why = (
                    "a second signal"
                    if _Stop.now
                    else f"it did not stop within --stop_grace_s={_STOP_GRACE.value:g}"
                )
                print(
                    f"sweep: {label} {why}: the cell (pid {proc.pid}) is killed; what it trained "
                    "since its last checkpoint is lost.",
                    file=sys.stderr,
                    flush=True,
                )
                _signal_group(proc, signal.SIGKILL)
                killed = True
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
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
    try:  # Before anything runs or is written, the dry run too.
        check_grid(_FRACTIONS.value, _SEEDS.value, _METHODS.value)
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
            pretrain_variant=_PRETRAIN_VARIANT.value,
        )
        outputs.check_output(_SWEEP_DIR.value, "--sweep_dir", data_roots(runs, _DATA_ROOT.value))
    except ConfigError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        sys.exit(2)
    ignored = _catch_stop_signals()  # Already done at start when run as a command.
    if not _DRY_RUN.value and ignored:  # A stop that does nothing must not be a surprise.
        stoppers = [s.name for s in STOP_SIGNALS if s.name not in ignored]
        how = (
            f"{stoppers[0]} does (kill -{stoppers[0][3:]} {os.getpid()})"
            if stoppers
            else ("only SIGKILL ends it, and its cell then saves no checkpoint")
        )
        print(
            f"sweep: {' and '.join(ignored)} ignored: this sweep was started with "
            f"{'it' if len(ignored) == 1 else 'them'} ignored (a shell script's `&` does that to "
            f"SIGINT, nohup to SIGHUP), so {'it' if len(ignored) == 1 else 'they'} will not stop "
            f"the sweep; {how}.",
            file=sys.stderr,
            flush=True,
        )
    env, cache = _cache_env()
    if not _DRY_RUN.value:
        print(f"compile cache shared by every cell: {cache}", flush=True)
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
        if _Stop.signum is not None:  # Asked before this cell: it does not start.
            break
        print(f"{label} {'done, skipped: ' if done else ''}{shlex.join(command)}", flush=True)
        if done or _DRY_RUN.value:
            continue
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
        rerun = "" if _DRY_RUN.value else "; rerun the same command to resume it"
        print(f"sweep stopped by {name}{rerun}.", file=sys.stderr)
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
