"""Score a finished run, or a folder of its predictions, on a labeled test set.

    python -m s4mi_jax.score --workdir=runs/ft_10                              # the run's own test split
    python -m s4mi_jax.score --workdir=runs/ft_10 --data_root=/data/external_test --output=ext.json
    python -m s4mi_jax.score --workdir=runs/ft_10 --predictions=preds/ --data_root=/data/external_test

Why: a run is tested once, at its end, on its test split (or `config.data.eval_root`). This command
gives the same numbers again, or numbers on another labeled folder, without retraining: the model is
rebuilt from the run's `config.json` and its best checkpoint exactly as `s4mi_jax.predict` rebuilds it,
and the test data go through the run's own evaluation code, so with no `--data_root` the metrics equal
the `test` entries of the run's `results.json`, and on a folder they equal those of a run trained with
`config.data.eval_root` set to that folder (the training split does not depend on it).

- `--data_root`: a labeled folder in the layout of the run's data (classification: images + labels.csv,
  read with the run's channels and classes; segmentation: images/ + masks/, brought to the run's model
  size as its evaluation does). Default: the run's own test split, re-derived from its config (the
  manifest hash is checked against the run's).
- `--predictions=DIR`: score the files `s4mi_jax.predict` wrote (`predictions.csv`, or `masks.csv` +
  `masks/`) instead of running the model; each labeled image is matched to its prediction by file name.
  Segmentation masks are brought to the model size as the labels are (nearest neighbour), the size the
  run's metrics are computed at: with `data.resize="resize"` and images at least as large as the model
  size this gives exactly the checkpoint's numbers.
- Metrics: classification `evaluators/metrics.py` (`test`, and `test_ci95` with the run's
  `eval.bootstrap` and seed); segmentation `evaluators/segmentation.py` `dataset_metrics` (`test`, plus
  `test_<network>` for cross teaching's second network when scoring the checkpoint).

Writes `--output` (JSON) when given and prints a table. Exit status 0; 2 with one line on stderr for a
bad workdir, an unfinished run, a folder without labels or a bad flag. Supported trainers: `classify`,
`segment`, `fixmatch_seg`, `cross_teaching`.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging

from s4mi_jax import interrupt, outputs, predict
from s4mi_jax.core import compile_cache
from s4mi_jax.core.metric_writer import write_json
from s4mi_jax.errors import ConfigError, DataError, S4MIError

SEGMENTATION = ("segment", "fixmatch_seg", "cross_teaching")
SUPPORTED = ("classify", *SEGMENTATION)


def _finished_run(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, results.json) of a finished, supported run; a ConfigError naming what is missing."""
    if not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir} does not exist.")
    config = predict.load_run_config(workdir)
    trainer = config.get("trainer")
    if trainer not in SUPPORTED:
        raise ConfigError(
            f"--workdir={workdir}: score does not support config.trainer={trainer!r} (it scores "
            f"{', '.join(SUPPORTED)} runs)."
        )
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        raise ConfigError(
            f"--workdir={workdir}: no results.json; the run has not finished (resume it with the "
            "same training command first)."
        )
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}.") from None
    return config, results


def _check_manifest(manifest, results: dict, workdir: str) -> None:
    want = results.get("manifest_hash")
    if want and manifest.hash != want:
        raise DataError(
            f"--workdir={workdir}: the data now give manifest {manifest.hash[:12]}, but the run "
            f"used {want[:12]}; the data changed since. Give the test folder as --data_root."
        )


# ---- Classification -----------------------------------------------------------------------------


def _classification_test(config, model, data_root: str | None, results: dict, workdir: str):
    """The labeled test source: `data_root`'s labeled images, or the run's own test split."""
    from s4mi_jax.data import manifests

    if data_root:
        return manifests.labeled_test_folder(
            data_root,
            config.data,
            model.channels,
            model.class_names,
            multilabel=model.multilabel,
            what="--data_root",
        )
    quick = ml_collections.ConfigDict(config.data.to_dict())
    quick.verify = False  # Only names, labels and patients are needed to re-derive the split.
    source, manifest, _ = manifests.open_and_split(
        quick, fraction=config.label_fraction, seed=config.seed
    )
    if manifest is None:
        raise DataError(f"{source.root}: no labels; give a labeled folder as --data_root.")
    _check_manifest(manifest, results, workdir)
    return manifests.test_source(config.data, source, manifest)


def _read_probabilities(folder: str, class_names: list[str]) -> dict[str, np.ndarray]:
    """File name -> probabilities from `predict`'s predictions.csv in `folder`."""
    from s4mi_jax.evaluators import predictions

    path = os.path.join(folder, "predictions.csv")
    if not os.path.isfile(path):
        raise ConfigError(
            f"--predictions={folder}: no predictions.csv (a folder written by s4mi_jax.predict)."
        )
    try:
        files, probs, names = predictions.read_csv(path)
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read {path}: {e!r}.") from None
    if names != [str(c) for c in class_names]:
        raise DataError(
            f"{path}: classes {names[:12]}, but the run's are {list(class_names)[:12]}; "
            "predictions of another run?"
        )
    return _by_name(files, list(probs), path)


def _by_name(files: list[str], values: list, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f, v in zip(files, values, strict=True):
        name = os.path.basename(f)
        if name in out:
            raise DataError(f"{path}: two predictions for files named {name!r}; keep one.")
        out[name] = v
    return out


def _matched(names: list[str], predicted: dict[str, Any], folder: str) -> list:
    """The prediction of each labeled image, by file name: every one needs exactly one."""
    twice = sorted(n for n, c in Counter(names).items() if c > 1)
    if twice:
        raise DataError(
            f"--predictions={folder}: the labeled images share file names (e.g. {twice[0]!r}), so "
            "predictions cannot be matched to them by name; score the checkpoint instead."
        )
    missing = [n for n in names if n not in predicted]
    if missing:
        raise DataError(
            f"--predictions={folder}: no prediction for {len(missing)} of the {len(names)} labeled "
            f"image(s), e.g. {missing[:3]}; run s4mi_jax.predict on the same images."
        )
    return [predicted[n] for n in names]


def score_classification(
    config, workdir: str, results: dict, data_root, predictions_dir, checkpoint, batch_size, log
) -> dict:
    """`test` metrics and `test_ci95` of a classify run on its test split or `data_root`."""
    from s4mi_jax.data.sources import source_keys
    from s4mi_jax.evaluators import metrics

    model = predict.restore_classifier(config, workdir, checkpoint, batch_size)
    test = _classification_test(config, model, data_root, results, workdir)
    keys = source_keys(test.source)
    names = [os.path.basename(keys[i]) for i in test.indices]
    if predictions_dir:
        probs = np.stack(
            _matched(
                names, _read_probabilities(predictions_dir, model.class_names), predictions_dir
            )
        )
        labels = np.asarray(test.labels)
        what = f"predictions in {predictions_dir}"
    else:
        labels, probs = model.probabilities(test)
        what = f"checkpoint {model.folder}/{model.step}"
    log(f"score: {len(names)} labeled image(s) of {test.root}, {what}")
    out = metrics.classification_metrics(labels, probs, multilabel=model.multilabel)
    ci = metrics.bootstrap_ci(
        labels,
        probs,
        multilabel=model.multilabel,
        n_boot=config.eval.bootstrap,
        seed=config.seed,
    )
    return {
        "num_test": len(names),
        "class_names": model.class_names,
        "test": out,
        "test_ci95": {k: list(v) for k, v in ci.items()},
    }


# ---- Segmentation -------------------------------------------------------------------------------


def _segmentation_test(config, channels: int, data_root, results: dict, workdir: str):
    """(TestSplit, the folder its images are in): `data_root`'s masked images, or the run's own."""
    from s4mi_jax.data import segmentation as segdata

    if data_root:
        return segdata.labeled_folder(data_root, config, channels, what="--data_root"), data_root
    data = segdata.load(config.data, config.aug.image_size)
    manifest = segdata.make_manifest(data, config)
    _check_manifest(manifest, results, workdir)
    return segdata.test_split(config, data, manifest), config.data.get("eval_root") or data.root


def _read_masks(folder: str, keys: list[str], root, config, num_classes: int) -> np.ndarray:
    """`predict`'s masks for the test keys, brought to the model size as the labels were."""

    from s4mi_jax.data import image_io
    from s4mi_jax.data import segmentation as segdata
    from s4mi_jax.data.sources import read_mask

    path = os.path.join(folder, "masks.csv")
    if not os.path.isfile(path):
        raise ConfigError(
            f"--predictions={folder}: no masks.csv (a folder written by s4mi_jax.predict)."
        )
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        files, masks = [r["file"] for r in rows], [r["mask"] for r in rows]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read {path}: {e!r}.") from None
    by_name = _by_name(files, masks, path)
    names = sorted({k.split("#")[0] for k in keys})
    images = Path(root) / "images" if (Path(root) / "images").is_dir() else Path(root)
    pieces: dict[str, np.ndarray] = {}
    for name, mask_path in zip(names, _matched(names, by_name, folder), strict=True):
        here = os.path.join(folder, "masks", os.path.basename(mask_path))
        mask_path = here if os.path.exists(here) else mask_path  # The folder may have moved.
        w, h = image_io.displayed_size(images / name)  # As predict read it (EXIF applied).
        mask = read_mask(mask_path, (h, w), images / name)
        if mask.max(initial=0) >= num_classes:
            raise DataError(
                f"predicted mask {mask_path} holds class {int(mask.max())}; the run has "
                f"{num_classes} classes."
            )
        blank = np.zeros((h, w, 1), np.uint8)
        for corner, _, m in segdata.to_model_size(
            blank, mask, config.data.resize, config.aug.image_size
        ):
            key = name if corner is None else f"{name}#{corner[0]}_{corner[1]}"
            pieces[key] = m
    return np.stack([pieces[k] for k in keys]).astype(np.int32)


def score_segmentation(
    config,
    workdir: str,
    results: dict,
    data_root,
    predictions_dir,
    checkpoint,
    batch_size,
    log,
    network: str | None = None,
) -> dict:
    """`test` (and `test_<network>` for a second network) of a segmentation run."""
    from s4mi_jax.data import segmentation as segdata
    from s4mi_jax.evaluators import segmentation as segmetrics

    keys = predict.segmentation_networks(config)
    if network is not None:
        keys = [predict.SEG_NETWORKS.get(config.trainer, {}).get(network, network)]
    first = predict.restore_segmenter(config, workdir, checkpoint, batch_size, network, key=keys[0])
    test, root = _segmentation_test(config, first.channels, data_root, results, workdir)
    out: dict[str, Any] = {"num_test": len(test.keys)}
    if predictions_dir:
        preds = _read_masks(predictions_dir, test.keys, root, config, first.num_classes)
        log(f"score: {len(test.keys)} labeled image(s) of {root}, predictions in {predictions_dir}")
        out["test"] = segmetrics.dataset_metrics(preds, test.masks, first.num_classes)[0]
        return out
    x = segdata.eval_images(test.images, config.aug)
    log(
        f"score: {len(test.keys)} labeled image(s) of {root}, checkpoint {first.folder}/{first.step}"
    )
    for i, key in enumerate(keys):
        model = (
            first
            if i == 0
            else predict.restore_segmenter(config, workdir, checkpoint, batch_size, key=key)
        )
        preds = model.class_maps(x)
        out["test" + (f"_{key}" if key else "")] = segmetrics.dataset_metrics(
            preds, test.masks, model.num_classes
        )[0]
    return out


# ---- The command --------------------------------------------------------------------------------


def score(
    workdir: str,
    *,
    data_root: str | None = None,
    predictions_dir: str | None = None,
    checkpoint: str = "best",
    batch_size: int | None = None,
    network: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Scores the run in `workdir` (its model, or `predictions_dir`) on `data_root` (default: its own
    test split); returns what `--output` holds."""
    config, results = _finished_run(workdir)
    for flag, value in (("--data_root", data_root), ("--predictions", predictions_dir)):
        if value is not None and not os.path.isdir(value):
            raise ConfigError(f"{flag}={value} is not a folder.")
    if batch_size is not None and batch_size <= 0:
        raise ConfigError(f"--batch_size={batch_size} must be > 0 (or left out: the run's).")
    trainer = config.trainer
    args = (config, workdir, results, data_root, predictions_dir, checkpoint, batch_size, log)
    if trainer == "classify":
        if network is not None:
            raise ConfigError(f"--network={network}: a classifier has one network; leave it out.")
        scored = score_classification(*args)
    else:
        if network is not None and predictions_dir:
            raise ConfigError("--network applies to the checkpoint, not to --predictions.")
        scored = score_segmentation(*args, network=network)
    return {
        "workdir": os.path.abspath(workdir),
        "trainer": trainer,
        "method": results.get("method", config.get("method")),
        "manifest_hash": results.get("manifest_hash"),
        "data": os.path.abspath(data_root) if data_root else "the run's test split",
        "source": f"predictions {os.path.abspath(predictions_dir)}"
        if predictions_dir
        else (f"checkpoint {checkpoint}"),
        **scored,
    }


def table(scored: dict) -> str:
    """A short table: one row per metric, one column per scored network (+ the 95% CI)."""
    columns = [k for k in scored if k == "test" or k.startswith("test_") and k != "test_ci95"]
    ci = scored.get("test_ci95", {})
    metrics = list(scored[columns[0]])
    width = max(len(m) for m in ["metric", *metrics]) + 2
    cols = [max(12, len(c) + 2) for c in columns]

    def cell(value, w: int) -> str:
        if isinstance(value, int) or (
            isinstance(value, float) and value.is_integer() and value > 1
        ):
            return f"{int(value):>{w}d}"
        return f"{value:>{w}.4f}"

    lines = [
        f"{'metric':<{width}}"
        + "".join(f"{c:>{w}}" for c, w in zip(columns, cols, strict=True))
        + ("   95% CI" if ci else "")
    ]
    for m in metrics:
        row = f"{m:<{width}}" + "".join(
            cell(scored[c].get(m, float("nan")), w) for c, w in zip(columns, cols, strict=True)
        )
        if m in ci:
            row += f"   [{ci[m][0]:.4f}, {ci[m][1]:.4f}]"
        lines.append(row)
    return f"{scored['num_test']} test image(s), {scored['source']}\n" + "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command's flags; defined only when run as a command (tests pass their own FlagValues)."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "Run folder of s4mi_jax.main (finished).", **fv)
    flags.DEFINE_string(
        "data_root", None, "Labeled test folder; default: the run's own test split.", **fv
    )
    flags.DEFINE_string(
        "predictions", None, "Score this s4mi_jax.predict output folder, not the model.", **fv
    )
    flags.DEFINE_string("output", None, "Write the scores to this JSON file.", **fv)
    flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.", **fv)
    flags.DEFINE_integer("batch_size", None, "Default: the run's config.eval.batch_size.", **fv)
    flags.DEFINE_string("network", None, "Cross teaching: only cnn or transformer.", **fv)
    compile_cache.define_flag()


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    f = flag_values
    try:
        if len(argv) > 1:
            raise ConfigError(f"unexpected arguments: {argv[1:]}")
        if not f.workdir:
            raise ConfigError("--workdir is required (a finished run folder of s4mi_jax.main).")
        if not flags.FLAGS["verbosity"].present:  # Orbax's INFO/WARNING lines drown the table.
            logging.set_verbosity(logging.ERROR)
        compile_cache.enable_from_flag()
        if f.output:  # Checked before the (minutes of) scoring: never into data.
            roots = outputs.config_data_roots(predict.load_run_config(f.workdir))
            if f.data_root:
                roots["--data_root"] = f.data_root
            outputs.check_output(f.output, "--output", roots)
        interrupt.started()
        scored = score(
            f.workdir,
            data_root=f.data_root,
            predictions_dir=f.predictions,
            checkpoint=f.checkpoint,
            batch_size=f.batch_size,
            network=f.network,
            log=lambda m: print(m, flush=True),
        )
        if f.output:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
                write_json(f.output, scored)
            except OSError as e:
                raise ConfigError(f"--output={f.output}: {e}") from None
    except S4MIError as e:
        message = str(e).split("\n--------------------")[0]
        print(f"score: error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # --output is written atomically, at the end: nothing half-written.
        print("score: interrupted; nothing was written.", file=sys.stderr)
        sys.exit(interrupt.EXIT_INTERRUPTED)
    print(table(scored), flush=True)
    if f.output:
        print(f"score: wrote {f.output}", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
