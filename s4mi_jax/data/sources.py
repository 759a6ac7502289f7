"""Random-access data sources (Grain `RandomAccessDataSource` protocol: `__len__` + `__getitem__`).

Every record is a dict `{"image": uint8 (H, W, C), "label": int32, "index": int32}`; `label` is -1 for an
unlabeled image, so unlabeled data needs no fake labels. Sources check their input when they are built, so a
missing folder, an empty folder or a corrupt file stops the run before anything is trained or written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from s4mi_jax.data import medical, validate
from s4mi_jax.data.image_io import IMAGE_EXTENSIONS, displayed_size, read_image, read_mask
from s4mi_jax.errors import ConfigError, DataError

SAMPLE_ROOT = os.path.join(os.path.dirname(__file__), "sample", "chest_xray")
# Segmentation sample (BBBC038 / DSB2018 nuclei, CC0): images/ + masks/.
SEG_SAMPLE_ROOT = os.path.join(os.path.dirname(__file__), "sample", "nuclei")
# What a folder of images may hold: DICOM files are read with pydicom (the `medical` extra).
READABLE_EXTENSIONS = IMAGE_EXTENSIONS + medical.DICOM_EXTENSIONS
UNLABELED = -1


def is_labeled(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of labeled rows: label >= 0, or (multi-label, (N, C)) no -1 in the row."""
    labels = np.asarray(labels)
    return labels >= 0 if labels.ndim == 1 else (labels >= 0).all(axis=1)


def list_images(folder: Path, notes: validate.Notes | None = None) -> list[Path]:
    """The readable image files of `folder`, sorted; a name that is not valid UTF-8 is refused (it
    could not be written to a manifest, CSV or JSON), naming its bytes."""
    try:
        entries = list(folder.iterdir())
    except OSError as e:
        raise DataError(f"cannot list {folder}: {e.strerror or e}.") from None
    files = sorted(p for p in entries if p.suffix.lower() in READABLE_EXTENSIONS and p.is_file())
    for p in files:
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(p.name)
            raise DataError(
                f"{folder}: file name {raw!r} is not valid UTF-8; rename it (e.g. convmv -f latin1 "
                "-t utf-8 --notest)."
            ) from None
    return files


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV as people write them (validate.read_table: encodings, delimiters, no empty file)."""
    return validate.read_table(path, required).rows


class FolderSource:
    """Images in `root/images/` (or directly in `root/`), labels from an optional `root/labels.csv`.

    `labels.csv` has columns `filename,label`; labels may be integers or class names (names are sorted and
    numbered, or ordered by `class_names`). Or, for multi-label data, `filename,<class_1>,...,<class_C>`
    with 0/1 entries and no `label` column: `labels` is then (N, C) multi-hot. Images absent from
    labels.csv are unlabeled (-1). `metadata.csv` (optional) may carry a `patient_id` column, used to keep
    one patient's images on one side of a split. CSV and label rules: `data/validate.py`; facts the user
    should hear (e.g. blank patient ids) are collected in `notes`.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        channels: int | None = None,
        verify: bool = True,
        class_names: Sequence[str] | None = None,
        accept_label_warnings: bool = False,
    ):
        root = Path(root)
        if not root.is_dir():
            raise DataError(
                f"data folder {root} does not exist (config.data.root / config.data.eval_root)."
            )
        self.notes = validate.Notes()
        image_dir = root / "images" if (root / "images").is_dir() else root
        self.files = list_images(image_dir, self.notes)
        if not self.files:
            raise DataError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}. Expected {root}/images/*.png."
            )
        self.root = root
        names = [p.name for p in self.files]
        self.labels = np.full(len(names), UNLABELED, np.int32)
        self.class_names: list[str] = []
        labels_csv = root / "labels.csv"
        if labels_csv.exists() or labels_csv.is_symlink():
            self._read_labels(labels_csv, names, class_names, accept_label_warnings)
        self.groups: list[str] | None = None
        if (root / "metadata.csv").exists():
            table = validate.read_table(root / "metadata.csv", ["filename"])
            column = validate.patient_column(table.path, table.columns)
            if column is not None:
                by_name = validate.patient_ids(table, column)
                self.groups = validate.patients_for(names, by_name, table.path, self.notes)
        self.mask_files: list[Path | None] | None = None
        if (root / "masks").is_dir():  # Optional per image: unlabeled images need no fake masks.
            by_stem = {
                p.stem: p
                for p in (root / "masks").iterdir()
                if p.suffix.lower() in IMAGE_EXTENSIONS
            }
            self.mask_files = [by_stem.get(p.stem) for p in self.files]
        first = read_image(self.files[0], channels)
        self.channels = first.shape[-1]
        if verify:
            self.verify()

    def _read_labels(self, path: Path, names: list[str], class_names, accept: bool) -> None:
        table = validate.read_table(path, ["filename"])
        index = {n: i for i, n in enumerate(names)}
        columns = [c for c in table.columns if c != "filename"]
        if "label" not in columns and len(columns) > 1:
            self._read_multilabels(table, columns, index)
            return
        table = validate.read_table(path, ["filename", "label"])
        raw = [r.get("label") or "" for r in table.rows]
        self.class_names, ids = validate.parse_labels(
            path, raw, table.lines, class_names=class_names, accept=accept
        )
        seen: dict[str, int] = {}
        for line, row, value in zip(table.lines, table.rows, ids, strict=True):
            name = os.path.basename(row["filename"])
            if name not in index:
                raise DataError(
                    f"{path} line {line}: file {row['filename']!r} is not in {self.files[0].parent}."
                )
            if name in seen:
                raise DataError(
                    f"{path} lines {seen[name]} and {line}: {name!r} is listed twice; keep one row."
                )
            seen[name] = line
            self.labels[index[name]] = value

    def _read_multilabels(self, table: validate.Table, columns, index) -> None:
        path = table.path
        self.class_names = columns
        self.labels = np.full((len(index), len(columns)), UNLABELED, np.int32)
        for line, row in zip(table.lines, table.rows, strict=True):
            name = os.path.basename(row["filename"])
            if name not in index:
                raise DataError(
                    f"{path} line {line}: file {row['filename']!r} is not in {self.files[0].parent}."
                )
            try:
                values = [int(row.get(c) or "") for c in columns]
            except (TypeError, ValueError):
                values = [-1]
            if any(v not in (0, 1) for v in values):
                raise DataError(
                    f"{path} line {line}: multi-label columns {columns} must be 0 or 1."
                )
            self.labels[index[name]] = values

    def verify(self) -> None:
        """Checks every file's structure (PNG chunk CRCs, truncation) without a full decode."""
        for path in self.files:
            if path.suffix.lower() in medical.DICOM_EXTENSIONS:
                read_image(path, None)
                continue
            try:
                with validate.open_image_checked(path) as img:
                    img.verify()
            except DataError:
                raise
            except Exception as e:  # PIL raises many types for a bad file.
                raise DataError(
                    f"cannot read image {path}: {e}. Remove or replace the file."
                ) from None

    def __len__(self) -> int:
        return len(self.files)

    def mask(self, i: int, image_shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The mask of image `i` (class indices, (H, W)), or None if it has none."""
        if self.mask_files is None or self.mask_files[i] is None:
            return None
        if image_shape is None:  # As displayed (EXIF Orientation), like the image read_image gives.
            w, h = displayed_size(self.files[i])
            image_shape = (h, w)
        return read_mask(self.mask_files[i], image_shape, self.files[i])

    def spacing(self, i: int) -> tuple[float, float] | None:
        """(row, column) pixel spacing in mm where the file records it (DICOM), else None."""
        if self.files[i].suffix.lower() in medical.DICOM_EXTENSIONS:
            return medical.read_dicom(self.files[i])[1]
        return None

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        image = read_image(self.files[i], self.channels)
        return {"image": image, "label": self.labels[i], "index": np.int32(i)}


class CsvSource(FolderSource):
    """A CSV of image paths: columns `path` (or `filename`), optional `label`, `patient_id`, `mask`.

    Paths are relative to the CSV's folder (or absolute). Rows without a label (empty cell) are
    unlabeled; rows without a mask have none; rows without a patient_id are their own patient. Labels
    follow labels.csv's rules (ids or class names).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        channels: int | None = None,
        verify: bool = True,
        class_names: Sequence[str] | None = None,
        accept_label_warnings: bool = False,
    ):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"data file {path} does not exist (config.data.root).")
        self.notes = validate.Notes()
        table = validate.read_table(path)
        rows = table.rows
        column = next((c for c in ("path", "filename") if c in table.columns), None)
        if column is None:
            raise DataError(
                f"{path}: no 'path' column (found {table.columns}); expected a header line "
                "path[,label,patient_id,mask]."
            )
        base = path.parent
        self.root = path
        self.files, seen = [], {}
        for line, row in zip(table.lines, rows, strict=True):
            value = row.get(column) or ""
            file = Path(value) if os.path.isabs(value) else base / value
            if not value or not file.is_file():
                raise DataError(f"{path} line {line}: file {value!r} does not exist.")
            if file in seen:
                raise DataError(f"{path} lines {seen[file]} and {line}: {value!r} is listed twice.")
            seen[file] = line
            self.files.append(file)
        self.keys = [row[column] for row in rows]
        self.labels = np.full(len(rows), UNLABELED, np.int32)
        self.class_names = []
        raw = [r.get("label") or "" for r in rows]
        labeled = [i for i, v in enumerate(raw) if v]
        if labeled:
            names, ids = validate.parse_labels(
                path,
                [raw[i] for i in labeled],
                [table.lines[i] for i in labeled],
                class_names=class_names,
                accept=accept_label_warnings,
            )
            self.class_names = names
            self.labels[labeled] = ids
        patient = validate.patient_column(path, table.columns)
        self.groups = None
        if patient is not None:
            by_key = {r[column]: r.get(patient, "") for r in rows}
            self.groups = validate.patients_for(self.keys, by_key, path, self.notes)
        self.mask_files = None
        if "mask" in table.columns:
            self.mask_files = [base / r["mask"] if r.get("mask") else None for r in rows]
        self.channels = read_image(self.files[0], channels).shape[-1]
        if verify:
            self.verify()


class NpzSource:
    """A `.npz` file with `images` (N, H, W[, C]) uint8 and optional `labels` (N,) int; optional `keys`
    (record ids for manifests), `class_names` and `groups` (patient ids), as `data/cache.py` writes."""

    def __init__(self, path: str | Path, *, class_names: Sequence[str] | None = None):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"data file {path} does not exist (config.data.root).")
        try:
            with np.load(path) as f:
                if "images" not in f:
                    raise DataError(f"{path}: no 'images' array (found {sorted(f.files)}).")
                images = f["images"]
                labels = f["labels"] if "labels" in f else None
                extra = {k: f[k] for k in ("keys", "class_names", "groups") if k in f}
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path}: {e}") from None
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
            raise DataError(
                f"{path}: 'images' must be a non-empty uint8 array (N, H, W[, C]); "
                f"got {images.dtype} {images.shape}."
            )
        if images.shape[1] * images.shape[2] > validate.MAX_IMAGE_PIXELS:
            raise DataError(f"{path}: images of {images.shape[2]}x{images.shape[1]} are too large.")
        if labels is not None and labels.shape != (len(images),):
            raise DataError(f"{path}: 'labels' shape {labels.shape} != ({len(images)},).")
        self.root = path
        self.images = images
        self.labels = (
            np.full(len(images), UNLABELED, np.int32)
            if labels is None
            else validate.check_label_array(path, labels)
        )
        names = class_names or (
            [str(c) for c in extra["class_names"]] if "class_names" in extra else None
        )
        self.class_names = validate.check_class_ids(path, self.labels, names)
        self.notes = validate.Notes()
        for key in ("keys", "groups"):
            if key in extra and extra[key].shape != (len(images),):
                raise DataError(f"{path}: '{key}' shape {extra[key].shape} != ({len(images)},).")
        self.keys = [str(k) for k in extra["keys"]] if "keys" in extra else None
        self.groups = [str(g) for g in extra["groups"]] if "groups" in extra else None
        self.channels = images.shape[-1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"image": self.images[i], "label": self.labels[i], "index": np.int32(i)}


def source_keys(source) -> list[str]:
    """A stable id per record (file name, or row number for arrays): what manifests are made of."""
    # CSV paths, NIfTI "volume:slice", TFDS record ids, a cache of a folder (its file names); an
    # `.npz` without `keys` has `keys = None`.
    if getattr(source, "keys", None) is not None:
        return list(source.keys)
    if hasattr(source, "files"):
        return [p.name for p in source.files]
    return [f"{i:08d}" for i in range(len(source))]


class SubsetSource:
    """A view of `source` restricted to `indices` (a split or a label-fraction manifest)."""

    def __init__(self, source: FolderSource | NpzSource, indices: Sequence[int]):
        self.source = source
        self.root = source.root
        self.indices = np.asarray(indices, np.int64)
        self.labels = source.labels[self.indices]
        self.channels = source.channels
        self.class_names = source.class_names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.source[int(self.indices[i])]


def open_source(
    root: str | None,
    *,
    channels: int | None = None,
    verify: bool = True,
    class_names: Sequence[str] | None = None,
    accept_label_warnings: bool = False,
):
    """Opens a folder, `.npz` or `.csv` dataset; `root=None` means the embedded chest X-ray sample.

    A folder whose images are NIfTI volumes (`images/*.nii.gz`) gives their 2-D slices.
    """
    root = SAMPLE_ROOT if root is None else os.path.expanduser(str(root))
    labels = dict(class_names=class_names, accept_label_warnings=accept_label_warnings)
    if str(root).endswith(".npz"):
        return NpzSource(root, class_names=class_names)
    if str(root).endswith(".csv"):
        return CsvSource(root, channels=channels, verify=verify, **labels)
    folder = Path(root) / "images" if (Path(root) / "images").is_dir() else Path(root)
    if folder.is_dir() and any(medical.is_nifti(p) for p in folder.iterdir()):
        return medical.NiftiSource(root)
    return FolderSource(root, channels=channels, verify=verify, **labels)


def notes_of(source) -> list[str]:
    """What the user should hear about a source that opened fine (e.g. images without patient id)."""
    notes = getattr(source, "notes", None)
    return list(notes.items) if notes is not None else []


def open_from_config(data) -> object:
    """The training source `config.data` names: a TFDS dataset (`tfds_name` [+ `tfds_data_dir`,
    `tfds_split`]) or `root` (folder, .npz, .csv; None = the embedded sample)."""
    name = data.get("tfds_name")
    if name:
        if data.get("root"):
            raise ConfigError(
                f"config.data.root={data.root} and config.data.tfds_name={name}: give one of them."
            )
        from s4mi_jax.data import tfds_builders

        return tfds_builders.TfdsSource(
            name, data_dir=data.get("tfds_data_dir"), split=data.get("tfds_split") or "train"
        )
    accept = bool(data.get("accept_label_warnings", False))
    source = open_source(
        data.root,
        channels=data.channels,
        verify=data.verify,
        class_names=validate.class_names_of(data),
        accept_label_warnings=accept,
    )
    validate.check_no_empty_class(source, explicit=validate.class_names_of(data) is not None)
    return source


def open_eval_from_config(data, train_source) -> object:
    """`config.data.eval_root`, read with the training source's channels and class names (so a test
    folder holding only some of the classes numbers them as training does)."""
    return open_test_folder(data.eval_root, data, train_source.channels, train_source.class_names)


def open_test_folder(root: str, data, channels: int, class_names: Sequence[str]) -> object:
    """A labeled test folder (`config.data.eval_root`, `s4mi_jax.score --data_root`) read with the
    training data's channels and class names (so a folder holding only some of the classes numbers
    them as training does)."""
    return open_source(
        root,
        channels=channels,
        verify=data.verify,
        class_names=validate.class_names_of(data) or list(class_names) or None,
        accept_label_warnings=bool(data.get("accept_label_warnings", False)),
    )


# ---- An external test folder that holds training images --------------------------------------


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def training_overlap(eval_files: Sequence[Path], train_files: Sequence[Path]) -> list[Path]:
    """The files of `eval_files` that are also training files: the same file (real path, so a
    symlink or the same folder under another name counts) or the same bytes (sha256).

    Cheap: only files whose size equals a training file's size are hashed, each once."""
    real = {os.path.realpath(p) for p in train_files}
    by_size: dict[int, list[Path]] = {}
    for p in train_files:
        try:
            by_size.setdefault(os.path.getsize(p), []).append(p)
        except OSError:
            continue
    digests: dict[
        int, set[str]
    ] = {}  # Training files' hashes, per size, computed when first needed.
    found = []
    for p in eval_files:
        if os.path.realpath(p) in real:
            found.append(p)
            continue
        try:
            size = os.path.getsize(p)
            if size not in by_size:
                continue
            if size not in digests:
                digests[size] = {_sha256(q) for q in by_size[size]}
            if _sha256(p) in digests[size]:
                found.append(p)
        except OSError:
            continue
    return found


def overlap_warning(
    eval_root: str | Path, train_root: str | Path, found: Sequence[str], total: int
) -> str:
    """The one line a run prints when `found` of the `total` test images (`config.data.eval_root`)
    are training images: a test on them measures memorisation, not generalisation."""
    return (
        f"warning: config.data.eval_root={eval_root}: {len(found)} of {total} images are also "
        f"training images in config.data.root={train_root} (same path or same bytes), e.g. "
        f"{found[0]}; the test then measures memorisation. Point eval_root at held-out images."
    )


def record_files(source) -> list[Path] | None:
    """The image file of each record of `source` (a folder, a CSV of paths, or a subset of one);
    None for sources whose records are not files (`.npz`, TFDS, NIfTI slices)."""
    if isinstance(source, SubsetSource):
        files = record_files(source.source)
        return None if files is None else [files[int(i)] for i in source.indices]
    if isinstance(source, FolderSource):  # CsvSource too.
        return list(source.files)
    return None


def eval_overlap_warning(
    eval_source, train_source, eval_root: str | Path | None = None
) -> str | None:
    """`overlap_warning` for a classification test source (`config.data.eval_root`) and the training
    source, or None when no test image is a training image. Sources without files (`.npz`, TFDS)
    are compared by their real path only."""
    eval_root = eval_root if eval_root is not None else eval_source.root
    eval_files, train_files = record_files(eval_source), record_files(train_source)
    if eval_files is not None and train_files is not None:
        found = [p.name for p in training_overlap(eval_files, train_files)]
    elif os.path.realpath(str(eval_source.root)) == os.path.realpath(str(train_source.root)):
        base = eval_source.source if isinstance(eval_source, SubsetSource) else eval_source
        keys = source_keys(base)
        found = [keys[int(i)] for i in getattr(eval_source, "indices", range(len(keys)))]
    else:
        found = []
    if not found:
        return None
    return overlap_warning(eval_root, train_source.root, found, len(eval_source))
