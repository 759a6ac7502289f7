"""The one place that decides whether data are usable: training (`main`), `inspect_data` and `predict`
all run these checks, so they cannot disagree.

Why one module: the inspector used to re-implement the trainer's reading and said "OK" for data the
trainer then refused (or the reverse). Here every check raises `DataError`/`ConfigError` with one line
naming the file (and row) or config key, what is wrong and what to do; `inspect_data` turns the same
exceptions into findings.

What is read as people write it (docs/data.md):
- CSV files: UTF-8 with or without BOM (Excel's "CSV UTF-8"), UTF-16 with BOM; anything else is refused
  naming the encoding it looks like. `,` `;` or tab delimiters (taken from the header line). Header
  cells are stripped; rows whose cells are all blank are skipped.
- Labels: integer ids 0..K-1 (no gaps) or class names, not both; an optional `config.data.class_names`
  fixes names and order. Without it, names that look like variants of each other (same lowercased, or
  one letter apart) and classes with fewer than 2 patients stop the run with the counts, unless
  `config.data.accept_label_warnings=True`.
- Patients: the `patient_id` column of metadata.csv (or of a CSV of paths); a blank or missing id makes
  that image its own patient (reported); a column that looks like a patient id under another name
  (`PatientID`, `subject_id`, ...) is refused rather than ignored (patients would leak across splits).
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s4mi_jax.errors import ConfigError, DataError

UNLABELED = -1
# Normalised (lowercase, letters and digits only) header names that mean "patient id" in someone's export.
PATIENT_LIKE = {
    "patientid", "patient", "patientnumber", "patientno", "patid", "pid", "subjectid", "subject",
    "subjectno", "caseid", "participantid", "participant", "mrn", "studysubjectid",
}  # fmt: skip
# Images above this many pixels are refused: PIL's decompression-bomb error level (2x its warning level,
# which large scans may exceed legitimately).
MAX_IMAGE_PIXELS = 2 * 89_478_485


@dataclass
class Table:
    """A CSV file as read: stripped header, rows as dicts, and each row's line number in the file."""

    path: Path
    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int]
    delimiter: str = ","


@dataclass
class Notes:
    """Non-fatal facts the user must hear about (logged by the trainer, listed by the inspector)."""

    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items.append(text)


def read_text(path: Path) -> str:
    """The file's text: UTF-8 (BOM or not) or UTF-16 with BOM; anything else is refused by name."""
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a CSV file; remove or rename it.")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}.") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path}: broken UTF-16 text ({e.reason}); save it as CSV UTF-8."
            ) from None
    try:
        text = data.decode("utf-8-sig")
        if "\x00" in text:  # Valid UTF-8 bytes, but ASCII saved as UTF-16 has a NUL every 2nd byte.
            line = text[: text.index("\x00")].count("\n") + 1
            raise DataError(
                f"{path} line {line}: NUL bytes: it looks like UTF-16 without a byte-order mark. Save "
                "it as 'CSV UTF-8' (or UTF-16 with a byte-order mark)."
            )
        return text
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        looks = (
            "UTF-16 without a byte-order mark"
            if b"\x00" in data[:200]
            else "Latin-1 / Windows-1252 (Excel's plain 'CSV')"
        )
        raise DataError(
            f"{path} line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); it looks like {looks}. "
            "Save it as 'CSV UTF-8' or convert it (iconv -f latin1 -t utf-8)."
        ) from None


def read_table(path: str | Path, required: Sequence[str] = ()) -> Table:
    """A CSV with a header line; `required` columns must be there, and at least one row."""
    path = Path(path)
    text = read_text(path)
    header = next((ln for ln in text.splitlines() if ln.strip()), None)
    if header is None:
        raise DataError(
            f"{path} is empty; expected a header line with {list(required) or 'columns'}."
        )
    delimiter = "," if "," in header else ";" if ";" in header else "\t" if "\t" in header else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns: list[str] | None = None
    rows, lines = [], []
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if columns is None:
                columns = [c.strip() for c in cells]
                continue
            rows.append(dict(zip(columns, (c.strip() for c in cells), strict=False)))
            lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: not a valid CSV ({e}).") from None
    columns = columns or []
    missing = [c for c in required if c not in columns]
    if missing:
        hint = ""
        if len(columns) == 1 and any(d in columns[0] for d in "|:"):
            hint = " Separate columns with commas (or ; or tabs)."
        raise DataError(
            f"{path}: missing column(s) {missing}; found {columns}. Expected a header line with "
            f"{list(required)}.{hint}"
        )
    if not rows:
        raise DataError(f"{path} has a header but no rows; add rows or remove the file.")
    return Table(path, columns, rows, lines, delimiter)


def _edit_distance_1(a: str, b: str) -> bool:
    """One insertion, deletion or substitution apart (a digit swapped for a digit does not count:
    `grade1`/`grade2` are meant to differ)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        return len(diff) == 1 and not (diff[0][0].isdigit() and diff[0][1].isdigit())
    if len(a) > len(b):
        a, b = b, a
    return any(b[:i] + b[i + 1 :] == a for i in range(len(b)))


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def parse_labels(
    path: Path,
    raw: Sequence[str],
    lines: Sequence[int],
    *,
    class_names: Sequence[str] | None = None,
    accept: bool = False,
) -> tuple[list[str], np.ndarray]:
    """(class names, int32 ids) for a label column: ids 0..K-1 or class names, never both.

    `class_names` (config.data.class_names): the classes in order; values may be names from it or ids
    into it. `accept` (config.data.accept_label_warnings) lets near-identical names through.
    """
    for line, value in zip(lines, raw, strict=True):
        if not value or value.startswith("-"):
            raise DataError(
                f"{path} line {line}: label {value!r} is not a class id (0, 1, ...) or name; "
                "leave an unlabeled image out of labels.csv instead."
            )
        if not value.isdigit() and _is_number(value):
            raise DataError(
                f"{path} line {line}: label {value!r} is not an integer class id; "
                "labels are ids 0..K-1 or class names."
            )
    if class_names:
        names = [str(c) for c in class_names]
        index = {n: k for k, n in enumerate(names)}
        ids = []
        for line, value in zip(lines, raw, strict=True):
            if value in index:
                ids.append(index[value])
            elif value.isdigit() and int(value) < len(names):
                ids.append(int(value))
            else:
                raise DataError(
                    f"{path} line {line}: label {value!r} is not in config.data.class_names "
                    f"{names[:12]}; fix the label or the list."
                )
        return names, np.asarray(ids, np.int32)
    digits = [v.isdigit() for v in raw]
    if any(digits) and not all(digits):
        i, j = digits.index(True), digits.index(False)
        raise DataError(
            f"{path}: labels mix class ids and names (line {lines[i]}: {raw[i]!r}, line {lines[j]}: "
            f"{raw[j]!r}); use one kind, or list the classes in config.data.class_names."
        )
    counts = Counter(raw)
    if all(digits):  # Ids 0..max; a gap is refused where ids are classes (check_no_empty_class).
        ids = np.asarray([int(v) for v in raw], np.int32)
        return [str(c) for c in range(int(ids.max()) + 1)], ids
    names = sorted(counts)
    if not accept:
        for a_i, a in enumerate(names):
            for b in names[a_i + 1 :]:
                if a.lower() == b.lower() or _edit_distance_1(a.lower(), b.lower()):
                    raise DataError(
                        f"{path}: class names {a!r} ({counts[a]} image(s)) and {b!r} ({counts[b]} "
                        "image(s)) look like spellings of one class. Fix the labels, or if they are "
                        "different classes set config.data.class_names (or "
                        "config.data.accept_label_warnings=True)."
                    )
    to_id = {c: k for k, c in enumerate(names)}
    return names, np.asarray([to_id[v] for v in raw], np.int32)


def check_label_array(path: Path, labels: np.ndarray, key: str = "labels") -> np.ndarray:
    """Integer labels of a `.npz`: -1 = unlabeled, ids >= 0; NaN, fractions, other negatives refused."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iuf b":
        raise DataError(
            f"{path}: '{key}' has dtype {labels.dtype}; expected integer class ids (-1 = unlabeled)."
        )
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels))
        if len(bad):
            raise DataError(
                f"{path}: '{key}' row {bad[0]} is {labels.flat[bad[0]]}; labels must be integer ids "
                "(-1 = unlabeled), not NaN/inf."
            )
        bad = np.flatnonzero(labels != np.round(labels))
        if len(bad):
            raise DataError(
                f"{path}: '{key}' row {bad[0]} is {labels.flat[bad[0]]}, not an integer class id; "
                "store integer ids (-1 = unlabeled)."
            )
    bad = np.flatnonzero(labels < UNLABELED)
    if len(bad):
        raise DataError(
            f"{path}: '{key}' row {bad[0]} is {labels.flat[bad[0]]}; labels are ids >= 0, or -1 for "
            "an unlabeled image."
        )
    if len(labels) and labels.max(initial=-1) > np.iinfo(np.int32).max:
        raise DataError(f"{path}: '{key}' holds ids above int32; expected class ids 0..K-1.")
    return labels.astype(np.int32)


def check_class_ids(path: Path, labels: np.ndarray, class_names: Sequence[str] | None) -> list[str]:
    """Class names for integer `labels`: `class_names` if given (ids must index it), else 0..K-1
    with no gap."""
    present = sorted({int(v) for v in np.asarray(labels).ravel() if v >= 0})
    if class_names:
        if present and present[-1] >= len(class_names):
            raise DataError(
                f"{path}: class id {present[-1]} but only {len(class_names)} class names "
                f"{list(class_names)[:12]}."
            )
        return [str(c) for c in class_names]
    gaps = sorted(set(range(present[-1] + 1)) - set(present)) if present else []
    if gaps:
        raise DataError(
            f"{path}: class ids {present[:12]} skip {gaps[:8]} (a class with no image); renumber "
            "the ids 0..K-1, or name every class in config.data.class_names."
        )
    return [str(c) for c in present]


def check_no_empty_class(source, explicit: bool) -> None:
    """Integer ids with a gap (0, 2 but no 1) make a class without images (a classifier output that
    can never be right): refused unless the classes were named on purpose (`config.data.class_names`)."""
    labels = np.asarray(source.labels)
    if explicit or labels.ndim != 1 or not all(str(c).isdigit() for c in source.class_names):
        return
    present = sorted({int(v) for v in labels if v >= 0})
    gaps = sorted(set(range(len(source.class_names))) - set(present))
    if gaps:
        where = source.root / "labels.csv" if Path(source.root).is_dir() else source.root
        raise DataError(
            f"{where}: class ids {present[:12]} skip {gaps[:8]} (a class with no image); renumber "
            "the ids 0..K-1, or name every class in config.data.class_names."
        )


def patient_column(path: Path, columns: Sequence[str]) -> str | None:
    """`patient_id` if the table has it; a patient-like column under another name is refused."""
    if "patient_id" in columns:
        return "patient_id"
    for c in columns:
        if re.sub(r"[^a-z0-9]", "", c.lower()) in PATIENT_LIKE:
            raise DataError(
                f"{path}: column {c!r} looks like a patient id but is not named 'patient_id', so it "
                "would be ignored and one patient's images could land in train and test. Rename it "
                "to patient_id (or to something else if it is not a patient id)."
            )
    return None


def patient_ids(table: Table, column: str, key: str = "filename") -> dict[str, str]:
    """{file name: patient id} of a metadata table; one image given two patient ids is refused."""
    import os

    out: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for line, row in zip(table.lines, table.rows, strict=True):
        name = os.path.basename(row.get(key) or "") if key == "filename" else row.get(key) or ""
        pid = row.get(column) or ""
        if name in out and out[name] != pid:
            raise DataError(
                f"{table.path} lines {line_of[name]} and {line}: {name!r} has patient ids "
                f"{out[name]!r} and {pid!r}; keep one row per image."
            )
        out[name], line_of[name] = pid, line_of.get(name, line)
    return out


def patients_for(
    names: Sequence[str], by_name: dict[str, str], path: Path, notes: Notes | None
) -> list[str]:
    """One patient id per image; an image with a blank or missing id is its own patient (noted)."""
    groups, blank = [], []
    for n in names:
        pid = by_name.get(n, "")
        if not pid:
            blank.append(n)
        groups.append(pid or n)
    if blank and notes is not None:
        notes.add(
            f"{path}: {len(blank)} image(s) without a patient_id (e.g. {blank[0]}); each is taken "
            "as its own patient."
        )
    return groups


def check_patients_per_class(source, accept: bool) -> None:
    """Every class needs >= 2 patients (one to train on, one to test): else the run is meaningless."""
    labels = np.asarray(source.labels)
    if labels.ndim != 1 or accept:
        return
    groups = source.groups if source.groups is not None else [str(i) for i in range(len(labels))]
    per_class: dict[int, set] = {}
    for y, g in zip(labels.tolist(), groups, strict=True):
        if y >= 0:
            per_class.setdefault(y, set()).add(g)
    if not per_class:
        return
    names = list(source.class_names)
    few = [c for c, gs in sorted(per_class.items()) if len(gs) < 2]
    if few:
        counts = ", ".join(
            f"{names[c] if c < len(names) else c}: {len(per_class[c])}" for c in sorted(per_class)
        )
        raise DataError(
            f"{source.root}: class(es) {[names[c] if c < len(names) else c for c in few]} have fewer "
            f"than 2 patients (patients per class: {counts}); a class needs one to train on and one "
            "to test. Add data, fix the labels, or set config.data.accept_label_warnings=True."
        )


def check_splits(
    manifest, class_names: Sequence[str], fraction: float, accept: bool, root: object = "data"
) -> list[str]:
    """A class with labeled data missing from val or test is an error (its metric is undefined); in
    train, an error too except at label fractions <= 1%, where a rare class can legitimately have no
    patient in the subset (then a warning, returned). `accept` turns the errors into warnings."""
    warnings_out = []
    all_classes = set(manifest.counts["train_pool"]["per_class"])
    all_classes |= set(manifest.counts["val"]["per_class"])
    all_classes |= set(manifest.counts["test"]["per_class"])
    for split in ("train", "val", "test"):
        counts = manifest.counts[split]
        if split != "train" and counts["samples"] == 0:
            continue  # No such split (test_fraction=0 or val_fraction=0).
        per_class = counts["per_class"]
        lacking = sorted(c for c in all_classes if per_class.get(c, 0) == 0)
        if not lacking:
            continue

        def name(c):
            return class_names[int(c)] if int(c) < len(class_names) else c

        named = [name(c) for c in lacking]
        shown = {name(c): n for c, n in per_class.items()}
        message = (
            f"{root}: the {split} split has no image of class(es) {named} (images per class: "
            f"{shown}); "
            "add patients of those classes or change data.val_fraction/test_fraction/split_seed"
        )
        if split == "train" and fraction <= 0.01:
            warnings_out.append(
                f"WARNING: {message} (label fraction {fraction}: can be legitimate)."
            )
        elif accept:
            warnings_out.append(
                f"WARNING: {message} (accepted: config.data.accept_label_warnings)."
            )
        else:
            raise DataError(
                f"{message}, or set config.data.accept_label_warnings=True to run anyway."
            )
    return warnings_out


def check_test_labels(
    source, class_names: Sequence[str], multilabel: bool, where: str = "config.data.eval_root"
) -> None:
    """A labeled test folder (`config.data.eval_root`, `s4mi_jax.score --data_root`) must hold labeled
    images of the kind and classes the model was trained on: its metrics compare like with like."""
    labels = np.asarray(source.labels)
    labeled = (labels >= 0).all(axis=1) if labels.ndim == 2 else labels >= 0
    if not labeled.any():
        raise DataError(
            f"{where}: no labeled images (a labels.csv with filename,label is needed to test on it)."
        )
    if (labels.ndim == 2) != multilabel:
        kind = "multi-label" if labels.ndim == 2 else "single-label"
        raise DataError(
            f"{where}: its labels.csv is {kind}, but the model was trained on "
            f"{'multi' if multilabel else 'single'}-label data."
        )
    names, want = [str(c) for c in source.class_names], [str(c) for c in class_names]
    if multilabel and names != want:
        raise DataError(
            f"{where}: label columns {names[:12]}, but the model's classes are {want[:12]} "
            "(same names, same order needed)."
        )
    if not multilabel and len(names) > len(want):
        raise DataError(f"{where}: classes {names[len(want) :]} are not among the model's {want}.")


def open_image_checked(path: str | Path):
    """`PIL.Image.open` with the size limit turned into a DataError naming the file."""
    from PIL import Image

    with warnings.catch_warnings():  # Up to MAX_IMAGE_PIXELS is fine: no warning on stderr.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as e:
            raise DataError(
                f"image {path} is too large to read safely ({e}); downscale it or remove it."
            ) from None
    if img.width * img.height > MAX_IMAGE_PIXELS:
        img.close()
        raise DataError(
            f"image {path} is {img.width}x{img.height} pixels, above the limit of "
            f"{MAX_IMAGE_PIXELS}; downscale it or remove it."
        )
    return img


# ---------------------------------------------------------------------------------------------------
# Config values: checked before anything is written.

# (log_every / ckpt_every / eval_every <= 0 are meaningful: only at the end.)
_POSITIVE_INT = (
    "batch_size", "unlabeled_batch_size", "eval.batch_size", "keep_ckpts", "aug.image_size",
    "aug.source_size", "model.image_size", "model.width", "model.patch_size", "model.depth",
    "model.num_heads", "model.embed_dim", "data.num_classes", "eval.bootstrap",
)  # fmt: skip
_POSITIVE = ("total_steps", "total_epochs", "halt_at_step", "optim.base_lr")
_NON_NEGATIVE = (
    "optim.weight_decay",
    "optim.warmup_epochs",
    "data.num_workers",
    "data.keep_in_memory_mb",
)
# Seeds reach NumPy, JAX and Grain, whose shuffles take an unsigned 32-bit seed: checked here, not
# after the workdir is written.
_SEEDS = ("seed", "data.split_seed")
SEED_MAX = 2**32 - 1
_FRACTIONS = ("label_fraction",)  # (0, 1]
_HALF_OPEN = ("data.val_fraction", "data.test_fraction")  # [0, 1)
REQUIRED = "REQUIRED:"  # A config's data.root placeholder: the user must give the folder.


def _get(config, key: str):
    node = config
    for part in key.split("."):
        if not hasattr(node, "get") or part not in node:
            return None
        node = node[part]
    return node


def check_config(config) -> None:
    """Ranges of the numeric keys that have one: a bad value is named before any work starts.

    Also the data location of configs that ship no default data (the PH2 / nuclei / lung
    segmentation variants, configs/paper/): their `data.root` reads "REQUIRED:--config.data.root=..."
    until it is given."""
    root = _get(config, "data.root")
    if isinstance(root, str) and root.startswith(REQUIRED) and not _get(config, "data.tfds_name"):
        example = root[len(REQUIRED) :] or "--config.data.root=/path/to/data"
        raise ConfigError(
            f"config.data.root is not set: this config has no default data; give its folder, "
            f"e.g. {example}"
        )
    for key in _SEEDS:
        value = _get(config, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
            raise ConfigError(
                f"config.{key}={value!r} must be an integer in [0, {SEED_MAX}] (e.g. 0, 1, 2)."
            )
    channels = _get(config, "data.channels")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise ConfigError(
            f"config.data.channels={channels!r} must be 1 (grayscale), 3 (RGB) or None (as the "
            "images are stored)."
        )
    for key in _POSITIVE_INT + _POSITIVE + _NON_NEGATIVE + _FRACTIONS + _HALF_OPEN:
        value = _get(config, key)
        if value is None or isinstance(value, dict) or hasattr(value, "keys"):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config.{key}={value!r} must be a number.")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config.{key}={value} must be a finite number.")
        if key in _POSITIVE_INT + _POSITIVE and not value > 0:
            raise ConfigError(f"config.{key}={value} must be > 0.")
        if key in _NON_NEGATIVE and value < 0:
            raise ConfigError(f"config.{key}={value} must be >= 0.")
        if key in _FRACTIONS and not 0 < value <= 1:
            raise ConfigError(
                f"config.{key}={value} is not in (0, 1]; use e.g. 0.01 for 1% or 1.0 for all labels."
            )
        if key in _HALF_OPEN and not 0 <= value < 1:
            raise ConfigError(f"config.{key}={value} must be in [0, 1).")
    val, test = _get(config, "data.val_fraction"), _get(config, "data.test_fraction")
    if isinstance(val, float | int) and isinstance(test, float | int) and val + test >= 1:
        raise ConfigError(
            f"config.data.val_fraction + config.data.test_fraction = {val + test} leaves nothing to "
            "train on; it must be < 1."
        )
    names = _get(config, "data.class_names")
    if names is not None:
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if len(set(map(str, names))) != len(names) or not all(str(n) for n in names):
            raise ConfigError(
                f"config.data.class_names={list(names)!r}: names must be distinct and non-empty."
            )


def class_names_of(data) -> list[str] | None:
    """`config.data.class_names` as a list (a comma-separated string on the command line), or None."""
    names = data.get("class_names") if hasattr(data, "get") else None
    if names is None or names == "":
        return None
    if isinstance(names, str):
        return [n.strip() for n in names.split(",")]
    return [str(n) for n in names]


def check_config_file(arg: str) -> None:
    """`--config=FILE[:variant]` must name a Python file defining `get_config` (not e.g. README.md)."""
    import ast
    import os

    path = arg.partition(":")[0]
    if not os.path.isfile(path):
        return  # config_flags names a missing file itself.
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError) as e:
        where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        raise ConfigError(
            f"--config={path} is not a Python config file{where}; give one of configs/*.py."
        ) from None
    defined = {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    } | {
        t.id
        for n in tree.body
        if isinstance(n, ast.Assign | ast.ImportFrom | ast.Import)
        for t in (getattr(n, "targets", None) or [])
        if isinstance(t, ast.Name)
    }
    imported = {
        (a.asname or a.name)
        for n in tree.body
        if isinstance(n, ast.ImportFrom | ast.Import)
        for a in n.names
    }
    if "get_config" not in defined | imported:
        raise ConfigError(
            f"--config={path} defines no get_config(); a config file is a Python file with "
            "def get_config(arg=None) returning an ml_collections.ConfigDict (see configs/)."
        )
