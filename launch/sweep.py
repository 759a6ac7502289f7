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

Segmentation (S4MI's semi-supervised claim): `--methods=supervised_seg,fixmatch_seg,cross_teaching`
with `--fractions=0.1,0.3,0.5,0.7,1.0` runs the PH2 configs (`--variant=''` for the default scale, or
`nuclei` / `lung`); the semi-supervised methods skip 100% (no unlabeled images left) and nothing is
pretrained. `picie` (unsupervised, PiCIE) adds the "unsupervised" row: one cell per seed, whatever
the fractions (`<method>/frac_0/seed_<s>`; it uses no training labels).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from absl import app, flags

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


def main(argv: list[str]) -> None:
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
    env = dict(os.environ)
    if _COMPILE_CACHE.value is not None:
        env["S4MI_COMPILE_CACHE"] = _COMPILE_CACHE.value
    for i, (workdir, args) in enumerate(runs, start=1):
        command = [sys.executable, "-m", "s4mi_jax.main", *args]
        done = os.path.exists(os.path.join(workdir, "results.json"))
        print(
            f"[{i}/{len(runs)}] {'done, skipped: ' if done else ''}{shlex.join(command)}",
            flush=True,
        )
        if done or _DRY_RUN.value:
            continue
        result = subprocess.run(command, env=env)
        if result.returncode != 0:
            sys.exit(
                f"run failed (exit {result.returncode}): {workdir}; rerun to resume the sweep."
            )


if __name__ == "__main__":
    app.run(main)
