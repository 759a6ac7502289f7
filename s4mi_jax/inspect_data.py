"""Check a dataset before spending accelerator time: `python -m s4mi_jax.inspect_data --data_dir=DIR [--masks]`.

`--data_dir` is a folder (`images/` or images directly, optional `labels.csv`, `masks/`, `metadata.csv`)
or a CSV of paths (`path[,label,patient_id,mask]`). Unlike training, which stops at the first bad file,
this reads every file and lists every problem, then prints a summary (counts, classes, image sizes,
channels, mask values, patients). Exit status 0: usable (warnings may remain); 1: errors; 2: no dataset.

Problems it reports (`Finding.kind`; errors stop a training run, warnings deserve a look):

| kind | severity | what |
|---|---|---|
| `no_images` | error | no readable image files in the folder |
| `corrupt_image` | error | a file that cannot be decoded (truncated, zero bytes, not an image) |
| `label_unknown_file` | error | labels.csv / the CSV names a file that is not there |
| `label_duplicate` | error | a file listed twice |
| `label_bad_value` | error | an empty or negative label (leave unlabeled images out instead) |
| `label_missing_column` | error | labels.csv without `filename`/`label` columns |
| `single_class` | warning | labels present but only one class |
| `mixed_channels` | warning | grayscale and colour images mixed (all are converted to the first one's) |
| `mask_size` | error | a mask whose size differs from its image's |
| `mask_values` | error | mask values that are neither 0/255 nor class ids (resized with interpolation?) |
| `mask_channels` | error | an RGB(A) mask |
| `mask_corrupt` | error | a mask file that cannot be decoded |
| `mask_orphan` | error | a mask with no image of the same name (the segmentation trainer refuses it) |
| `no_masks` | error | `--masks` given but no masks at all |
| `duplicate_stem` | warning | `a.png` and `a.jpg`: which one a mask `a.png` belongs to is ambiguous |
| `missing_patient` | warning | metadata.csv has `patient_id` but not for every image (those become their own patient) |
| `csv_unreadable` | error | a CSV that is not UTF-8/UTF-16, a folder, empty, header-only or malformed |
| `bad_file_name` | error | an image file name that is not valid UTF-8 |
| `patient_column` | error | a patient-id-like column not named `patient_id` (`PatientID`, `subject_id`, ...) |
| `refused` | error | anything else the trainer's own checks (`data/validate.py`) refuse: label spellings, classes with < 2 patients, a split without a class, ... |

"Usable" means what training accepts: after its own scan the inspector runs the trainer's data checks
(`training_verdict`: classification/pretraining, or segmentation with `--masks`) with the configs'
default split settings.
"""

from __future__ import annotations

import collections
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import ml_collections
import numpy as np
from absl import app, flags

from s4mi_jax.data import validate
from s4mi_jax.data.sources import (
    IMAGE_EXTENSIONS,
    READABLE_EXTENSIONS,
    list_images,
    read_image,
    read_mask,
)
from s4mi_jax.errors import DataError, S4MIError

ERROR, WARNING = "error", "warning"


@dataclass
class Finding:
    kind: str
    severity: str
    message: str


@dataclass
class Report:
    root: str
    findings: list[Finding] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def add(self, kind: str, severity: str, message: str) -> None:
        self.findings.append(Finding(kind, severity, message))

    def kinds(self, severity: str | None = None) -> set[str]:
        return {f.kind for f in self.findings if severity in (None, f.severity)}

    @property
    def ok(self) -> bool:
        return not self.kinds(ERROR)


def _table(path: Path, required: list[str], report: Report) -> validate.Table | None:
    """The CSV as training reads it (validate.read_table); a refusal becomes a finding."""
    try:
        return validate.read_table(path, required)
    except DataError as e:
        text = str(e)
        kind = "label_missing_column" if "missing column" in text else "csv_unreadable"
        report.add(kind, ERROR, text)
        return None


def _entries_from_folder(root: Path, report: Report):
    """[(key, image path, mask path or None)], {key: raw label}, {key: patient id or None}."""
    image_dir = root / "images" if (root / "images").is_dir() else root
    try:
        files = list_images(image_dir)
    except DataError as e:
        report.add("bad_file_name", ERROR, str(e))
        files = sorted(
            p
            for p in image_dir.iterdir()
            if p.is_file() and p.suffix.lower() in READABLE_EXTENSIONS
        )
    masks = {}
    if (root / "masks").is_dir():
        for p in sorted((root / "masks").iterdir()):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                masks[p.stem] = p
        for stem, p in masks.items():
            if stem not in {f.stem for f in files}:
                report.add("mask_orphan", ERROR, f"mask {p} has no image {image_dir}/{stem}.*")
    entries = [(f.name, f, masks.get(f.stem)) for f in files]
    labels: dict[str, str] = {}
    labels_csv = root / "labels.csv"
    if labels_csv.exists() or labels_csv.is_symlink():
        labels = _read_labels(labels_csv, {f.name for f in files}, "filename", report)
    patients = None
    if (root / "metadata.csv").exists():
        table = _table(root / "metadata.csv", ["filename"], report)
        try:
            column = table and validate.patient_column(table.path, table.columns)
        except DataError as e:
            report.add("patient_column", ERROR, str(e))
            column = None
        if column:
            by_name = {os.path.basename(r["filename"]): r.get(column, "") for r in table.rows}
            patients = {f.name: by_name.get(f.name) or None for f in files}
    return entries, labels, patients


def _entries_from_csv(path: Path, report: Report):
    table = _table(path, [], report)
    if table is None:
        return [], {}, None
    rows = table.rows
    column = next((c for c in ("path", "filename") if c in table.columns), None)
    if column is None:
        report.add("label_missing_column", ERROR, f"{path}: no 'path' column.")
        return [], {}, None
    entries, existing = [], set()
    for r in rows:
        file = path.parent / r[column]
        mask = path.parent / r["mask"] if r.get("mask") else None
        if file.is_file():
            entries.append((r[column], file, mask))
            existing.add(r[column])
    labels = _read_labels(path, existing, column, report) if "label" in table.columns else {}
    patients = None
    try:
        if validate.patient_column(path, table.columns):
            patients = {r[column]: r.get("patient_id") or None for r in rows}
    except DataError as e:
        report.add("patient_column", ERROR, str(e))
    return entries, labels, patients


def _read_labels(path: Path, names: set[str], column: str, report: Report) -> dict[str, str]:
    table = _table(path, [column, "label"] if column == "path" else [], report)
    if table is None:
        return {}
    others = [c for c in table.columns if c != column]
    multi = column in table.columns and "label" not in others and len(others) > 1
    if column == "filename" and multi:  # Multi-label: one 0/1 column per class.
        return {
            os.path.basename(r["filename"]): "+".join(c for c in others if r.get(c) == "1")
            for r in table.rows
            if os.path.basename(r["filename"]) in names
        }
    if column not in table.columns or "label" not in table.columns:
        report.add("label_missing_column", ERROR,
                   f"{path}: columns {table.columns}; expected a header line {column},label.")  # fmt: skip
        return {}
    labels, seen = {}, {}
    for line, row in zip(table.lines, table.rows, strict=True):
        name = row[column] if column == "path" else os.path.basename(row[column])
        value = row.get("label") or ""
        if name not in names:
            report.add(
                "label_unknown_file",
                ERROR,
                f"{path} line {line}: file {row[column]!r} is not there.",
            )
            continue
        if name in seen:
            report.add(
                "label_duplicate",
                ERROR,
                f"{path} lines {seen[name]} and {line}: {name!r} is listed twice.",
            )
            continue
        seen[name] = line
        if not value:
            if column == "path":  # In a CSV of paths, an empty label means unlabeled.
                continue
            report.add("label_bad_value", ERROR, f"{path} line {line}: empty label for {name!r}.")
        elif value.startswith("-"):
            report.add(
                "label_bad_value", ERROR, f"{path} line {line}: label {value!r} is negative."
            )
        else:
            labels[name] = value
    return labels


def data_config(
    root: str,
    *,
    masks: bool,
    class_names: str | None = None,
    accept: bool = False,
    num_classes: int = 2,
) -> ml_collections.ConfigDict:
    """`config.data` with the configs' defaults: what the trainer would be given for `root`
    (`num_classes`: the segmentation configs' `data.num_classes`, 2 unless set)."""
    data = dict(
        root=root,
        tfds_name=None,
        eval_root=None,
        channels=None,
        verify=True,
        split_seed=0,
        val_fraction=0.1,
        test_fraction=0.2,
        class_names=class_names,
        accept_label_warnings=accept,
    )
    if masks:
        data.update(num_classes=num_classes, resize="resize", manifest=None)
    return ml_collections.ConfigDict(data)


def training_verdict(data: ml_collections.ConfigDict, masks: bool) -> None:
    """Runs the trainer's own data checks (classification/pretraining, or segmentation with `masks`);
    raises the S4MIError training would stop with."""
    from s4mi_jax.data import manifests

    if not masks:
        manifests.open_and_split(data, fraction=1.0, seed=0)
        return
    from s4mi_jax.data import segmentation

    config = ml_collections.ConfigDict(dict(data=data, label_fraction=1.0, seed=0))
    segmentation.make_manifest(segmentation.load(data, 16), config)


def inspect(
    data_dir: str,
    *,
    masks: bool = False,
    class_names: str | None = None,
    accept_label_warnings: bool = False,
    num_classes: int = 2,
) -> Report:
    """Reads every file of the dataset at `data_dir`; returns the findings and a summary.

    Then runs the trainer's own checks (`training_verdict`): if training would refuse the data for a
    reason not listed yet, that reason is an error too, so "usable" means the trainer accepts it
    (segmentation: with `data.num_classes=num_classes`, the configs' default 2).
    """
    root = Path(data_dir)
    report = Report(str(root))
    if str(root).endswith(".npz") and root.is_file():
        return _inspect_npz(data_dir, report, class_names, accept_label_warnings)
    if str(root).endswith(".csv") and root.is_file():
        entries, labels, patients = _entries_from_csv(root, report)
    elif root.is_dir():
        entries, labels, patients = _entries_from_folder(root, report)
    else:
        raise DataError(f"{data_dir} is neither a folder nor a .csv file.")
    if not entries:  # Label and mask findings would only be consequences of this one.
        report.findings.clear()
        report.add("no_images", ERROR, f"no images ({', '.join(READABLE_EXTENSIONS)}) in {root}.")
        return report

    stems = collections.Counter(Path(k).with_suffix("").as_posix() for k, _, _ in entries)
    for stem, n in stems.items():
        if n > 1:
            report.add(
                "duplicate_stem",
                WARNING,
                f"{n} images named {stem}.* in {root}: which one owns a mask is ambiguous.",
            )
    sizes, channels = collections.Counter(), collections.Counter()
    mask_values: set[int] = set()
    n_masks = n_empty = n_corrupt = 0
    for _, path, mask_path in entries:
        try:
            image = read_image(path, None)
        except DataError as e:
            report.add("corrupt_image", ERROR, str(e))
            n_corrupt += 1
            continue
        sizes[(image.shape[1], image.shape[0])] += 1
        channels[image.shape[-1]] += 1
        if mask_path is None:
            continue
        n_masks += 1
        try:
            mask = read_mask(mask_path, image.shape, path)
        except DataError as e:
            text = str(e)
            kind = ("mask_size" if "must have their image's size" in text
                    else "mask_channels" if "single-channel" in text
                    else "mask_corrupt" if text.startswith("cannot read") else "mask_values")  # fmt: skip
            report.add(kind, ERROR, text)
            continue
        mask_values.update(np.unique(mask).tolist())
        n_empty += not mask.any()
    if len(channels) > 1:
        report.add(
            "mixed_channels",
            WARNING,
            f"channel counts {dict(channels)}: images are converted to the first image's.",
        )
    if masks and n_masks == 0:
        report.add(
            "no_masks",
            ERROR,
            f"--masks: no masks in {root}/masks (expected masks/<image name>.png).",
        )
    classes = collections.Counter(labels.values())
    if len(classes) == 1:
        report.add(
            "single_class",
            WARNING,
            f"every labeled image is class {next(iter(classes))!r}: classification refuses it "
            "(pretraining and segmentation do not).",
        )
    if patients is not None:
        missing = [k for k, _, _ in entries if not patients.get(k)]
        if missing:
            report.add(
                "missing_patient",
                WARNING,
                f"{len(missing)} image(s) without patient_id (e.g. {missing[0]}); each becomes its own patient.",
            )
        n_patients = len({patients.get(k) or k for k, _, _ in entries})
    else:
        n_patients = None
    if report.ok:
        try:
            training_verdict(
                data_config(
                    data_dir,
                    masks=masks,
                    class_names=class_names,
                    accept=accept_label_warnings,
                    num_classes=num_classes,
                ),
                masks,
            )
        except S4MIError as e:
            report.add("refused", ERROR, str(e))
    report.summary = {
        "images": len(entries),
        "readable": len(entries) - n_corrupt,
        "labeled": len(labels),
        "unlabeled": len(entries) - len(labels),
        "classes": dict(sorted(classes.items())),
        "sizes": dict(sizes.most_common()),
        "channels": dict(sorted(channels.items())),
        "masks": n_masks,
        "empty_masks": n_empty,
        "mask_values": sorted(mask_values),
        "patients": n_patients,
    }
    return report


def _inspect_npz(data_dir: str, report: Report, class_names, accept: bool) -> Report:
    """A `.npz` is one file: the trainer's checks are the whole inspection."""
    from s4mi_jax.data.sources import NpzSource

    try:
        training_verdict(
            data_config(data_dir, masks=False, class_names=class_names, accept=accept), False
        )
        source = NpzSource(
            data_dir, class_names=validate.class_names_of({"class_names": class_names})
        )
    except S4MIError as e:
        report.add("refused", ERROR, str(e))
        return report
    images, labels = source.images, source.labels
    labeled = labels[labels >= 0]
    report.summary = {
        "images": len(images),
        "readable": len(images),
        "labeled": len(labeled),
        "unlabeled": len(images) - len(labeled),
        "classes": dict(collections.Counter(source.class_names[i] for i in labeled.tolist())),
        "sizes": {(images.shape[2], images.shape[1]): len(images)},
        "channels": {images.shape[-1]: len(images)},
        "masks": 0,
        "empty_masks": 0,
        "mask_values": [],
        "patients": None if source.groups is None else len(set(source.groups)),
    }
    return report


def format_report(report: Report) -> str:
    s = report.summary
    lines = [f"dataset: {report.root}"]
    if s:
        sizes = list(s["sizes"].items())
        (w, h), n = sizes[0]
        ws, hs = [k[0] for k, _ in sizes], [k[1] for k, _ in sizes]
        lines += [
            f"images: {s['images']} ({s['readable']} readable)",
            f"sizes (W x H): {len(sizes)} distinct, most common {w}x{h} ({n}), "
            f"width {min(ws)}..{max(ws)}, height {min(hs)}..{max(hs)}",
            f"channels: {', '.join(f'{c}: {n}' for c, n in s['channels'].items())}",
            f"labels: {s['labeled']} labeled, {s['unlabeled']} unlabeled; classes: "
            + (", ".join(f"{c}: {n}" for c, n in s["classes"].items()) or "none"),
            f"masks: {s['masks']} of {s['images']} images ({s['empty_masks']} empty), "
            f"values {s['mask_values']}",
            f"patients: {s['patients'] if s['patients'] is not None else 'no patient_id (each image its own)'}",
        ]
    for severity in (ERROR, WARNING):
        found = [f for f in report.findings if f.severity == severity]
        if found:
            lines.append(f"{severity}s ({len(found)}):")
            lines += [f"  [{f.kind}] {f.message}" for f in found]
    lines.append("OK: usable for training." if report.ok else "NOT USABLE: fix the errors above.")
    return "\n".join(lines)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Exit status 0: usable; 1: errors (the report on stdout lists them all, the first one is also
    the single line on stderr); 2: no dataset at that path."""
    f = flag_values
    if len(argv) > 1 or not f.data_dir:
        raise app.UsageError("usage: python -m s4mi_jax.inspect_data --data_dir=DIR [--masks]")
    try:
        report = inspect(
            f.data_dir,
            masks=f.masks,
            class_names=f.class_names,
            accept_label_warnings=f.accept_label_warnings,
            num_classes=f.num_classes,
        )
    except S4MIError as e:
        print(f"inspect_data: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report))
    if not report.ok:
        errors = [f for f in report.findings if f.severity == ERROR]
        more = f" (and {len(errors) - 1} more above)" if len(errors) > 1 else ""
        print(f"inspect_data: error: {errors[0].message}{more}", file=sys.stderr)
    sys.exit(0 if report.ok else 1)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The inspector's flags (defined by `python -m s4mi_jax.inspect_data`, or by a test)."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "Dataset folder or CSV of paths.", **fv)
    flags.DEFINE_bool("masks", False, "A segmentation set: at least one mask is required.", **fv)
    flags.DEFINE_string(
        "class_names",
        None,
        "As config.data.class_names: comma-separated class names in id order.",
        **fv,
    )
    flags.DEFINE_integer(
        "num_classes",
        2,
        "As config.data.num_classes of a segmentation run (2: background + one class): masks "
        "holding higher class ids are refused, as training refuses them.",
        **fv,
    )
    flags.DEFINE_bool(
        "accept_label_warnings",
        False,
        "As config.data.accept_label_warnings (see docs/data.md).",
        **fv,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
