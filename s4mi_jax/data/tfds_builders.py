"""TFDS builders for the S4MI datasets, prepared to ArrayRecord without TensorFlow, read back with Grain.

    python -m s4mi_jax.data.tfds_builders --dataset=ph2 --manual_dir=~/Downloads/PH2Dataset \
        --data_dir=~/tensorflow_datasets
    python -m s4mi_jax.main --config=configs/supervised_chest.py \
        --config.data.tfds_name=ph2 --config.data.tfds_data_dir=~/tensorflow_datasets

None of these datasets can be downloaded by a script (Kaggle, ISIC and PH2 need a sign-in; Dermofit a
licence), so every builder reads a **manual directory**: the files as the dataset's release unpacks them
(layouts in each builder's docstring), or this project's own layout (`images/` + optional `labels.csv`,
`masks/`, `metadata.csv` with `patient_id`: the layout of docs/data.md).

Why it works without TF: images are written as already-encoded PNG bytes into `tfds.features.Image`
(TFDS encodes nothing itself) and the file format is ArrayRecord; reading is `tfds.data_source`
(random access, NumPy, decoded with pillow), which `grain.MapDataset.source` takes directly.

Every example: `image` (uint8 H x W x C, PNG), `label` (int64 class id, -1 = unlabeled), `filename`,
`patient_id`, `has_mask` + `mask` (class ids, H x W x 1; a 1 x 1 zero mask when `has_mask` is false:
TFDS features cannot be absent, and `has_mask` says not to use it), `spacing` (row, col mm; NaN
unknown). Class names, and per split the labels, file names and patient ids, are in
`info.metadata`, so a source knows its labels without decoding an image.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from s4mi_jax.data.image_io import IMAGE_EXTENSIONS, read_image, read_mask
from s4mi_jax.errors import DataError

_NAN2 = np.array([np.nan, np.nan], np.float32)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buf, format="PNG")
    return buf.getvalue()


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _find(root: Path, pattern: str) -> Path | None:
    """First folder or file under `root` (any depth) whose name matches `pattern`."""
    hits = sorted(p for p in root.rglob("*") if re.fullmatch(pattern, p.name))
    return hits[0] if hits else None


def _example(image, label=-1, patient_id="", mask=None, split="train", key=None) -> dict:
    """What a layout parser returns per image; `mask` is a path or a uint8 array of class ids."""
    return dict(image=Path(image), label=int(label), patient_id=str(patient_id or ""), mask=mask,
                split=split, key=key or Path(image).name)  # fmt: skip


def normalized_layout(root: Path) -> list[dict] | None:
    """`root/images/*` (+ labels.csv, masks/<stem>.*, metadata.csv with patient_id), or None."""
    if not (root / "images").is_dir():
        return None
    labels, patients = {}, {}
    if (root / "labels.csv").exists():
        with open(root / "labels.csv", newline="") as f:
            labels = {r["filename"]: r["label"] for r in csv.DictReader(f)}
    if (root / "metadata.csv").exists():
        with open(root / "metadata.csv", newline="") as f:
            patients = {r["filename"]: r.get("patient_id", "") for r in csv.DictReader(f)}
    masks = {p.stem: p for p in _images(root / "masks")} if (root / "masks").is_dir() else {}
    return [
        _example(p, int(labels.get(p.name, -1)), patients.get(p.name, ""), masks.get(p.stem))
        for p in _images(root / "images")
    ]


class _Builder(tfds.core.GeneratorBasedBuilder):
    """Shared features and generation; subclasses parse their release layout in `release_layout`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release (ArrayRecord, prepared without TensorFlow)."}
    CHANNELS = 3
    CLASS_NAMES: tuple[str, ...] = ()
    MANUAL_DOWNLOAD_INSTRUCTIONS = "See the builder's docstring for the folder layout."

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(None, None, self.CHANNELS), encoding_format="png"
                    ),
                    "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "filename": tfds.features.Text(),
                    "patient_id": tfds.features.Text(),
                    "has_mask": tfds.features.Tensor(shape=(), dtype=np.bool_),
                    "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "spacing": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                }
            ),
            metadata=tfds.core.MetadataDict(),
            # Records in generation order (keys 00000000, ...), so record i is metadata row i.
            disable_shuffling=True,
        )

    def release_layout(self, root: Path) -> list[dict]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        examples = normalized_layout(root)
        if examples is None:
            examples = self.release_layout(root)
        if not examples:
            raise DataError(
                f"no images found in {root} for {self.name}; see its layout in the docs."
            )
        splits: dict[str, list[dict]] = {}
        for ex in examples:
            splits.setdefault(ex["split"], []).append(ex)
        names = list(self.CLASS_NAMES)
        top = max((ex["label"] for ex in examples), default=-1)
        if not names and top >= 0:
            names = [str(c) for c in range(top + 1)]
        self.info.metadata["class_names"] = names
        for split, exs in splits.items():
            self.info.metadata[split] = {
                "label": [ex["label"] for ex in exs],
                "filename": [ex["key"] for ex in exs],
                "patient_id": [ex["patient_id"] for ex in exs],
            }
        return {split: self._generate_examples(exs) for split, exs in splits.items()}

    def _generate_examples(self, examples: list[dict]) -> Iterator[tuple[str, dict]]:
        for i, ex in enumerate(examples):
            image = read_image(ex["image"], self.CHANNELS)
            mask = ex["mask"]
            if isinstance(mask, str | Path):
                mask = read_mask(mask, image.shape, ex["image"])
            yield (
                f"{i:08d}",
                {
                    "image": _png(image),
                    "label": ex["label"],
                    "filename": ex["key"],
                    "patient_id": ex["patient_id"],
                    "has_mask": mask is not None,
                    "mask": _png(
                        (np.zeros((1, 1)) if mask is None else mask).astype(np.uint8)[..., None]
                    ),
                    "spacing": _NAN2,
                },
            )


class ChestXrayPneumonia(_Builder):
    """Pediatric chest X-rays, normal vs pneumonia (Kermany et al. 2018; Kaggle "chest-xray-pneumonia").

    Release layout: `[chest_xray/]{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`. Patient ids come from the
    file names (`person12_bacteria_45.jpeg` -> `person12`, `IM-0115-0001.jpeg` -> `IM-0115`), so
    label-fraction splits keep each patient on one side.
    """

    CHANNELS = 1
    CLASS_NAMES = ("NORMAL", "PNEUMONIA")

    def release_layout(self, root: Path) -> list[dict]:
        examples = []
        for split in ("train", "val", "test"):
            base = _find(root, split)
            if base is None or not base.is_dir():
                continue
            for label, name in enumerate(self.CLASS_NAMES):
                if not (base / name).is_dir():
                    continue
                for p in _images(base / name):
                    m = re.match(r"(person\d+|.*?IM-\d+)", p.stem)
                    patient = m[1] if m else p.stem
                    examples.append(
                        _example(p, label, patient, split=split, key=f"{split}/{p.name}")
                    )
        return examples


class Ph2(_Builder):
    """PH2 dermoscopy (Mendonça et al. 2013): 200 images, lesion masks, 3 clinical diagnoses.

    Release layout: `PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`, the lesion mask
    `IMDxxx_lesion/IMDxxx_lesion.bmp`, and `PH2_dataset.txt`, whose rows `|| IMDxxx || ... ||` give
    the clinical diagnosis as the first one-digit field after the name (0 common nevus, 1 atypical
    nevus, 2 melanoma).
    """

    CLASS_NAMES = ("common_nevus", "atypical_nevus", "melanoma")

    def release_layout(self, root: Path) -> list[dict]:
        labels = {}
        table = _find(root, r"PH2_dataset\.txt")
        if table is not None:
            for line in table.read_text(errors="replace").splitlines():
                fields = [f.strip() for f in line.split("||")]
                names = [f for f in fields if re.fullmatch(r"IMD\d+", f)]
                digits = [f for f in fields if re.fullmatch(r"\d", f)]
                if names and digits:
                    labels[names[0]] = int(digits[0])
        examples = []
        for folder in sorted(p for p in root.rglob("IMD*_Dermoscopic_Image") if p.is_dir()):
            lesion_id = folder.name.split("_")[0]
            images = _images(folder)
            masks = list((folder.parent / f"{lesion_id}_lesion").glob("*.*"))
            if images:
                examples.append(
                    _example(
                        images[0], labels.get(lesion_id, -1), lesion_id, masks[0] if masks else None
                    )
                )
        return examples


class Dsb2018(_Builder):
    """2018 Data Science Bowl nuclei (Caicedo et al. 2019): one binary mask per image (union of nuclei).

    Release layout: `stage1_train/<id>/images/<id>.png` with one mask per nucleus in
    `stage1_train/<id>/masks/*.png`; `stage1_test/<id>/images/<id>.png` (no masks) becomes the
    `test` split. RGBA images are read as RGB.
    """

    def release_layout(self, root: Path) -> list[dict]:
        examples = []
        for split, pattern in (("train", r"stage1_train"), ("test", r"stage1_test")):
            base = _find(root, pattern)
            if base is None:
                continue
            for case in sorted(p for p in base.iterdir() if (p / "images").is_dir()):
                image = _images(case / "images")[0]
                mask = None
                if (case / "masks").is_dir():
                    parts = [
                        np.asarray(Image.open(m).convert("L")) > 0 for m in _images(case / "masks")
                    ]
                    mask = np.any(parts, axis=0).astype(np.uint8) if parts else None
                examples.append(
                    _example(image, -1, case.name, mask, split, key=f"{split}/{case.name}")
                )
        return examples


def _isic_ids(folder: Path | None) -> dict[str, Path]:
    if folder is None:
        return {}
    return {p.stem: p for p in _images(folder) if re.fullmatch(r"ISIC_\d+", p.stem)}


def _isic_masks(folder: Path | None) -> dict[str, Path]:
    if folder is None:
        return {}
    return {p.stem.removesuffix("_segmentation"): p for p in _images(folder)}


class Isic2018(_Builder):
    """ISIC 2018 (Codella et al. 2019; Tschandl et al. 2018): 7 diagnoses (Task 3) + lesion masks (Task 1).

    Release layout: `ISIC2018_Task3_Training_Input/ISIC_*.jpg` with
    `ISIC2018_Task3_Training_GroundTruth.csv` (image, MEL, NV, BCC, AKIEC, BKL, DF, VASC one-hot), and
    `ISIC2018_Task1-2_Training_Input/ISIC_*.jpg` with `ISIC2018_Task1_Training_GroundTruth/
    ISIC_*_segmentation.png`. One record per image id: label from Task 3 (-1 if absent), mask from
    Task 1 (absent for most images): a partially labelled segmentation set.
    """

    CLASS_NAMES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")

    def release_layout(self, root: Path) -> list[dict]:
        images = {
            **_isic_ids(_find(root, r"ISIC2018_Task1-2_Training_Input")),
            **_isic_ids(_find(root, r"ISIC2018_Task3_Training_Input")),
        }
        masks = _isic_masks(_find(root, r"ISIC2018_Task1_Training_GroundTruth"))
        labels = {}
        table = _find(root, r"ISIC2018_Task3_Training_GroundTruth\.csv")
        if table is not None:
            with open(table, newline="") as f:
                for row in csv.DictReader(f):
                    onehot = [float(row[c]) for c in self.CLASS_NAMES]
                    labels[row["image"]] = int(np.argmax(onehot))
        return [
            _example(images[k], labels.get(k, -1), "", masks.get(k), key=f"{k}{images[k].suffix}")
            for k in sorted(images)
        ]


class Isic2017(_Builder):
    """ISIC 2017 (Codella et al. 2018): melanoma / seborrheic keratosis / nevus, with lesion masks.

    Release layout: `ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_*.jpg`,
    `ISIC-2017_<split>_Part1_GroundTruth/ISIC_*_segmentation.png`,
    `ISIC-2017_<split>_Part3_GroundTruth.csv` (image_id, melanoma, seborrheic_keratosis).
    """

    CLASS_NAMES = ("nevus", "melanoma", "seborrheic_keratosis")

    def release_layout(self, root: Path) -> list[dict]:
        examples = []
        for split, tag in (("train", "Training"), ("validation", "Validation"), ("test", "Test")):
            images = _isic_ids(_find(root, rf"ISIC-2017_{tag}(_v2)?_Data"))
            masks = _isic_masks(_find(root, rf"ISIC-2017_{tag}(_v2)?_Part1_GroundTruth"))
            labels = {}
            table = _find(root, rf"ISIC-2017_{tag}(_v2)?_Part3_GroundTruth\.csv")
            if table is not None:
                with open(table, newline="") as f:
                    for row in csv.DictReader(f):
                        mel, sk = float(row["melanoma"]), float(row["seborrheic_keratosis"])
                        labels[row["image_id"]] = 1 if mel else 2 if sk else 0
            examples += [
                _example(images[k], labels.get(k, -1), "", masks.get(k), split, f"{split}/{k}")
                for k in sorted(images)
            ]
        return examples


class Dermofit(_Builder):
    """Dermofit Image Library (Ballerini et al. 2013; licensed): 1,300 lesions in 10 classes, with masks.

    Release layout: `<CLASS>/<lesion_id>/<lesion_id>.png` and `<lesion_id>mask.png`, where CLASS is
    one of AK, BCC, DF, IEC, MEL, ML, PYO, SCC, SK, VASC (labels in that order).
    """

    CLASS_NAMES = ("AK", "BCC", "DF", "IEC", "MEL", "ML", "PYO", "SCC", "SK", "VASC")

    def release_layout(self, root: Path) -> list[dict]:
        examples = []
        for label, name in enumerate(self.CLASS_NAMES):
            base = _find(root, name)
            if base is None or not base.is_dir():
                continue
            for lesion in sorted(p for p in base.iterdir() if p.is_dir()):
                image = lesion / f"{lesion.name}.png"
                mask = lesion / f"{lesion.name}mask.png"
                if image.exists():
                    examples.append(
                        _example(image, label, lesion.name, mask if mask.exists() else None)
                    )
        return examples


BUILDERS = {b.name: b for b in (ChestXrayPneumonia, Ph2, Dsb2018, Isic2018, Isic2017, Dermofit)}


def prepare(name: str, manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds `name` from `manual_dir` into `data_dir` (ArrayRecord); a prepared one is reused."""
    if name not in BUILDERS:
        raise DataError(f"unknown TFDS dataset {name!r}; choose one of {sorted(BUILDERS)}.")
    if not os.path.isdir(manual_dir):
        raise DataError(f"manual_dir {manual_dir} does not exist.")
    builder = BUILDERS[name](data_dir=os.path.expanduser(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir))
    )
    return builder


class TfdsSource:
    """A prepared split as a source (`config.data.tfds_name`): random access via `tfds.data_source`."""

    def __init__(self, name: str, *, data_dir: str | None = None, split: str = "train"):
        if name not in BUILDERS:
            raise DataError(f"config.data.tfds_name={name!r} is not one of {sorted(BUILDERS)}.")
        data_dir = os.path.expanduser(data_dir) if data_dir else None
        try:
            builder = BUILDERS[name](data_dir=data_dir)
            self.data = builder.as_data_source(split=split)
        except (AssertionError, ValueError, KeyError, FileNotFoundError) as e:
            raise DataError(
                f"TFDS dataset {name} (split {split!r}) is not prepared in "
                f"{data_dir or '~/tensorflow_datasets'}: {str(e).splitlines()[0]}. Prepare it with "
                f"python -m s4mi_jax.data.tfds_builders --dataset={name} --manual_dir=... "
                f"--data_dir={data_dir or '...'}"
            ) from None
        meta = builder.info.metadata
        self.root = f"tfds:{name}/{split}"
        self.class_names = list(meta["class_names"])
        self.labels = np.asarray(meta[split]["label"], np.int32)
        self.keys = list(meta[split]["filename"])
        patients = list(meta[split]["patient_id"])
        self.groups = patients if all(patients) else None
        self.channels = builder.CHANNELS

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        rec = self.data[i]
        return {"image": rec["image"], "label": self.labels[i], "index": np.int32(i)}

    def mask(self, i: int, image_shape=None) -> np.ndarray | None:
        rec = self.data[i]
        return rec["mask"][..., 0] if rec["has_mask"] else None

    def spacing(self, i: int) -> tuple[float, float] | None:
        s = self.data[i]["spacing"]
        return None if np.isnan(s).any() else (float(s[0]), float(s[1]))


def main(argv: list[str]) -> None:
    from absl import flags

    flags_ = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    try:
        builder = prepare(flags_.dataset, flags_.manual_dir, flags_.data_dir)
    except DataError as e:
        print(f"tfds_builders: error: {e}", file=sys.stderr)
        sys.exit(2)
    for split, info in builder.info.splits.items():
        print(f"{builder.name} {split}: {info.num_examples} examples in {builder.data_dir}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_enum("dataset", None, sorted(BUILDERS), "Dataset to prepare.", required=True)
    flags.DEFINE_string("manual_dir", None, "Folder with the downloaded files.", required=True)
    flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "Where prepared datasets go.")
    app.run(main)
