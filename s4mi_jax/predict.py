"""Apply a trained model to new images.

    python -m s4mi_jax.predict --workdir=runs/ft_10 --input=/data/new_images --output=preds/
    python -m s4mi_jax.predict --workdir=runs/ft_10 --input=a.png,b.jpg --output=preds/ --checkpoint=latest

Loads the run's `config.json` and a checkpoint (`--checkpoint`: `best` = the model selected on
validation, the one the run tested (default; a run without one falls back to `latest`); `latest`; or a
step number), then runs the model jitted over the device mesh in batches of `--batch_size` (default: the
run's `config.eval.batch_size`). Images of any size are read, converted to the run's channel count and
resized + normalised by the evaluation's own code (`pipeline.eval_batches` -> `augment.eval_view`), so a
test image gets exactly the probabilities the run's evaluation gave it (`test_predictions.csv`).

`--input`: folders (their `images/` subfolder if there is one, as for training; files with an image
extension, not recursive) and/or files, comma-separated. Outputs in `--output`:
- classifiers (`config.trainer = "classify"`: supervised, linear probe, fine-tune): `predictions.csv`
  (`file`, `predicted`, `prob_<class>`...: evaluators/predictions.py);
- segmenters (`segment`, `fixmatch_seg`, `cross_teaching`): `masks/<stem>.png` at the input's own
  size (0/255 for a binary run, as the training masks; class ids otherwise), `overlays/<stem>.png`
  (image | prediction) and `masks.csv`. The image goes to the model size as the run's evaluation
  does (`data.resize`: bilinear resize, or tiles), the class map comes back with nearest neighbour
  (or the tiles put back). Cross teaching: `--network=cnn` (the U-Net, the method's `test`;
  default) or `transformer` (the Swin-UNet, `test_transformer`), each with its own best checkpoint;
- `skipped.csv` (`file`, `error`) when some files could not be read (or have a name that is not valid
  UTF-8): they are listed on stderr and skipped, and the rest is predicted.
Results are written chunk by chunk as they are produced (flushed), so an interruption keeps every
finished prediction; `skipped.csv` is written even then.

Exit status: 0 when at least one image was predicted (even if others were skipped), 1 when none could be
read (no image found, or every file unreadable), 2 for a bad workdir, checkpoint or flag.

The model loading (`restore_classifier`, `restore_segmenter`) is shared with `s4mi_jax.score`, which
scores the same models on labeled data.

Adding a task: `TASKS` maps the workdir config's `trainer` to a loader `(config, workdir, checkpoint,
batch_size, network) -> Predictor`; a Predictor turns decoded images into outputs (`predict`) and opens
a writer for them (`writer(output_dir)` with `add(files, images, outputs)` per chunk and `close()`).
"""

from __future__ import annotations

from s4mi_jax import interrupt

if __name__ == "__main__":  # Ctrl-C while JAX imports: one line.
    interrupt.quiet_until_started("predict")

import csv  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Protocol  # noqa: E402

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from s4mi_jax import outputs  # noqa: E402
from s4mi_jax.core import compile_cache, sharding  # noqa: E402
from s4mi_jax.core.checkpoint import Checkpointer  # noqa: E402
from s4mi_jax.core.metric_writer import read_config_json  # noqa: E402
from s4mi_jax.data.sources import READABLE_EXTENSIONS, read_image  # noqa: E402
from s4mi_jax.errors import ConfigError, S4MIError  # noqa: E402
from s4mi_jax.evaluators import features, predictions  # noqa: E402

# Images decoded and held at once: outputs are written chunk by chunk, memory stays bounded.
CHUNK_BATCHES = 4


class Writer(Protocol):
    def add(self, files: Sequence[str], images: Sequence[np.ndarray], outputs: Any) -> None: ...

    def close(self) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class Predictor:
    channels: int  # Images are read with this many channels (the run's).
    batch_size: int
    predict: Callable[[list[np.ndarray]], Any]  # decoded uint8 (H, W, C) images -> outputs
    writer: Callable[[str], Writer]  # output folder -> a writer
    description: str  # For the log line.


@dataclasses.dataclass
class Report:
    predicted: list[str]
    skipped: list[tuple[str, str]]  # (file, reason)
    written: list[str]


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(
            f"--workdir={workdir}: no config.json; not a run folder of s4mi_jax.main."
        )
    return ml_collections.ConfigDict(read_config_json(path))


def resolve_checkpoint(workdir: str, checkpoint: str, best: str = "best") -> tuple[str, int]:
    """(checkpoint folder, step) for `best`, `latest` or a step number; `best` is the folder of the
    selected weights (cross teaching keeps one per network: `best`, `best_transformer`)."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    best_dir = os.path.join(workdir, best)
    steps = _steps

    if checkpoint == "best":
        if steps(best_dir):
            return best_dir, steps(best_dir)[-1]
        checkpoint = "latest"  # No validation ran yet (or the method has none).
    if checkpoint == "latest":
        if not steps(ckpt_dir):
            raise ConfigError(f"--workdir={workdir}: no checkpoint in {ckpt_dir}.")
        return ckpt_dir, steps(ckpt_dir)[-1]
    if not checkpoint.isdigit():
        raise ConfigError(f"--checkpoint={checkpoint!r}: expected best, latest or a step number.")
    for folder in (ckpt_dir, best_dir):
        if int(checkpoint) in steps(folder):
            return folder, int(checkpoint)
    raise ConfigError(
        f"--checkpoint={checkpoint}: no such step in {workdir}; saved steps: "
        f"{steps(ckpt_dir)} (checkpoints/), {steps(best_dir)} ({best}/)."
    )


class DamagedCheckpoint(ConfigError):
    """A checkpoint whose files do not restore (truncated, emptied, half-copied)."""


def checkpoint_candidates(
    workdir: str, checkpoint: str, best: str = "best"
) -> list[tuple[str, int]]:
    """`resolve_checkpoint`'s choice first, then what stands in for it if it is damaged: for `best`
    and `latest`, the run's checkpoints newest first (as a run resumes from its newest intact one); a
    step asked for by number has no stand-in."""
    first = resolve_checkpoint(workdir, checkpoint, best)
    if checkpoint.isdigit():
        return [first]
    ckpt_dir = os.path.join(workdir, "checkpoints")
    others = [(ckpt_dir, s) for s in reversed(_steps(ckpt_dir)) if (ckpt_dir, s) != first]
    return [first, *others]


def _steps(folder: str) -> list[int]:
    if not os.path.isdir(folder):
        return []
    return sorted(int(p) for p in os.listdir(folder) if p.isdigit())


def first_intact(
    workdir: str, checkpoint: str, best: str, attempt: Callable[[str, int], Any]
) -> Any:
    """`attempt(folder, step)` on the first candidate checkpoint that restores. A damaged one is named
    in a warning on stderr and the next is tried (nothing is moved: predict and score only read the
    run); if none restores, one line naming each."""
    failed = []
    for folder, step in checkpoint_candidates(workdir, checkpoint, best):
        try:
            result = attempt(folder, step)
        except DamagedCheckpoint as e:
            failed.append(f"{folder}/{step} ({e})")
            continue
        for bad in failed:
            print(
                f"warning: checkpoint {bad} is damaged; using {folder}/{step} instead.",
                file=sys.stderr,
                flush=True,
            )
        return result
    raise ConfigError(
        f"--workdir={workdir}: no checkpoint restores: {'; '.join(failed)}. Rerun the training "
        "command (it resumes from its newest intact checkpoint) or restore the run from a backup."
    )


def _meta(folder: str, step: int) -> dict:
    path = os.path.join(folder, str(step), "meta", "metadata")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DamagedCheckpoint(f"cannot read its metadata {path}: {e}") from None
    if not isinstance(meta, dict):
        raise DamagedCheckpoint(f"its metadata {path} is not a JSON object")
    return meta


class _Images:
    """Decoded images as a source for `pipeline.eval_batches` (unlabeled records)."""

    def __init__(self, images: list[np.ndarray]):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": np.int32(-1), "index": np.int32(i)}


class _AppendingCsv:
    """A CSV written as results come (flushed and synced per chunk): a crash or kill mid-way keeps
    every row finished before it. Opened on the first row, so no rows means no file."""

    def __init__(self, path: str, header: Sequence[str]):
        self.path, self.header = path, list(header)
        self._file = None

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        if self._file is None:
            self._file = open(self.path, "w", newline="")  # noqa: SIM115 (closed in close())
            csv.writer(self._file).writerow(self.header)
        csv.writer(self._file).writerows(rows)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> bool:
        """True if anything was written."""
        if self._file is None:
            return False
        self._file.close()
        return True


class _ProbabilityCsv:
    """Writes class probabilities to `predictions.csv` chunk by chunk, as they are produced."""

    def __init__(self, output_dir: str, class_names: list[str], multilabel: bool):
        self.path = os.path.join(output_dir, "predictions.csv")
        self.class_names, self.multilabel = class_names, multilabel
        self.out = _AppendingCsv(self.path, predictions.csv_header(class_names))

    def add(self, files, images, outputs) -> None:
        del images
        rows = predictions.csv_rows(files, outputs, self.class_names, multilabel=self.multilabel)
        self.out.write(rows)

    def close(self) -> list[str]:
        return [self.path] if self.out.close() else []


def _replicated_mesh(config: ml_collections.ConfigDict, batch_size: int | None):
    """(mesh over all local devices, parameters replicated; batch size rounded up to a multiple of
    the devices, default the run's `config.eval.batch_size`)."""
    config.mesh = dict(data=-1, fsdp=1)  # Whatever devices predict runs on, not the run's mesh.
    mesh = sharding.make_mesh(config.mesh)
    n = mesh.devices.size
    return mesh, -(-(batch_size or config.eval.batch_size) // n) * n


@dataclasses.dataclass(frozen=True)
class ClassifierModel:
    """A `classify` run's restored model: what `predict` and `s4mi_jax.score` both evaluate, so the
    two cannot load a run differently."""

    config: ml_collections.ConfigDict
    state: Any
    mesh: Any
    batch_size: int
    class_names: list[str]
    channels: int
    multilabel: bool
    folder: str
    step: int
    logits_fn: Callable

    def probabilities(self, source) -> tuple[np.ndarray, np.ndarray]:
        """(labels, probabilities) of every record of `source`, as the run's test evaluation."""
        logits, labels = features.extract(
            self.logits_fn,
            self.state.params,
            self.state.model_state,
            source,
            self.config.aug,
            batch_size=self.batch_size,
            mesh=self.mesh,
        )
        return labels, predictions.probabilities(logits, self.multilabel)


def restore_checkpoint(
    config: ml_collections.ConfigDict, mesh, folder: str, step: int, **data: Any
):
    """(task, built, state): `config`'s trainer built as the run built it (`core.run.build`) with the
    checkpoint's data facts (`channels`, `num_classes`, `multilabel` set in `config.data`), and the
    state of `folder` at `step` restored into it."""
    from s4mi_jax import trainers
    from s4mi_jax.core import run

    config = ml_collections.ConfigDict(config.to_dict())
    config.data.update({k: v for k, v in data.items() if v is not None})
    trainer = trainers.get(config.trainer)
    facts = trainer.abstract_data(config)
    task = trainer.task(config, facts, mesh)
    built = run.build(config, mesh, task, facts)
    ckpt = Checkpointer(folder)
    try:
        state = ckpt.restore(built.abstract_state, None, step)
    except S4MIError:
        raise
    except Exception as e:  # Orbax/TensorStore raise many types for damaged files.
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DamagedCheckpoint(f"{type(e).__name__}: {first}") from None
    finally:
        ckpt.close()
    return task, built, state


def restore_classifier(
    config: ml_collections.ConfigDict, workdir: str, checkpoint: str, batch_size: int | None
) -> ClassifierModel:
    """A `classify` run's model at `checkpoint` (`best` by default: the one the run tested; a damaged
    one is replaced by the newest intact checkpoint, with a warning)."""
    return first_intact(
        workdir,
        checkpoint,
        "best",
        lambda folder, step: _restore_classifier_at(config, folder, step, batch_size),
    )


def _restore_classifier_at(
    config: ml_collections.ConfigDict, folder: str, step: int, batch_size: int | None
) -> ClassifierModel:
    meta = _meta(folder, step)
    if "class_names" not in meta:
        raise ConfigError(
            f"{folder}/{step}: the checkpoint does not record its classes and channels (a run from "
            "before s4mi_jax.predict existed); rerun the training command to write a new checkpoint."
        )
    class_names, channels = list(meta["class_names"]), int(meta["in_channels"])
    mesh, batch_size = _replicated_mesh(config, batch_size)
    multilabel = bool(meta["multilabel"])
    _, built, state = restore_checkpoint(
        config,
        mesh,
        folder,
        step,
        channels=channels,
        num_classes=len(class_names),
        multilabel=multilabel,
    )
    return ClassifierModel(
        config=config,
        state=state,
        mesh=mesh,
        batch_size=batch_size,
        class_names=class_names,
        channels=channels,
        multilabel=multilabel,
        folder=folder,
        step=step,
        logits_fn=features.make_embed_fn(built.graphdef, lambda m: m),  # As the run's evaluation.
    )


def load_classifier(
    config: ml_collections.ConfigDict,
    workdir: str,
    checkpoint: str,
    batch_size: int | None,
    network: str | None = None,
) -> Predictor:
    """A `classify` run's model at `checkpoint`: images -> class probabilities (N, C)."""
    if network is not None:
        raise ConfigError(f"--network={network}: a classifier has one network; leave it out.")
    model = restore_classifier(config, workdir, checkpoint, batch_size)
    class_names, multilabel = model.class_names, model.multilabel
    return Predictor(
        channels=model.channels,
        batch_size=model.batch_size,
        predict=lambda images: model.probabilities(_Images(images))[1],
        writer=lambda out: _ProbabilityCsv(out, class_names, multilabel),
        description=(
            f"{config.method} classifier ({config.model.name}, {len(class_names)} classes"
            f"{', multi-label' if multilabel else ''}) at step {model.step} of {model.folder}"
        ),
    )


def _save_png_atomically(image, path: str) -> None:
    """A PNG written whole or not at all (temporary file, then rename): a Ctrl-C or a full disk never
    leaves a truncated mask that would later read as a prediction."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _MaskPngs:
    """Writes `masks/<stem>.png` (0/255 for two classes, else class ids), `overlays/<stem>.png`
    (image | prediction) and, at the end, `masks.csv` (`file`, `mask`, `overlay`, `height`, `width`,
    `foreground_fraction`). Inputs sharing a stem get `<stem>_2.png`, ... (masks.csv says which)."""

    def __init__(self, output_dir: str, num_classes: int):
        self.output_dir, self.num_classes = output_dir, num_classes
        for sub in ("masks", "overlays"):
            os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
        self.used: set[str] = set()
        header = ("file", "mask", "overlay", "height", "width", "foreground_fraction")
        self.out = _AppendingCsv(os.path.join(output_dir, "masks.csv"), header)

    def _name(self, path: str) -> str:
        stem, k = Path(path).stem, 1
        name = stem
        while name in self.used:
            k += 1
            name = f"{stem}_{k}"
        self.used.add(name)
        return name + ".png"

    def add(self, files, images, outputs) -> None:
        from PIL import Image

        from s4mi_jax.evaluators.segmentation import overlay_strip

        rows = []
        for path, image, class_map in zip(files, images, outputs, strict=True):
            name = self._name(path)
            mask = class_map * 255 if self.num_classes == 2 else class_map
            mask_path = os.path.join(self.output_dir, "masks", name)
            overlay_path = os.path.join(self.output_dir, "overlays", name)
            _save_png_atomically(Image.fromarray(mask.astype(np.uint8)), mask_path)
            _save_png_atomically(Image.fromarray(overlay_strip(image, class_map)), overlay_path)
            h, w = class_map.shape
            rows.append((path, mask_path, overlay_path, h, w, float((class_map > 0).mean())))
        self.out.write(rows)

    def close(self) -> list[str]:
        if not self.out.close():
            return []
        return [
            self.out.path,
            os.path.join(self.output_dir, "masks"),
            os.path.join(self.output_dir, "overlays"),
        ]


# Cross teaching trains two networks; `--network` picks one (default: the method's `test`, the U-Net).
SEG_NETWORKS = {"cross_teaching": {"cnn": "", "transformer": "transformer"}}


@dataclasses.dataclass(frozen=True)
class SegmenterModel:
    """One network of a segmentation run, restored: what `predict` and `s4mi_jax.score` both run."""

    config: ml_collections.ConfigDict
    state: Any
    mesh: Any
    batch_size: int
    num_classes: int
    channels: int
    network: str  # The method's predictor key ("" = its first network, "transformer", ...).
    folder: str
    step: int
    predict_fn: Callable

    def class_maps(self, images: np.ndarray) -> np.ndarray:
        """Class maps (N, S, S) of normalised model-size images, as the run's evaluation."""
        from s4mi_jax.evaluators import pixel_predict

        return pixel_predict.predict_all(
            self.predict_fn, self.state, images, self.batch_size, self.mesh
        )


def segmentation_networks(config: ml_collections.ConfigDict) -> list[str]:
    """The method's networks (predictor keys), the one it reports as `test` first."""
    import jax

    from s4mi_jax import trainers

    trainer = trainers.get(config.trainer)
    one = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)), jax.devices()[:1])
    return list(trainer.task(config, trainer.abstract_data(config), one).networks)


def restore_segmenter(
    config: ml_collections.ConfigDict,
    workdir: str,
    checkpoint: str,
    batch_size: int | None,
    network: str | None = None,
    *,
    key: str | None = None,
) -> SegmenterModel:
    """A `segment` / `fixmatch_seg` / `cross_teaching` run's network at `checkpoint`, from its own
    best checkpoint: `network` as `--network` names it (cnn | transformer), or the predictor `key`;
    default the method's first (its `test`)."""

    networks = SEG_NETWORKS.get(config.trainer, {})
    if network is not None and network not in networks:
        raise ConfigError(
            f"--network={network}: a {config.trainer} run has "
            + (f"networks {sorted(networks)}." if networks else "one network; leave it out.")
        )
    if key is None:
        key = networks[network] if network is not None else segmentation_networks(config)[0]
    return first_intact(
        workdir,
        checkpoint,
        "best" + (f"_{key}" if key else ""),
        lambda folder, step: _restore_segmenter_at(config, folder, step, batch_size, key),
    )


def _restore_segmenter_at(
    config: ml_collections.ConfigDict, folder: str, step: int, batch_size: int | None, key: str
) -> SegmenterModel:
    from s4mi_jax.evaluators import pixel_predict

    meta = _meta(folder, step)
    channels = meta.get("in_channels", config.data.get("channels"))
    if channels is None:
        raise ConfigError(
            f"{folder}/{step}: the checkpoint does not record its input channels (a run from "
            "before s4mi_jax.predict existed) and config.data.channels is not set; rerun the "
            "training command to write a new checkpoint."
        )
    num_classes = int(meta.get("num_classes", config.data.num_classes))
    mesh, batch_size = _replicated_mesh(config, batch_size)
    task, built, state = restore_checkpoint(
        config, mesh, folder, step, channels=int(channels), num_classes=num_classes
    )
    return SegmenterModel(
        config=config,
        state=state,
        mesh=mesh,
        batch_size=batch_size,
        num_classes=num_classes,
        channels=int(channels),
        network=key,
        folder=folder,
        step=step,
        predict_fn=pixel_predict.make_predict_fn(built.graphdef, task.networks[key]),
    )


def load_segmenter(
    config: ml_collections.ConfigDict,
    workdir: str,
    checkpoint: str,
    batch_size: int | None,
    network: str | None = None,
) -> Predictor:
    """A `segment` / `fixmatch_seg` / `cross_teaching` run's network at `checkpoint`: images -> class
    maps (H, W) at each image's own size.

    As the run's evaluation: the image is brought to the model size by `segdata.to_model_size`
    (`config.data.resize`: whole-image bilinear resize, or tiles) and normalised by
    `segdata.eval_images`; the network (eval mode) is the one the run selected and tested
    (`pixel_predict.make_predict_fn`, `predict_all`). The class map is brought back to the image's size by
    `segdata.from_model_size` (nearest neighbour, or the tiles put back)."""
    from s4mi_jax.data import segmentation as segdata

    model = restore_segmenter(config, workdir, checkpoint, batch_size, network)
    size, mode = config.aug.image_size, config.data.resize

    def predict(images: list[np.ndarray]) -> list[np.ndarray]:
        pieces = [segdata.to_model_size(image, None, mode, size) for image in images]
        x = segdata.eval_images(np.stack([p[1] for ps in pieces for p in ps]), config.aug)
        maps = model.class_maps(x)
        out, start = [], 0
        for image, ps in zip(images, pieces, strict=True):
            corners = [p[0] for p in ps]
            out.append(
                segdata.from_model_size(
                    list(maps[start : start + len(ps)]), corners, image.shape[:2]
                )
            )
            start += len(ps)
        return out

    which = f"{network or 'cnn'} network, " if SEG_NETWORKS.get(config.trainer) else ""
    return Predictor(
        channels=model.channels,
        batch_size=model.batch_size,
        predict=predict,
        writer=lambda out: _MaskPngs(out, model.num_classes),
        description=(
            f"{config.trainer} segmenter ({which}{model.num_classes} classes, {mode} to {size}) at "
            f"step {model.step} of {model.folder}"
        ),
    )


# config.trainer -> loader.
TASKS: dict[str, Callable[..., Predictor]] = {
    "classify": load_classifier,
    "segment": load_segmenter,
    "fixmatch_seg": load_segmenter,
    "cross_teaching": load_segmenter,
}


def list_inputs(inputs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(image files of `inputs` (folders and files) in the given order, folders sorted by name;
    (file, reason) for files skipped before reading: names that are not valid UTF-8)."""
    files: list[str] = []
    skipped: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            folder = path / "images" if (path / "images").is_dir() else path
            try:
                found = sorted(folder.iterdir())
            except OSError as e:
                raise ConfigError(f"--input: cannot list {folder}: {e.strerror or e}.") from None
            found = [p for p in found if p.suffix.lower() in READABLE_EXTENSIONS and p.is_file()]
        elif path.is_file():
            found = [path]
        else:
            raise ConfigError(f"--input: {item} is neither a folder nor a file.")
        for p in found:
            try:
                str(p).encode("utf-8")
            except UnicodeEncodeError:
                shown = repr(os.fsencode(p))
                skipped.append((shown, f"file name {shown} is not valid UTF-8; rename it."))
                continue
            files.append(str(p))
    return files, skipped


def run(
    workdir: str,
    inputs: Sequence[str],
    output_dir: str,
    *,
    checkpoint: str = "best",
    batch_size: int | None = None,
    network: str | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """Predicts every readable image of `inputs` into `output_dir`; unreadable ones are reported."""
    config = load_run_config(workdir)
    trainer = config.get("trainer")
    if trainer not in TASKS:
        raise ConfigError(
            f"--workdir={workdir}: predict does not support config.trainer={trainer!r} yet; "
            f"it knows {sorted(TASKS)}."
        )
    if batch_size is not None and batch_size <= 0:
        raise ConfigError(f"--batch_size={batch_size} must be > 0 (or left out: the run's).")
    files, skipped = list_inputs(inputs)
    # Never into the inputs (a segmentation folder's hand-drawn masks/) or the run's data.
    roots = {}
    for item in inputs:
        folder = os.path.abspath(item if os.path.isdir(item) else os.path.dirname(item) or ".")
        if os.path.basename(folder) == "images":  # The training layout: D/images beside D/masks.
            folder = os.path.dirname(folder)
        roots[f"--input={item}"] = folder
    roots.update(outputs.config_data_roots(config))  # (Inside the run's workdir is fine.)
    outputs.check_output(output_dir, "--output", roots, input_files=files)
    _check_not_over_foreign_masks(output_dir)
    if not files:
        log(f"predict: no image files ({', '.join(READABLE_EXTENSIONS)}) in {', '.join(inputs)}")
    predictor = TASKS[trainer](config, workdir, checkpoint, batch_size, network)
    log(f"predict: {len(files)} file(s) with the {predictor.description}")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output={output_dir}: {e}") from None
    writer = predictor.writer(output_dir)
    report = Report([], list(skipped), [])
    chunk = CHUNK_BATCHES * predictor.batch_size
    try:  # Results are written chunk by chunk; whatever happens, what was finished stays written.
        for start in range(0, len(files), chunk):
            names, images = [], []
            for path in files[start : start + chunk]:
                try:
                    images.append(read_image(path, predictor.channels))
                    names.append(path)
                except S4MIError as e:  # DataError, or a missing optional reader (DICOM).
                    report.skipped.append((path, str(e)))
                except Exception as e:  # A decoder's own error type (e.g. pydicom) for a bad file.
                    reason = f"cannot read image {path}: {type(e).__name__}: {e}"
                    report.skipped.append((path, reason))
            if images:
                writer.add(names, images, predictor.predict(images))
                report.predicted += names
    except OSError as e:  # A full disk, a folder made read-only: what was written is kept.
        raise ConfigError(
            f"--output={output_dir}: cannot write: {e.strerror or e} ({len(report.predicted)} "
            "image(s) predicted before it are written). Free space and rerun to predict all."
        ) from None
    finally:
        try:
            report.written = writer.close()
            if report.skipped:
                path = os.path.join(output_dir, "skipped.csv")
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerows([("file", "error"), *report.skipped])
                report.written.append(path)
        except OSError:
            pass  # Already failing (the error above says so); never hide it behind a second one.
    return report


def _check_not_over_foreign_masks(output_dir: str) -> None:
    """`--output` may hold an earlier predict's masks (rerunning replaces them), never masks predict
    did not write: those are somebody's data (a dataset's ground truth)."""
    masks = os.path.join(output_dir, "masks")
    if not os.path.isdir(masks):
        return
    ours: set[str] = set()
    record = os.path.join(output_dir, "masks.csv")
    if os.path.isfile(record):
        with open(record, newline="", encoding="utf-8", errors="replace") as f:
            ours = {os.path.basename(row.get("mask") or "") for row in csv.DictReader(f)}
    foreign = sorted(p for p in os.listdir(masks) if p not in ours and not p.startswith("."))
    if foreign:
        raise ConfigError(
            f"--output={output_dir}: {masks} holds {len(foreign)} file(s) predict did not write "
            f"(e.g. {foreign[0]}; a dataset's masks?). Predict never writes over them: choose a "
            "new or empty --output folder."
        )


def exit_status(report: Report) -> int:
    """0 when at least one image was predicted (skipped files are reported, not fatal), else 1."""
    return 0 if report.predicted else 1


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command's flags; defined only when run as a command, so importing this module (tests,
    notebooks) never collides with `s4mi_jax.main`'s `--workdir` (tests pass their own FlagValues)."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_string(
        "workdir", None, "Run folder of s4mi_jax.main (config + checkpoints).", **fv
    )
    flags.DEFINE_list("input", None, "Image folders and/or files, comma-separated.", **fv)
    flags.DEFINE_string(
        "output",
        None,
        "Folder for predictions.csv or masks/ + overlays/ (created if needed).",
        **fv,
    )
    flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.", **fv)
    flags.DEFINE_integer("batch_size", None, "Default: the run's config.eval.batch_size.", **fv)
    flags.DEFINE_string(
        "network",
        None,
        "Cross teaching: cnn (the U-Net, default) | transformer (the Swin-UNet).",
        **fv,
    )
    compile_cache.define_flag()


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flag_values
    if not (f.workdir and f.input and f.output):
        raise app.UsageError("--workdir, --input and --output are required")
    if not flags.FLAGS["verbosity"].present:  # Orbax's INFO/WARNING lines drown the report.
        logging.set_verbosity(logging.ERROR)
    compile_cache.enable_from_flag()
    interrupt.started()
    try:
        report = run(
            f.workdir,
            f.input,
            f.output,
            checkpoint=f.checkpoint,
            batch_size=f.batch_size,
            network=f.network,
            log=lambda m: print(m, flush=True),
        )
    except S4MIError as e:
        print(f"predict: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Every finished chunk is written (flushed); no file is half-written.
        print(
            f"predict: interrupted; the predictions finished so far are kept in {f.output}.",
            file=sys.stderr,
        )
        sys.exit(interrupt.EXIT_INTERRUPTED)
    print(
        f"predict: {len(report.predicted)} image(s) predicted, {len(report.skipped)} skipped; "
        f"wrote {', '.join(report.written) or 'nothing'}",
        flush=True,
    )
    if report.skipped:
        print(f"predict: unreadable, skipped ({len(report.skipped)}):", file=sys.stderr)
        for _, reason in report.skipped:  # Each reason names its file.
            print(f"  {reason}", file=sys.stderr)
    sys.exit(exit_status(report))


if __name__ == "__main__":
    define_flags()
    app.run(main)
