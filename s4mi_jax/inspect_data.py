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
| `mask_orphan` | warning | a mask with no image of the same name |
| `no_masks` | error | `--masks` given but no masks at all |
| `duplicate_stem` | warning | `a.png` and `a.jpg`: which one a mask `a.png` belongs to is ambiguous |
| `missing_patient` | warning | metadata.csv has `patient_id` but not for every image (those become their own patient) |
"""

from __future__ import annotations

import collections
import csv
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from absl import app, flags

from s4mi_jax.data.sources import IMAGE_EXTENSIONS, READABLE_EXTENSIONS, read_image, read_mask
from s4mi_jax.errors import DataError

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


def _entries_from_folder(root: Path, report: Report):
    """[(key, image path, mask path or None)], {key: raw label}, {key: patient id or None}."""
    image_dir = root / "images" if (root / "images").is_dir() else root
    files = sorted(
        p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in READABLE_EXTENSIONS
    )
    masks = {}
    if (root / "masks").is_dir():
        for p in sorted((root / "masks").iterdir()):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                masks[p.stem] = p
        for stem, p in masks.items():
            if stem not in {f.stem for f in files}:
                report.add("mask_orphan", WARNING, f"mask {p} has no image {image_dir}/{stem}.*")
    entries = [(f.name, f, masks.get(f.stem)) for f in files]
    labels: dict[str, str] = {}
    if (root / "labels.csv").exists():
        labels = _read_labels(root / "labels.csv", {f.name for f in files}, "filename", report)
    patients = None
    if (root / "metadata.csv").exists():
        with open(root / "metadata.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and "patient_id" in rows[0]:
            by_name = {r.get("filename", ""): r["patient_id"] for r in rows}
            patients = {f.name: by_name.get(f.name) or None for f in files}
    return entries, labels, patients


def _entries_from_csv(path: Path, report: Report):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    column = next((c for c in ("path", "filename") if rows and c in rows[0]), None)
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
    labels = _read_labels(path, existing, column, report) if "label" in rows[0] else {}
    patients = (
        {r[column]: r.get("patient_id") or None for r in rows} if "patient_id" in rows[0] else None
    )
    return entries, labels, patients


def _read_labels(path: Path, names: set[str], column: str, report: Report) -> dict[str, str]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    if column not in header or "label" not in header:
        report.add("label_missing_column", ERROR,
                   f"{path}: columns {header}; expected a header line {column},label.")  # fmt: skip
        return {}
    labels, seen = {}, {}
    for line, row in enumerate(rows, start=2):
        name = row[column] if column == "path" else os.path.basename(row[column])
        value = (row["label"] or "").strip()
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


def inspect(data_dir: str, *, masks: bool = False) -> Report:
    """Reads every file of the dataset at `data_dir`; returns the findings and a summary."""
    root = Path(data_dir)
    report = Report(str(root))
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
            "single_class", WARNING, f"every labeled image is class {next(iter(classes))!r}."
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


def main(argv: list[str]) -> None:
    if len(argv) > 1 or not flags.FLAGS.data_dir:
        raise app.UsageError("usage: python -m s4mi_jax.inspect_data --data_dir=DIR [--masks]")
    try:
        report = inspect(flags.FLAGS.data_dir, masks=flags.FLAGS.masks)
    except DataError as e:
        print(f"inspect_data: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    flags.DEFINE_string("data_dir", None, "Dataset folder or CSV of paths.")
    flags.DEFINE_bool("masks", False, "A segmentation set: at least one mask is required.")
    app.run(main)
