"""Random small datasets and configs for the property-based contract test (issue 25).

`make_case(seed, root)` writes one random small dataset under `root` with a seeded
`numpy.random.default_rng(seed)` (deterministic: a seed names its case) and returns a `Case`: the
real commands to run (`python -m s4mi_jax.inspect_data | main | predict | score`) and what the
generator knows about the data. `run_case(case, base)` runs them as subprocesses and checks the
contract of docs/reliability.md:

- exit status 0, or the command's refusal status (2; `inspect_data` and `predict` also use 1, see
  their `main`) with stderr's last non-empty line starting with the command's prefix
  (`s4mi_jax: error:`, ...) and naming the file, row or config key;
- never `Traceback` in stdout or stderr;
- every data folder byte-identical afterwards (each file's bytes and the list of paths, so a new file
  counts);
- in a workdir that held a checkpoint, the latest checkpoint and `best/` unchanged unless the step
  was allowed to train on (and exited 0);
- a `main` refused before its first step leaves no workdir behind (docs/data.md);
- where the generator knows the answer: good data accepted, bad data refused, and on exit 0 the
  data read as intended (`inspect_data`'s counts, the trainer's train + val + test counts,
  `predict`'s count of readable images); the inspector and the trainer agree on the same data.

No test functions here: `tests/test_contract_property.py` runs a small budget in the suite,
`benchmarks/contract_property.py` a large one. Cases that need a finished run (`predict`, `score`,
reruns into a workdir) get a copy of a tiny run built once per `BaseRuns` folder.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
try:
    from tests.helpers import HANG_GUARD_S
except ImportError:  # Imported from a script whose path lacks the repository root.
    sys.path.insert(0, str(ROOT))
    from tests.helpers import HANG_GUARD_S

SUP = "configs/supervised_chest.py:local"
SIMCLR = "configs/simclr_chest.py:local"
SEG = "configs/supervised_seg_ph2.py:local"
FIXMATCH = "configs/fixmatch_seg_ph2.py:local"
# Tiny and fast: one or two steps, validation and a checkpoint at each, a small bootstrap.
TINY = [
    "--config.total_steps=1",
    "--config.eval_every=1",
    "--config.ckpt_every=1",
    "--config.log_every=1",
]
TINY_CLS = [*TINY, "--config.eval.bootstrap=10"]
# SimCLR has no validation; its batch must fit a tiny folder's training split.
TINY_SIMCLR = ["--config.total_steps=1", "--config.ckpt_every=1", "--config.log_every=1",
               "--config.batch_size=4"]  # fmt: skip

PREFIX = {
    "s4mi_jax.main": "s4mi_jax: error:",
    "s4mi_jax.inspect_data": "inspect_data: error:",
    "s4mi_jax.predict": "predict: error:",
    "s4mi_jax.score": "score: error:",
}
# Refusal statuses besides 0: inspect_data exits 1 when it found errors (2: no dataset there);
# predict exits 1 when no image could be predicted (each skipped file listed on stderr).
REFUSAL = {
    "s4mi_jax.main": {2},
    "s4mi_jax.inspect_data": {1, 2},
    "s4mi_jax.predict": {1, 2},
    "s4mi_jax.score": {2},
}


@dataclasses.dataclass
class Step:
    module: str  # s4mi_jax.main | inspect_data | predict | score
    args: list[str]
    expect: str = "either"  # "ok" (exit 0), "error" (refused), "either" (the contract only)
    names: tuple[str, ...] = ()  # A refusal's line must contain one of these (file, row, key).
    counts: dict | None = None  # On exit 0, what the command must report (see `_check_counts`).
    workdir: str | None = None  # Its checkpoints must not change unless `may_train` and exit 0.
    may_train: bool = False

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]

    def short(self) -> str:
        return " ".join(["python -m", self.module, *self.args])


@dataclasses.dataclass
class Case:
    seed: int
    family: str
    description: str
    root: str
    data_dirs: list[str]  # Folders that must stay byte-identical.
    steps: list[Step]
    needs_run: str | None = None  # "classify" / "segment": a finished run copied to ROOT/run first.
    prepare: list[tuple] = dataclasses.field(default_factory=list)  # Applied to that copy.
    # Steps that both read the same data with the same label options: the inspector and the trainer
    # must agree on accepting it (docs/data.md: "usable" means the trainer accepts the data).
    agree: tuple[int, int] | None = None

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "family": self.family,
            "description": self.description,
            "needs_run": self.needs_run,
            "prepare": [list(map(str, p)) for p in self.prepare],
            "steps": [s.short() for s in self.steps],
        }


# ---- Writing files ----------------------------------------------------------------------------

MODES = ["L", "L", "RGB", "RGBA", "P", "I;16", "I;16B", "1", "LA", "L:jpg", "RGB:jpg", "RGB:exif"]


def write_image(path: Path, mode: str, size: tuple[int, int], rng) -> Path:
    """One random image of `mode` (PIL's, or `X:jpg`, `RGB:exif`: a JPEG with EXIF orientation 6),
    `size` = (W, H). Returns the path written (the extension follows the format)."""
    w, h = size
    kind, _, fmt = mode.partition(":")
    path = path.with_suffix(
        ".jpg" if fmt in ("jpg", "exif") else ".tif" if kind == "I;16B" else path.suffix
    )
    if kind == "L":
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    elif kind in ("RGB", "RGBA"):
        im = Image.fromarray(rng.integers(0, 256, (h, w, len(kind)), dtype=np.uint8), kind)
    elif kind == "LA":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 2), dtype=np.uint8), "LA")
    elif kind == "P":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).quantize(16)
    elif kind == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif kind == "I;16B":
        im = Image.frombytes(
            "I;16B", (w, h), rng.integers(0, 65536, (h, w)).astype(">u2").tobytes()
        )
    elif kind == "1":
        im = Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool))
    else:
        raise ValueError(mode)
    if fmt == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 CW to display.
        im.save(path, exif=exif)
    else:
        im.save(path)
    return path


def encode_csv(rows: list[list[str]], delimiter: str, encoding: str, crlf: bool) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n" if crlf else "\n").writerows(rows)
    return buf.getvalue().encode(encoding)


def tree_digest(path: str | Path) -> dict[str, str]:
    """Every path under `path` (folders, files, links) -> a digest of what it is: the list of paths
    and every file's bytes."""
    out = {}
    base = os.fsencode(str(path))
    if not os.path.lexists(base):
        return {"": "absent"}
    if os.path.isfile(base):
        with open(base, "rb") as f:
            return {"": hashlib.sha256(f.read()).hexdigest()}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base).decode("utf-8", "backslashreplace")
            if os.path.islink(full):
                out[rel] = "link:" + os.readlink(full).decode("utf-8", "backslashreplace")
            elif os.path.isdir(full):
                out[rel] = "dir"
            else:
                with open(full, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def digest_diff(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = [
        f"{what} {paths[:5]}"
        for what, paths in (("added", added), ("removed", removed), ("changed", changed))
        if paths
    ]
    return "; ".join(parts)


# ---- Classification folders -------------------------------------------------------------------

CLASS_POOLS = [
    ["NORMAL", "PNEUMONIA", "COVID"],
    ["benign", "malignant", "other"],
    ["Normal", "Pneumonía", "Tuberculose"],  # Non-ASCII: Latin-1 can't pass for UTF-8 here.
    ["grade1", "grade2", "grade3"],
]
ENCODINGS = ["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252", "utf-16-le"]
DELIMITERS = [",", ",", ",", ";", "\t", "|"]
# Data defects: (name, the trainer refuses it). Which file it names is worked out where it is planted.
DEFECTS = [
    ("corrupt", True),
    ("truncated", True),
    ("zero_byte", True),
    ("missing_file", True),
    ("duplicate_row", True),
    ("id_gap", True),
    ("negative_label", True),
    ("float_label", True),
    ("empty_label", True),
    ("mixed_ids_names", True),
    ("case_variant", True),
    ("typo_variant", True),
    ("lonely_class", True),
    ("labels_folder", True),
    ("header_only", True),
    ("empty_csv", True),
    ("no_label_column", True),
    ("bad_filename", True),
    ("png_as_csv", True),
    ("non_image_file", False),
    ("unlabeled_extra", False),
    ("padded_labels", False),
    ("blank_rows", False),
]


CSV_QUIRKS = [
    "short_row",  # A row with the file name only.
    "extra_column",  # A row with a third cell.
    "trailing_delimiters",  # Every row ends with a delimiter.
    "unbalanced_quote",
    "nul_byte",
    "cr_only",  # Old Mac line ends.
    "header_case",  # Filename,LABEL
    "header_spaces",  # " filename , label ": stripped (docs/data.md).
    "quoted",  # Every cell in double quotes.
    "path_prefix",  # images/im00.png instead of im00.png.
    "comment_line",
    "bom_twice",
    "very_long_line",
]


def csv_quirk(text: str, quirk: str, delimiter: str, rng) -> tuple[str, str]:
    """`text` (a labels.csv) with one quirk; and its fate: "ok", "bad" (refused) or "either"."""
    lines = text.splitlines(keepends=True)
    end = "\r\n" if text.endswith("\r\n") else "\n"
    i = int(rng.integers(1, len(lines))) if len(lines) > 1 else 1
    if quirk == "short_row":
        lines.insert(i, "im00.png" + end)
        return "".join(lines), "either"
    if quirk == "extra_column":
        lines[i] = lines[i].rstrip("\r\n") + delimiter + "extra" + end
        return "".join(lines), "either"
    if quirk == "trailing_delimiters":
        return "".join(line.rstrip("\r\n") + delimiter + end for line in lines), "either"
    if quirk == "unbalanced_quote":
        lines[i] = '"' + lines[i]
        return "".join(lines), "either"
    if quirk == "nul_byte":
        lines[i] = lines[i][:3] + "\0" + lines[i][3:]
        return "".join(lines), "bad"
    if quirk == "cr_only":
        return text.replace("\r\n", "\n").replace("\n", "\r"), "either"
    if quirk == "header_case":
        lines[0] = lines[0].replace("filename", "Filename").replace("label", "LABEL")
        return "".join(lines), "either"
    if quirk == "header_spaces":
        cells = lines[0].rstrip("\r\n").split(delimiter)
        lines[0] = delimiter.join(f" {c} " for c in cells) + end
        return "".join(lines), "ok" if delimiter != "\t" else "either"
    if quirk == "quoted":
        out = []
        for line in lines:
            cells = line.rstrip("\r\n").split(delimiter)
            out.append(delimiter.join(f'"{c}"' for c in cells) + end)
        return "".join(out), "ok"
    if quirk == "path_prefix":
        return "".join(lines[:1] + ["images/" + line for line in lines[1:]]), "either"
    if quirk == "comment_line":
        lines.insert(1, "# exported by a spreadsheet" + end)
        return "".join(lines), "either"
    if quirk == "bom_twice":
        return "\ufeff\ufeff" + text, "either"
    if quirk == "very_long_line":
        lines.insert(i, "x" * 200_000 + delimiter + "0" + end)
        return "".join(lines), "bad"
    raise ValueError(quirk)


@dataclasses.dataclass
class ClsData:
    root: Path
    bad: list[str]  # Defects that make the trainer refuse it.
    names: list[str]  # What a refusal should name.
    images: int  # Readable images.
    labels: list[str]  # The label of each labeled image, as the trainer should read it.
    description: str
    sure: bool  # The generator is sure a clean version is accepted (splits included).
    label_flags: dict  # --class_names / --accept_label_warnings given to both commands.


def make_cls_folder(root: Path, rng, defects: list[str] | None = None) -> ClsData:
    """A random classification folder: images/ + labels.csv (+ metadata.csv), random encodings,
    delimiters, label spellings, image modes and sizes, and `defects` (random if None)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    k = int(rng.choice([2, 2, 2, 3]))
    pool = CLASS_POOLS[int(rng.integers(len(CLASS_POOLS)))]
    spelling = str(rng.choice(["ids", "ids", "names", "names"]))
    per_class = int(rng.integers(6, 9))
    n = k * per_class
    modes = (
        [str(rng.choice(MODES))]
        if rng.random() < 0.6
        else [str(m) for m in rng.choice(MODES, size=3)]
    )
    if rng.random() < 0.5:
        sizes = [(int(rng.integers(4, 25)), int(rng.integers(4, 25)))] * n
    else:
        sizes = [(int(rng.integers(4, 25)), int(rng.integers(4, 25))) for _ in range(n)]
    files = []
    for i in range(n):
        p = write_image(images_dir / f"im{i:02d}.png", modes[i % len(modes)], sizes[i], rng)
        files.append(p.name)
    order = rng.permutation(n)
    classes = [order[i] % k for i in range(n)]
    labels = [str(c) if spelling == "ids" else pool[c] for c in classes]
    if defects is None:
        defects = []
        if rng.random() < 0.7:
            count = 1 if rng.random() < 0.8 else 2
            defects = [
                str(d) for d in rng.choice([d for d, _ in DEFECTS], size=count, replace=False)
            ]
    refusing = dict(DEFECTS)
    bad = [d for d in defects if refusing[d]]
    names: list[str] = [str(root)]
    rows = [[f, y] for f, y in zip(files, labels, strict=True)]
    expected_labels = list(labels)
    readable = n
    label_flags: dict = {}
    sure = k == 2

    def pick() -> int:
        return int(rng.integers(n))

    for d in defects:
        if d in ("corrupt", "truncated", "zero_byte"):
            i = pick()
            target = images_dir / files[i]
            data = target.read_bytes()
            target.write_bytes(
                b""
                if d == "zero_byte"
                else data[: max(1, len(data) // 3)]
                if d == "truncated"
                else bytes(rng.integers(0, 256, 64, dtype=np.uint8))
            )
            names.append(files[i])
        elif d == "missing_file":
            rows.append(["gone.png", rows[0][1]])
            names.append("gone.png")
        elif d == "duplicate_row":
            rows.append(list(rows[pick()]))
            names.append("listed twice")
        elif d == "id_gap":
            rows = [[f, str(k) if y == rows[0][1] else y] for f, y in rows]
            names.append("labels.csv")
        elif d in ("negative_label", "float_label", "empty_label"):
            i = pick()
            rows[i][1] = {"negative_label": "-1", "float_label": "1.0", "empty_label": ""}[d]
            names.append("labels.csv")
        elif d == "mixed_ids_names":
            i = pick()
            rows[i][1] = "0" if spelling == "names" else "NORMAL"
            names.append("labels.csv")
        elif d in ("case_variant", "typo_variant"):
            i = pick()
            y = rows[i][1] if spelling == "names" else pool[int(rows[i][1])]
            rows = [[f, pool[int(v)]] if spelling == "ids" else [f, v] for f, v in rows]
            rows[i][1] = (
                y.swapcase() if d == "case_variant" else y[:-1] + ("x" if y[-1] != "x" else "y")
            )
            names.append("labels.csv")
        elif d == "lonely_class":
            rows[pick()][1] = str(k) if spelling == "ids" else "Lonely"
            names.append(str(root))
        elif d == "labels_folder":
            names.append("labels.csv")
        elif d in ("header_only", "empty_csv", "no_label_column", "png_as_csv"):
            names.append("labels.csv")
        elif d == "bad_filename":
            with open(os.path.join(os.fsencode(str(images_dir)), b"caf\xe9.png"), "wb") as f:
                f.write((images_dir / files[0]).read_bytes())
            names.append("caf")
        elif d == "non_image_file":
            (images_dir / "notes.txt").write_text("not an image\n")
        elif d == "unlabeled_extra":
            write_image(images_dir / "extra.png", modes[0], sizes[0], rng)
            readable += 1
        elif d == "padded_labels":
            rows = [[f, f"  {y} "] for f, y in rows]
        elif d == "blank_rows":
            rows.insert(int(rng.integers(1, len(rows))), ["", ""])
    # The CSV itself.
    encoding = str(rng.choice(ENCODINGS))
    delimiter = str(rng.choice(DELIMITERS))
    crlf = bool(rng.random() < 0.3)
    header = ["filename", "label"] if "no_label_column" not in defects else ["filename", "class"]
    text_rows = [header, *rows]
    non_ascii = any(not c.isascii() for r in text_rows for c in "".join(r))
    if encoding == "utf-16-le" or (encoding in ("latin-1", "cp1252") and non_ascii):
        bad.append(f"encoding {encoding}")
        names.append("labels.csv")
    if delimiter == "|":
        bad.append("delimiter |")
        names.append("labels.csv")
    target = root / "labels.csv"
    if "labels_folder" in defects:
        target.mkdir()
    elif "empty_csv" in defects:
        target.write_bytes(b"" if rng.random() < 0.5 else b"\n\n")
    elif "header_only" in defects:
        target.write_bytes(encode_csv([header], delimiter, encoding, crlf))
    elif "png_as_csv" in defects:
        shutil.copy(images_dir / files[-1], target)
    else:
        text = encode_csv(text_rows, delimiter, "utf-8", crlf).decode("utf-8")
        if rng.random() < (0.15 if bad else 0.6):  # CSV as people write them: quirks of the text.
            quirk = str(rng.choice(CSV_QUIRKS))
            text, fate = csv_quirk(text, quirk, delimiter, rng)
            defects = [*defects, f"csv:{quirk}"]
            if fate == "bad":
                bad.append(f"csv {quirk}")
                names.append("labels.csv")
            elif fate == "either":
                sure = False
        target.write_bytes(text.encode(encoding))
    # Patients.
    meta = str(rng.choice(["none", "none", "each", "pairs", "blank", "PatientID", "conflict"]))
    if meta != "none":
        col = "PatientID" if meta == "PatientID" else "patient_id"
        mrows = []
        for i, f in enumerate(files):
            pid = f"p{i // 2 if meta == 'pairs' else i:02d}"
            mrows.append([f, "" if meta == "blank" and i % 3 == 0 else pid])
        if meta == "pairs":  # Two images of one class per patient.
            by_class: dict = {}
            for f, c in zip(files, classes, strict=True):
                by_class.setdefault(c, []).append(f)
            mrows = [[f, f"p{c}_{j // 2}"] for c, fs in by_class.items() for j, f in enumerate(fs)]
            sure = False  # Fewer patients: a small split can lack a class.
        if meta == "conflict":
            mrows.append([files[0], "p99"])
        meta_encoding = encoding if encoding not in ("utf-16-le",) else "utf-8"
        (root / "metadata.csv").write_bytes(
            encode_csv(
                [["filename", col], *mrows],
                "," if delimiter == "|" else delimiter,
                meta_encoding,
                crlf,
            )
        )
        if meta in ("PatientID", "conflict"):
            bad.append(f"metadata {meta}")
            names.append("metadata.csv")
    if any(d in defects for d in ("case_variant", "typo_variant")) and rng.random() < 0.3:
        label_flags["accept_label_warnings"] = True
        sure = False
    # Labels as read: cells stripped, blank rows skipped.
    expected_labels = [y.strip() for f, y in rows if f.strip() or y.strip()]
    description = (
        f"classification: {n} images {modes} sizes {sorted(set(sizes))[:3]}, {k} classes as {spelling}, "
        f"labels.csv {encoding} {delimiter!r}{' CRLF' if crlf else ''}, metadata {meta}, defects {defects}"
    )
    return ClsData(root, bad, names, readable, expected_labels, description, sure, label_flags)


def make_clean_cls_folder(root: Path, rng) -> int:
    """A folder the trainer surely accepts (random modes and sizes, two classes as ids 0/1, a plain
    UTF-8 labels.csv, no metadata.csv), for the cases that test something else. Returns its size."""
    make_cls_folder(root, rng, defects=[])
    files = sorted(p.name for p in (root / "images").iterdir())
    rows = [["filename", "label"]] + [[f, str(i % 2)] for i, f in enumerate(files)]
    (root / "labels.csv").write_bytes(encode_csv(rows, ",", "utf-8", False))
    if (root / "metadata.csv").exists():
        (root / "metadata.csv").unlink()
    return len(files)


def _inspect_flags(flags: dict) -> list[str]:
    out = []
    if flags.get("accept_label_warnings"):
        out.append("--accept_label_warnings")
    if flags.get("class_names"):
        out.append(f"--class_names={flags['class_names']}")
    return out


def _config_label_flags(flags: dict) -> list[str]:
    out = []
    if flags.get("accept_label_warnings"):
        out.append("--config.data.accept_label_warnings=True")
    if flags.get("class_names"):
        out.append(f"--config.data.class_names={flags['class_names']}")
    return out


def _cls_counts(d: ClsData) -> dict:
    return {"images": d.images, "labeled": len(d.labels), "classes": dict(Counter(d.labels))}


def case_classification(seed: int, root: Path, rng) -> Case:
    data = make_cls_folder(root / "data", rng)
    expect = "error" if data.bad else ("ok" if data.sure else "either")
    inspect = Step(
        "s4mi_jax.inspect_data",
        [f"--data_dir={data.root}", *_inspect_flags(data.label_flags)],
        expect=expect,
        names=tuple(data.names),
        counts=_cls_counts(data) if not data.bad else None,
    )
    steps = [inspect]
    agree = None
    # The trainer refuses bad data before compiling (seconds); a full tiny run is a minute, so only
    # some good folders get one.
    if data.bad or rng.random() < 0.3:
        workdir = root / "run"
        config = SUP if rng.random() < 0.8 else SIMCLR
        main = Step(
            "s4mi_jax.main",
            [
                f"--config={config}",
                f"--config.data.root={data.root}",
                f"--workdir={workdir}",
                *(TINY_CLS if config == SUP else TINY_SIMCLR),
                *_config_label_flags(data.label_flags),
            ],
            expect=expect if config == SUP else "either",
            names=tuple(data.names),
            counts={"labeled": len(data.labels)} if config == SUP and not data.bad else None,
        )
        steps.append(main)
        if config == SUP:
            agree = (0, 1)
    return Case(
        seed, "classification", data.description, str(root), [str(data.root)], steps, agree=agree
    )


# ---- Segmentation folders ---------------------------------------------------------------------

MASK_SCHEMES = [
    "0/1",
    "0/255",
    "0/255",
    "ids3",
    "ids3+num_classes",
    "interpolated",
    "rgb",
    "wrong_size",
    "orphan_mask",
    "partial",
    "empty",
    "mask_jpg",
    "no_masks",
    "unreadable_mask",
    "palette",  # P-mode masks (VOC style): the palette indices are the classes.
    "16bit",  # I;16 masks, 0/1 or 0/65535.
    "bitmask",  # Mode "1".
    "rgba",
    "exif_image",  # JPEG images with EXIF orientation 6; masks drawn as displayed.
]


def case_segmentation(seed: int, root: Path, rng) -> Case:
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    n = int(rng.integers(8, 13))
    size = int(rng.integers(12, 33))
    channels = int(rng.choice([1, 3]))
    scheme = str(rng.choice(MASK_SCHEMES))
    yy, xx = np.mgrid[:size, :size]
    masked = 0
    values: set = set()
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4 + 1, 2)
        r = int(rng.integers(2, max(3, size // 4)))
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = (rng.integers(0, 80, (size, size, channels)) + 150 * disc[..., None]).astype(np.uint8)
        Image.fromarray(img[..., 0] if channels == 1 else img).save(
            data / "images" / f"im{i:02d}.png"
        )
        if scheme == "no_masks" or (scheme == "partial" and i % 3 == 2):
            continue
        mask = disc.astype(np.uint8)
        if scheme == "ids3" or scheme == "ids3+num_classes":
            mask = mask + ((xx > cx) & disc).astype(np.uint8)
        elif scheme == "empty":
            mask = np.zeros_like(mask)
        elif scheme not in ("0/1", "palette", "16bit", "bitmask"):
            mask = mask * 255
        im = Image.fromarray(mask)
        if scheme == "palette":
            im = Image.fromarray(mask, "L").convert("P")
            im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        elif scheme == "16bit":
            im = Image.fromarray((disc * (65535 if i % 2 else 1)).astype(np.uint16))
        elif scheme == "bitmask":
            im = Image.fromarray(disc)
        elif scheme == "rgba":
            im = im.convert("RGBA")
        elif scheme == "exif_image":
            exif = Image.Exif()
            exif[0x0112] = 6
            pic = Image.open(data / "images" / f"im{i:02d}.png")
            pic.load()
            (data / "images" / f"im{i:02d}.png").unlink()
            pic.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(
                data / "images" / f"im{i:02d}.jpg", exif=exif
            )
        if scheme == "interpolated" and i == 0:
            im = im.resize((size // 2, size // 2), Image.BILINEAR).resize(
                (size, size), Image.BILINEAR
            )
        if scheme == "rgb" and i == 0:
            im = im.convert("RGB")
        if scheme == "wrong_size" and i == 0:
            im = im.resize((size + 3, size))
        path = data / "masks" / f"im{i:02d}.{'jpg' if scheme == 'mask_jpg' else 'png'}"
        im.save(path)
        if scheme == "unreadable_mask" and i == 0:
            path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        masked += 1
        values |= set(np.unique(np.asarray(im)).tolist())
    if scheme == "orphan_mask":
        Image.fromarray(np.zeros((size, size), np.uint8)).save(data / "masks" / "ghost.png")
    refused = {
        "interpolated",
        "wrong_size",
        "orphan_mask",
        "ids3",
        "no_masks",
        "unreadable_mask",
        "mask_jpg",
    }
    unsure = {"rgb", "empty", "palette", "16bit", "bitmask", "rgba", "exif_image"}
    expect = "error" if scheme in refused else "either" if scheme in unsure else "ok"
    names = (str(data), "masks", "ghost.png", "im00")
    extra = ["--config.data.num_classes=3"] if scheme == "ids3+num_classes" else []
    if channels == 1 and rng.random() < 0.5:
        extra.append("--config.data.channels=1")
    steps = [
        Step(
            "s4mi_jax.inspect_data",
            [
                f"--data_dir={data}",
                "--masks",
                *(["--num_classes=3"] if scheme == "ids3+num_classes" else []),
            ],
            expect="either" if scheme == "ids3+num_classes" or scheme == "ids3" else expect,
            names=names,
            counts={"images": n, "masks": masked} if expect == "ok" else None,
        )
    ]
    if expect == "error" or rng.random() < 0.25:
        config = FIXMATCH if scheme == "partial" and rng.random() < 0.5 else SEG
        steps.append(
            Step(
                "s4mi_jax.main",
                [
                    f"--config={config}",
                    f"--config.data.root={data}",
                    f"--workdir={root / 'run'}",
                    *TINY,
                    *extra,
                ],
                expect=expect,
                names=names,
            )
        )
    description = f"segmentation: {n} images {size}x{size}x{channels}, masks {scheme} (values {sorted(values)[:6]}), {masked} masks"
    # The inspector checks masks as the trainers do at their default num_classes (docs/data.md).
    agree = (0, 1) if len(steps) == 2 else None  # Same num_classes given to both.
    return Case(seed, "segmentation", description, str(root), [str(data)], steps, agree=agree)


# ---- .npz datasets ----------------------------------------------------------------------------

NPZ_VARIANTS = [
    "good",
    "good",
    "unlabeled_rows",
    "rgb",
    "groups",
    "class_names",
    "float_images",
    "nan_label",
    "fraction_label",
    "negative_label",
    "string_labels",
    "wrong_length",
    "object_array",
    "not_a_zip",
    "no_images",
    "empty",
    "id_gap",
    "float_integer_labels",
]


def case_npz(seed: int, root: Path, rng) -> Case:
    data = root / "data"
    data.mkdir(parents=True)
    variant = str(rng.choice(NPZ_VARIANTS))
    n = int(rng.integers(12, 21))
    size = int(rng.integers(4, 17))
    shape = (n, size, size, 3) if variant == "rgb" else (n, size, size)
    arrays: dict = {"images": rng.integers(0, 256, shape, dtype=np.uint8)}
    labels = np.arange(n) % 2
    if variant == "unlabeled_rows":
        labels[rng.choice(n, 3, replace=False)] = -1
    arrays["labels"] = labels
    if variant == "groups":
        arrays["groups"] = np.array([f"p{i}" for i in range(n)])
    if variant == "class_names":
        arrays["class_names"] = np.array(["NORMAL", "PNEUMONIA"])
    if variant == "float_images":
        arrays["images"] = arrays["images"].astype(np.float32) / 255
    if variant in ("nan_label", "fraction_label"):
        arrays["labels"] = labels.astype(np.float64)
        arrays["labels"][int(rng.integers(n))] = np.nan if variant == "nan_label" else 0.7
    if variant == "negative_label":
        arrays["labels"][int(rng.integers(n))] = -3
    if variant == "string_labels":
        arrays["labels"] = np.array(["a" if y else "b" for y in labels])
    if variant == "wrong_length":
        arrays["labels"] = labels[:-2]
    if variant == "object_array":
        arrays["labels"] = np.array([int(y) for y in labels], dtype=object)
    if variant == "no_images":
        arrays = {"x": arrays["images"], "labels": labels}
    if variant == "empty":
        arrays = {"images": np.zeros((0, size, size), np.uint8), "labels": np.zeros((0,), np.int64)}
    if variant == "id_gap":
        arrays["labels"] = labels * 2
    if variant == "float_integer_labels":
        arrays["labels"] = labels.astype(np.float32)
    path = data / "d.npz"
    if variant == "not_a_zip":
        path.write_bytes(bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    else:
        np.savez(path, **arrays)
    good = variant in (
        "good",
        "unlabeled_rows",
        "rgb",
        "groups",
        "class_names",
        "float_integer_labels",
    )
    expect = "ok" if good else "error"
    labeled = int((np.asarray(labels) >= 0).sum())
    names = (str(path),)
    steps = [
        Step("s4mi_jax.inspect_data", [f"--data_dir={path}"], expect=expect, names=names,
             counts={"images": n, "labeled": labeled} if good else None)
    ]  # fmt: skip
    if not good or rng.random() < 0.25:
        steps.append(
            Step(
                "s4mi_jax.main",
                [
                    f"--config={SUP}",
                    f"--config.data.root={path}",
                    f"--workdir={root / 'run'}",
                    *TINY_CLS,
                ],
                expect=expect,
                names=names,
                counts={"labeled": labeled} if good else None,
            )
        )
    return Case(
        seed,
        "npz",
        f"npz {variant}: {shape}",
        str(root),
        [str(data)],
        steps,
        agree=(0, 1) if len(steps) == 2 else None,
    )


# ---- Config values ----------------------------------------------------------------------------

# key -> (values in range, values out of range, values whose fate the generator leaves open).
CONFIG_VALUES: dict[str, tuple[list, list, list]] = {
    "batch_size": ([2, 4, 32], [0, -3, "abc", 2.5], [1]),
    "total_steps": ([1, 2], [0, -5, "x"], []),
    "optim.base_lr": ([1e-3, 0.1], [-0.1, "nan", "inf", "-inf"], [0.0, 1e8]),
    "label_fraction": ([1.0, 0.5], [0.0, 1.5, "nan", -0.5], [0.01]),
    "data.label_fraction": ([], [0.5], []),  # Not a key: label_fraction is top-level.
    "data.val_fraction": ([0.1, 0.2], [1.2, -0.1, 1.0, "nan"], [0.0, 0.5]),
    "data.test_fraction": ([0.2, 0.3], [1.0, -0.2], [0.0, 0.6]),
    "data.split_seed": ([0, 5], [-1], [2**40]),
    "seed": ([0, 3, 12345], [-1, -7, 2**64, "zero"], [2**31, 2**40]),
    "select_metric": (
        ["auroc", "accuracy"],
        ["iou", "bogus", ""],
        ["balanced_accuracy", "f1/1", "loss"],
    ),
    "eval.batch_size": ([8, 3], [0, -1], []),
    "eval.bootstrap": ([5, 10], [0, -1], []),  # 0 crashed after training (found here; now refused).
    "aug.image_size": ([16, 32], [0, -8], [17, 1]),
    "keep_ckpts": ([1, 3], [0, -1], []),
    "log_every": ([1, 0, -1], [], []),
    "ckpt_every": ([1, 0], [], [-3]),
    "eval_every": ([1], [], [0, -1]),
    "halt_at_step": ([1], [0, -2], []),
    "nonfinite": (["stop", "skip"], ["bogus"], []),
    "optim.name": (["adam", "sgd"], ["bogus"], ["lars", "adamw"]),
    "optim.weight_decay": ([0.0, 1e-4], [-1.0], []),
    "optim.warmup_epochs": ([0.0, 0.5], [-1.0], []),
    "model.width": ([4, 8], [0, -4], []),
    "model.name": (["resnet18"], ["resnet7", "vit_nope"], []),
    "data.class_names": ([], ["a,a", ","], ["0,1", "x,y"]),
    "data.channels": ([1, 3], [0, -1, 2, 4], []),  # -1 was accepted (found here; now refused).
    "data.num_workers": ([0], [-1], [1]),
    "loss.name": (["cross_entropy"], ["bogus"], ["focal"]),
    "batch_sise": ([], [4], []),  # A typo.
    "optim.base_lrr": ([], [0.1], []),
}


_CONFIGS: dict = {}


def has_key(config_arg: str, key: str) -> bool:
    """Whether `--config=config_arg` has the dotted `key` (a missing one is a flag error)."""
    if config_arg not in _CONFIGS:
        import importlib

        path, _, variant = config_arg.partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        _CONFIGS[config_arg] = module.get_config(variant or None)
    node = _CONFIGS[config_arg]
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def _fmt(v) -> str:
    return str(v)


# Segmentation runs select on other metrics (trainers/segment.py SELECT_METRICS).
SEG_SELECT = (["iou", "dice"], ["auroc", "accuracy", "bogus"], ["hd95", "loss"])


def case_config(seed: int, root: Path, rng) -> Case:
    """A good small folder, a config (supervised, SimCLR or segmentation) and 1-3 random config
    values, in range or not; sometimes an external test folder (`data.eval_root`)."""
    data_root = root / "data"
    config = str(rng.choice([SUP] * 7 + [SIMCLR] * 1 + [SEG] * 2))
    if config == SEG:
        make_base_data("segment", data_root)
        nimg = None
    else:
        nimg = make_clean_cls_folder(data_root, np.random.default_rng(seed + 10**6))
    keys = list(CONFIG_VALUES)
    chosen = [str(k) for k in rng.choice(keys, size=int(rng.integers(1, 4)), replace=False)]
    all_good = rng.random() < 0.2
    overrides, bad, unsure = [], [], []
    for key in chosen:
        good, out, either = (
            SEG_SELECT if (key, config) == ("select_metric", SEG) else CONFIG_VALUES[key]
        )
        pools = (
            [("good", good)]
            if all_good and good
            else [("good", good), ("bad", out), ("either", either)]
        )
        pools = [(n, p) for n, p in pools if p]
        kind, values = pools[int(rng.integers(len(pools)))]
        value = values[int(rng.integers(len(values)))]
        overrides.append((key, value))
        if kind == "bad":
            bad.append(key)
        elif kind == "either":
            unsure.append(key)
    data_dirs = [str(data_root)]
    if rng.random() < 0.15:  # An external test set: good, unlabeled, or missing.
        ext = root / "ext"
        which = str(rng.choice(["good", "unlabeled", "missing"]))
        if which != "missing":
            if config == SEG:
                make_base_data("segment", ext)
                if which == "unlabeled":
                    shutil.rmtree(ext / "masks")
            else:
                make_clean_cls_folder(ext, rng)
                if which == "unlabeled":
                    (ext / "labels.csv").unlink()
            data_dirs.append(str(ext))
        overrides.append(("data.eval_root", str(ext)))
        chosen.append("data.eval_root")
        (bad if which != "good" else unsure).append("data.eval_root")
    # Known ill pairs: val + test >= 1; val = 0 = test.
    over = dict(overrides)
    val, test = over.get("data.val_fraction", 0.1), over.get("data.test_fraction", 0.2)
    if (
        isinstance(val, float)
        and isinstance(test, float)
        and val + test >= 1
        and "data.val_fraction" not in bad
    ):
        bad.append("data.val_fraction")
    if val == 0 and test == 0 and "data.eval_root" not in over:  # Nothing to select on or test on.
        bad += ["data.val_fraction", "data.test_fraction"]
    for key in chosen:  # A key the config lacks is a flag error naming it.
        if not has_key(config, key) and key not in bad:
            bad.append(key)
    tiny = {SUP: TINY_CLS, SIMCLR: TINY_SIMCLR, SEG: TINY}[config]
    args = [
        f"--config={config}",
        f"--config.data.root={data_root}",
        f"--workdir={root / 'run'}",
        *[a for a in tiny if a.split("=")[0].removeprefix("--config.") not in over],
    ]
    args += [f"--config.{k}={_fmt(v)}" for k, v in overrides]
    expect = "error" if bad else "ok" if not unsure and config != SIMCLR else "either"
    names = tuple(k.split(".")[-1] for k in bad) if bad else tuple(k.split(".")[-1] for k in chosen)
    counts = {"labeled": nimg} if expect == "ok" and nimg and "label_fraction" not in over else None
    step = Step("s4mi_jax.main", args, expect=expect, names=names + ("config",), counts=counts)
    desc = f"config {config.split('/')[-1]}: {overrides} (out of range: {bad}, open: {unsure})"
    return Case(seed, "config", desc, str(root), data_dirs, [step])


# ---- Workdirs ----------------------------------------------------------------------------------


def case_workdir(seed: int, root: Path, rng) -> Case:
    data = root / "data"
    make_clean_cls_folder(data, rng)
    variant = str(rng.choice(["inside_data", "data_root", "images_dir", "a_file", "inside_file"]))
    if variant == "inside_data":
        workdir = data / "run"
    elif variant == "data_root":
        workdir = data
    elif variant == "images_dir":
        workdir = data / "images"
    else:
        (root / "afile").write_text("x")
        workdir = root / "afile" if variant == "a_file" else root / "afile" / "run"
    step = Step(
        "s4mi_jax.main",
        [f"--config={SUP}", f"--config.data.root={data}", f"--workdir={workdir}", *TINY_CLS],
        expect="error",
        names=(str(workdir), "workdir"),
    )
    return Case(seed, "workdir", f"workdir {variant}", str(root), [str(data)], [step])


# ---- Folder layouts -----------------------------------------------------------------------------

LAYOUTS = [
    "flat",  # Images directly in the folder (no images/): accepted.
    "upper_ext",  # .PNG / .JPG extensions.
    "hidden_files",  # .DS_Store, ._im00.png (AppleDouble), Thumbs.db beside the images.
    "symlinked_image",
    "list_csv",  # A CSV of paths relative to it.
    "list_csv_missing",
    "list_csv_no_path",
    "list_csv_blank_path",
    "empty_folder",
    "only_txt",
    "images_is_file",
    "nested_images",  # images/images/*.png only.
    "data_dir_is_image",
    "missing_root",
]


def case_layout(seed: int, root: Path, rng) -> Case:
    data = root / "data"
    layout = str(rng.choice(LAYOUTS))
    target = data  # What the commands are pointed at.
    good, names, n = False, (str(data),), 12
    if layout in ("flat", "upper_ext", "hidden_files", "symlinked_image"):
        folder = data if layout == "flat" else data / "images"
        folder.mkdir(parents=True)
        rows = [["filename", "label"]]
        for i in range(n):
            p = write_image(folder / f"im{i:02d}.png", str(rng.choice(["L", "RGB"])), (8, 8), rng)
            if layout == "upper_ext":
                p = p.rename(p.with_suffix(p.suffix.upper()))
            rows.append([p.name, str(i % 2)])
        if layout == "hidden_files":
            (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(32))
            (folder / "._im00.png").write_bytes(b"\0\5\26\7" + bytes(60))  # AppleDouble: not a PNG.
            (folder / "Thumbs.db").write_bytes(bytes(64))
        if layout == "symlinked_image":
            os.symlink(folder / rows[1][0], folder / "link.png")
            rows.append(["link.png", "0"])
            n += 1
        (data / "labels.csv").write_bytes(encode_csv(rows, ",", "utf-8", False))
        good = layout != "hidden_files"  # AppleDouble files look like images by name.
    elif layout.startswith("list_csv"):
        make_clean_cls_folder(data / "ds", rng)
        files = sorted(p.name for p in (data / "ds" / "images").iterdir())
        rows = [["path", "label", "patient_id"]] + [
            [f"ds/images/{f}", str(i % 2), f"p{i}"] for i, f in enumerate(files)
        ]
        if layout == "list_csv_missing":
            rows.append(["ds/images/nope.png", "0", "px"])
            names = ("list.csv", "nope.png")
        if layout == "list_csv_no_path":
            rows[0][0] = "file"
            names = ("list.csv",)
        if layout == "list_csv_blank_path":
            rows.append(["", "1", "py"])
            names = ("list.csv",)
        (data / "list.csv").write_bytes(encode_csv(rows, ",", "utf-8", False))
        target, good, n = data / "list.csv", layout == "list_csv", len(files)
    elif layout == "empty_folder":
        data.mkdir(parents=True)
    elif layout == "only_txt":
        (data / "images").mkdir(parents=True)
        (data / "images" / "notes.txt").write_text("x")
    elif layout == "images_is_file":
        data.mkdir(parents=True)
        (data / "images").write_bytes(b"not a folder")
    elif layout == "nested_images":
        (data / "images" / "images").mkdir(parents=True)
        for i in range(4):
            write_image(data / "images" / "images" / f"im{i}.png", "L", (8, 8), rng)
    elif layout == "data_dir_is_image":
        data.mkdir(parents=True)
        target = write_image(data / "x.png", "L", (8, 8), rng)
        names = (str(target),)
    elif layout == "missing_root":
        data.mkdir(parents=True)
        target = data / "nope"
        names = (str(target),)
    expect = "ok" if good else "either" if layout == "nested_images" else "error"
    steps = [
        Step("s4mi_jax.inspect_data", [f"--data_dir={target}"], expect=expect, names=names,
             counts={"images": n, "labeled": n} if good else None)
    ]  # fmt: skip
    if not good or rng.random() < 0.25:
        steps.append(
            Step(
                "s4mi_jax.main",
                [
                    f"--config={SUP}",
                    f"--config.data.root={target}",
                    f"--workdir={root / 'run'}",
                    *TINY_CLS,
                ],
                expect=expect,
                names=names + ("config.data.root",),
                counts={"labeled": n} if good else None,
            )
        )
    agree = (0, 1) if len(steps) == 2 else None
    return Case(seed, "layout", f"layout {layout}", str(root), [str(data)], steps, agree=agree)


# ---- Finished runs: predict, score, reruns ------------------------------------------------------

BASE_ARGS = {
    "classify": [f"--config={SUP}", "--config.total_steps=2", "--config.eval_every=2",
                 "--config.ckpt_every=1", "--config.log_every=1", "--config.eval.bootstrap=10"],
    "segment": [f"--config={SEG}", "--config.total_steps=2", "--config.eval_every=2",
                "--config.ckpt_every=1", "--config.log_every=1"],
}  # fmt: skip


def make_base_data(kind: str, data: Path) -> None:
    rng = np.random.default_rng(12345)
    (data / "images").mkdir(parents=True)
    if kind == "classify":
        rows = [["filename", "label"]]
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                data / "images" / f"im{i:02d}.png"
            )
            rows.append([f"im{i:02d}.png", str(i % 2)])
        (data / "labels.csv").write_bytes(encode_csv(rows, ",", "utf-8", False))
    else:
        (data / "masks").mkdir()
        yy, xx = np.mgrid[:16, :16]
        for i in range(10):
            cy, cx = rng.integers(4, 12, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 9
            img = (rng.integers(0, 80, (16, 16, 3)) + 150 * disc[..., None]).astype(np.uint8)
            Image.fromarray(img).save(data / "images" / f"im{i:02d}.png")
            Image.fromarray((disc * 255).astype(np.uint8)).save(data / "masks" / f"im{i:02d}.png")


def run_argv(kind: str, data: Path, workdir: Path) -> list[str]:
    return [*BASE_ARGS[kind], f"--config.data.root={data}", f"--workdir={workdir}"]


def case_run(seed: int, root: Path, rng) -> Case:
    kind = "classify" if rng.random() < 0.7 else "segment"
    run, run_data = root / "run", root / "run_data"
    variant = str(
        rng.choice(
            [
                "predict",
                "predict",
                "predict_damaged_best",
                "predict_damaged_latest",
                "predict_bad_config_json",
                "score",
                "score",
                "score_bad_results",
                "rerun_same",
                "rerun_changed_config",
                "rerun_bad_value",
                "rerun_more_steps",
                "rerun_data_changed",
                "rerun_metrics_non_utf8",
                "rerun_damaged_config_json",
                "rerun_damaged_latest",
                "predict_metrics_non_utf8",
            ]
        )
    )
    prepare: list[tuple] = []
    data_dirs = [str(run_data)]
    steps: list[Step] = []
    base = run_argv(kind, run_data, run)
    if variant.startswith("predict"):
        inp = root / "input"
        inp.mkdir()
        good = 0
        for i in range(int(rng.integers(1, 6))):
            mode = str(rng.choice(MODES))
            p = write_image(
                inp / f"x{i}.png", mode, (int(rng.integers(4, 40)), int(rng.integers(4, 40))), rng
            )
            good += 1
            if rng.random() < 0.2:
                p.write_bytes(p.read_bytes()[:20])
                good -= 1
        data_dirs.append(str(inp))
        args = [f"--workdir={run}", f"--input={inp}", f"--output={root / 'out'}"]
        if rng.random() < 0.4:
            args.append(
                f"--checkpoint={rng.choice(['best', 'latest', '1', '2', '7', 'newest', '-1'])}"
            )
        if rng.random() < 0.2:
            args.append(f"--batch_size={rng.choice([1, 3, 8, 0, -4])}")
        placement = "out"
        if rng.random() < 0.3:  # Never into an input folder; a file is no folder.
            placement = str(
                rng.choice(["in_input", "is_input", "in_run_data", "a_file", "workdir"])
            )
            out = {
                "in_input": inp / "preds",
                "is_input": inp,
                "in_run_data": run_data / "preds",
                "a_file": root / "afile",
                "workdir": run,
            }[placement]
            if placement == "a_file":
                out.write_text("x")
            args[2] = f"--output={out}"
        if variant == "predict_damaged_best":
            prepare.append(("damage", "best", int(rng.integers(1000))))
        if variant == "predict_damaged_latest":
            prepare.append(("damage", "checkpoints/2", int(rng.integers(1000))))
            args = [a for a in args if not a.startswith("--checkpoint=")] + ["--checkpoint=latest"]
        if variant == "predict_bad_config_json":
            prepare.append(("bytes", "config.json", "trunc"))
        if variant == "predict_metrics_non_utf8":
            prepare.append(("bytes", "metrics.jsonl", "latin1"))
        plain = (
            variant in ("predict", "predict_metrics_non_utf8")
            and not any(
                a.startswith("--checkpoint=")
                and a.split("=")[1] not in ("best", "latest", "1", "2")
                for a in args
            )
            and not any(a in ("--batch_size=0", "--batch_size=-4") for a in args)
            and placement == "out"
        )
        refused = placement in ("in_input", "is_input", "a_file")
        steps.append(
            Step(
                "s4mi_jax.predict",
                args,
                expect="error" if refused else ("ok" if good else "error") if plain else "either",
                names=(str(run), str(inp), "checkpoint", "batch_size", "config.json", "output"),
                counts={"predicted": good} if plain else None,
                workdir=str(run),
            )
        )
    elif variant.startswith("score"):
        args = [f"--workdir={run}"]
        if variant == "score_bad_results":
            prepare.append(
                ("bytes", "results.json", str(rng.choice(["trunc", "latin1", "delete"])))
            )
        sub = str(rng.choice(["own", "ext_good", "ext_bad", "checkpoint", "predictions_missing"]))
        if sub == "ext_good" or sub == "ext_bad":
            ext = root / "ext"
            if kind == "classify":
                if sub == "ext_good":
                    make_clean_cls_folder(ext, rng)
                else:
                    make_cls_folder(ext, rng)
            else:
                make_base_data("segment", ext)
                if sub == "ext_bad":
                    (ext / "masks" / "im00.png").write_bytes(b"not a png")
            data_dirs.append(str(ext))
            args.append(f"--data_root={ext}")
        elif sub == "checkpoint":
            args.append(f"--checkpoint={rng.choice(['best', 'latest', '1', '9', 'x'])}")
        elif sub == "predictions_missing":
            args.append(f"--predictions={root / 'nope'}")
        placement = "none"
        if rng.random() < 0.6:
            placement = str(
                rng.choice(["plain", "plain", "in_data_root", "in_run_data", "a_folder"])
            )
            if placement == "in_data_root" and "--data_root=" not in " ".join(args):
                placement = "in_run_data"
            out = {
                "plain": root / "scores.json",
                "in_data_root": root / "ext" / "scores.json",
                "in_run_data": run_data / "scores.json",
                "a_folder": root,
            }[placement]
            args.append(f"--output={out}")
        expect = (
            "ok"
            if sub == "own" and variant == "score" and placement in ("none", "plain")
            else "either"
        )
        if placement in ("in_data_root", "in_run_data"):
            expect = "error"  # Never written into a data folder.
        steps.append(
            Step(
                "s4mi_jax.score",
                args,
                expect=expect,
                names=(str(run), str(root), "checkpoint", "results.json"),
                workdir=str(run),
            )
        )
    else:
        args = list(base)
        expect, may_train = "either", False
        names: tuple[str, ...] = (str(run), str(run_data))
        if variant == "rerun_same":
            expect = "ok"
        elif variant == "rerun_changed_config":
            key, value = [
                ("optim.base_lr", 0.5),
                ("seed", 3),
                ("batch_size", 4),
                ("model.width", 4),
            ][int(rng.integers(4))]
            args.append(f"--config.{key}={value}")
            expect, names = "error", (key,)
        elif variant == "rerun_bad_value":
            key, value = [
                ("batch_size", 0),
                ("seed", -1),
                ("optim.base_lr", "nan"),
                ("keep_ckpts", 0),
                ("total_steps", -1),
            ][int(rng.integers(5))]
            args.append(f"--config.{key}={value}")
            expect, names = "error", (key.split(".")[-1],)
        elif variant == "rerun_more_steps":
            args.append("--config.total_steps=3")
            may_train = True
        elif variant == "rerun_data_changed":
            prepare.append(("add_image", str(rng.choice(["images", "labels"]))))
            expect = "error" if kind == "classify" else "either"
            names = (str(run_data), str(run), "data")
        elif variant == "rerun_metrics_non_utf8":
            prepare.append(("bytes", "metrics.jsonl", "latin1"))
            names = (str(run), "metrics.jsonl")
        elif variant == "rerun_damaged_config_json":
            prepare.append(
                ("bytes", "config.json", str(rng.choice(["trunc", "latin1", "notjson"])))
            )
            expect, names = "error", ("config.json",)
        elif variant == "rerun_damaged_latest":
            prepare.append(("damage", "checkpoints/2", int(rng.integers(1000))))
            may_train = True  # Falls back to step 1 and trains it again.
        steps.append(
            Step(
                "s4mi_jax.main",
                args,
                expect=expect,
                names=names,
                workdir=str(run),
                may_train=may_train,
            )
        )
    return Case(
        seed,
        "run",
        f"{kind} run: {variant} {prepare}",
        str(root),
        data_dirs,
        steps,
        needs_run=kind,
        prepare=prepare,
    )


# ---- The generator ------------------------------------------------------------------------------

FAMILIES = [
    ("classification", case_classification, 0.28),
    ("config", case_config, 0.24),
    ("segmentation", case_segmentation, 0.12),
    ("npz", case_npz, 0.10),
    ("layout", case_layout, 0.10),
    ("workdir", case_workdir, 0.04),
    ("run", case_run, 0.12),
]


def make_case(seed: int, root: str | Path) -> Case:
    """One random case under `root` (an empty or missing folder), deterministic in `seed`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = np.array([w for *_, w in FAMILIES])
    _, make, _ = FAMILIES[int(rng.choice(len(FAMILIES), p=weights / weights.sum()))]
    return make(seed, root, rng)


# ---- Running and checking -----------------------------------------------------------------------


def command_env() -> dict:
    """One CPU device, as a user's laptop; the tests' compile cache, as conftest.py sets it."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env.setdefault("S4MI_COMPILE_CACHE", str(ROOT / ".jax_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    env.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
    return env


@dataclasses.dataclass
class StepResult:
    command: str
    code: int | None
    seconds: float
    stdout: str
    stderr: str
    problems: list[str]


@dataclasses.dataclass
class CaseResult:
    case: Case
    steps: list[StepResult]
    problems: list[str]  # "<kind>: <what>" for every violation of the contract or of expectations.

    def to_json(self) -> dict:
        return {
            **self.case.to_json(),
            "problems": self.problems,
            "results": [
                {"command": s.command, "code": s.code, "seconds": round(s.seconds, 1),
                 "problems": s.problems, "stderr_tail": tail(s.stderr, 8), "stdout_tail": tail(s.stdout, 4)}
                for s in self.steps
            ],
        }  # fmt: skip


def tail(text: str, n: int) -> str:
    return "\n".join([line for line in text.splitlines() if line.strip()][-n:])


class BaseRuns:
    """Finished tiny runs, built once in `folder` (on first use) and copied into each case."""

    def __init__(self, folder: str | Path, timeout: float = HANG_GUARD_S):
        self.folder, self.timeout, self.built = Path(folder), timeout, {}

    def get(self, kind: str) -> tuple[Path, Path]:
        if kind not in self.built:
            data, run = self.folder / kind / "data", self.folder / kind / "run"
            if not (run / "results.json").exists():
                shutil.rmtree(self.folder / kind, ignore_errors=True)
                make_base_data(kind, data)
                proc = subprocess.run(
                    [sys.executable, "-m", "s4mi_jax.main", *run_argv(kind, data, run)],
                    cwd=ROOT, env=command_env(), capture_output=True, text=True, timeout=self.timeout,
                )  # fmt: skip
                if proc.returncode != 0 or not (run / "results.json").exists():
                    raise RuntimeError(
                        f"the base {kind} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
                    )
            self.built[kind] = (data, run)
        return self.built[kind]

    def copy_into(self, kind: str, case_root: Path) -> None:
        """The finished run and its data at case_root/run and case_root/run_data, its records
        pointing at the copy of the data (so rerunning its command there is the same config)."""
        data, run = self.get(kind)
        shutil.copytree(data, case_root / "run_data")
        shutil.copytree(run, case_root / "run", symlinks=True)
        old, new = str(data), str(case_root / "run_data")
        for p in (case_root / "run").rglob("*.json"):
            if p.is_file():
                text = p.read_text(encoding="utf-8", errors="surrogateescape")
                if old in text:
                    p.write_text(text.replace(old, new), encoding="utf-8", errors="surrogateescape")


def apply_prepare(action: tuple, case_root: Path) -> None:
    run, data = case_root / "run", case_root / "run_data"
    what = action[0]
    if what == "damage":  # One file of a checkpoint folder: truncated, zeroed or emptied.
        files = sorted(p for p in (run / action[1]).rglob("*") if p.is_file())
        if not files:
            return
        target = files[action[2] % len(files)]
        b = target.read_bytes()
        how = action[2] % 3
        target.write_bytes(b[: len(b) // 2] if how == 0 else b"\0" * len(b) if how == 1 else b"")
    elif what == "bytes":
        target = run / action[1]
        if action[2] == "delete":
            target.unlink()
        elif action[2] == "trunc":
            b = target.read_bytes()
            target.write_bytes(b[: len(b) // 2])
        elif action[2] == "latin1":
            with open(target, "ab") as f:
                f.write(b'{"step": 2, "note": "caf\xe9"}\n')
        elif action[2] == "notjson":
            target.write_text("not json {")
    elif what == "add_image":
        src = sorted((data / "images").iterdir())[0]
        shutil.copy(src, data / "images" / ("zz_new" + src.suffix))
        if action[1] == "labels" and (data / "labels.csv").exists():
            with open(data / "labels.csv", "a") as f:
                f.write(f"zz_new{src.suffix},0\n")


def latest_checkpoint(workdir: Path) -> Path | None:
    steps = sorted(
        (int(p.name), p) for p in (workdir / "checkpoints").glob("*") if p.is_dir() and p.name.isdigit()
    ) if (workdir / "checkpoints").is_dir() else []  # fmt: skip
    return steps[-1][1] if steps else None


def _parse_inspect(out: str) -> dict:
    got: dict = {}
    if m := re.search(r"^images: (\d+) \((\d+) readable\)", out, re.M):
        got["images"], got["readable"] = int(m.group(1)), int(m.group(2))
    if m := re.search(r"^labels: (\d+) labeled, (\d+) unlabeled; classes: (.*)$", out, re.M):
        got["labeled"] = int(m.group(1))
        classes = {}
        if m.group(3) != "none":
            for part in re.split(r", (?=[^,]*: \d+$|[^,]*: \d+, )", m.group(3)):
                name, _, count = part.rpartition(": ")
                classes[name] = int(count)
        got["classes"] = classes
    if m := re.search(r"^masks: (\d+) of (\d+) images", out, re.M):
        got["masks"] = int(m.group(1))
    return got


def _check_counts(step: Step, out: str) -> list[str]:
    want = step.counts or {}
    if step.module == "s4mi_jax.inspect_data":
        got = _parse_inspect(out)
        return [
            f"misread: inspect_data reported {k}={got.get(k)!r}, the data hold {v!r}"
            for k, v in want.items()
            if got.get(k) != v
        ]
    if step.module == "s4mi_jax.main" and "labeled" in want:
        m = re.search(r": (\d+) labeled training images \(100% .*?, val (\d+), test (\d+)", out)
        if m is None:
            return []  # Pretraining or a fraction < 1: not counted.
        got = sum(map(int, m.groups()))
        if got != want["labeled"]:
            return [
                f"misread: train+val+test = {got} labeled images, the data hold {want['labeled']}"
            ]
    if step.module == "s4mi_jax.predict" and "predicted" in want:
        m = re.search(r"predict: (\d+) image\(s\) predicted", out)
        if m and int(m.group(1)) != want["predicted"]:
            return [f"misread: predicted {m.group(1)} images, {want['predicted']} are readable"]
    return []


def check_step(step: Step, code: int | None, out: str, err: str) -> list[str]:
    """The contract for one command's result (see the module docstring)."""
    problems = []
    name = step.module.split(".")[-1]
    if code is None:
        return [f"hang: {name} did not finish within the hang guard"]
    if "Traceback" in out or "Traceback" in err:
        problems.append(f"traceback: {name} exit {code}: {tail(err or out, 3)}")
    refused = code in REFUSAL[step.module]
    if code != 0 and not refused:
        problems.append(f"exit: {name} exited {code}: {tail(err, 2)}")
    if refused:
        last = tail(err, 1)
        predict_skipped = step.module == "s4mi_jax.predict" and code == 1 and "skipped" in err
        if not last.startswith(PREFIX[step.module]) and not predict_skipped:
            problems.append(f"not_one_line: {name} exit {code}, last stderr line {last[:300]!r}")
        elif not predict_skipped and (
            extra := [
                line
                for line in err.splitlines()[:-1]
                if line.strip() and not line.startswith("WARNING:") and line.strip() != last
            ]
        ):
            problems.append(
                f"not_one_line: {name} exit {code}: {len(extra)} more stderr line(s) before its error: {extra[:3]!r}"
            )
        elif step.names and not predict_skipped and not any(n in last for n in step.names):
            problems.append(
                f"unnamed: {name}'s line names none of {list(step.names)[:4]}: {last[:300]!r}"
            )
        if step.expect == "ok":
            problems.append(
                f"refused_good: {name} refused data/config the generator built as good: {last[:300]!r}"
            )
    if code == 0:
        if step.expect == "error":
            problems.append(f"accepted_bad: {name} exited 0 on input the generator built as bad")
        if step.counts:
            problems += _check_counts(step, out)
    return problems


def _workdir_arg(step: Step) -> str | None:
    if step.module != "s4mi_jax.main":
        return None
    for a in step.args:
        if a.startswith("--workdir="):
            return a.split("=", 1)[1]
    return None


def run_case(case: Case, base: BaseRuns | None = None, timeout: float = HANG_GUARD_S) -> CaseResult:
    """Runs `case`'s commands in order and checks the contract after each."""
    root = Path(case.root)
    problems: list[str] = []
    if case.needs_run:
        assert base is not None, "this case needs a BaseRuns folder"
        try:
            base.copy_into(case.needs_run, root)
            data_dirs = [*case.data_dirs, str(base.get(case.needs_run)[0])]
        except RuntimeError as e:
            return CaseResult(case, [], [f"base_run: {e}"])
        for action in case.prepare:
            apply_prepare(action, root)
    else:
        data_dirs = case.data_dirs
    env = command_env()
    results = []
    for step in case.steps:
        before = {d: tree_digest(d) for d in data_dirs}
        fresh = _workdir_arg(step)
        fresh = fresh if fresh is not None and not os.path.lexists(fresh) else None
        ckpt = None
        if step.workdir and (latest := latest_checkpoint(Path(step.workdir))) is not None:
            ckpt = {p: tree_digest(p) for p in (latest, Path(step.workdir) / "best")}
        start = time.monotonic()
        try:
            proc = subprocess.run(
                step.argv(), cwd=ROOT, env=env, capture_output=True, timeout=timeout
            )
            code = proc.returncode
            out = proc.stdout.decode("utf-8", "backslashreplace")
            err = proc.stderr.decode("utf-8", "backslashreplace")
        except subprocess.TimeoutExpired as e:
            code, out, err = (
                None,
                (e.stdout or b"").decode(errors="replace"),
                (e.stderr or b"").decode(errors="replace"),
            )
        seconds = time.monotonic() - start
        found = check_step(step, code, out, err)
        for d, digest in before.items():
            if (after := tree_digest(d)) != digest:
                found.append(
                    f"data_changed: {step.module.split('.')[-1]} changed {d}: {digest_diff(digest, after)}"
                )
        if ckpt and not (step.may_train and code == 0):
            for p, digest in ckpt.items():
                if (after := tree_digest(p)) != digest:
                    found.append(f"checkpoint_changed: {p}: {digest_diff(digest, after) or 'gone'}")
        if fresh is not None and code == 2 and "first step" not in out and os.path.lexists(fresh):
            # docs/data.md: no workdir is written for data and config errors (a start that fails
            # before its first step removes what it wrote).
            found.append(
                f"workdir_left: main refused before its first step but left {fresh}: {sorted(os.listdir(fresh))[:6] if os.path.isdir(fresh) else 'a file'}"
            )
        results.append(StepResult(step.short(), code, seconds, out, err, found))
        problems += found
    if case.agree is not None and len(results) > max(case.agree):
        a, b = (results[i] for i in case.agree)
        if a.code is not None and b.code is not None and (a.code == 0) != (b.code == 0):
            problems.append(
                f"disagree: inspect_data exit {a.code}, main exit {b.code} on the same data "
                f"({tail(a.stderr, 1)[:200]!r} / {tail(b.stderr, 1)[:200]!r})"
            )
    return CaseResult(case, results, problems)


def problem_kind(problem: str) -> str:
    return problem.split(":", 1)[0]


CONTRACT_KINDS = {
    "traceback",
    "exit",
    "not_one_line",
    "unnamed",
    "data_changed",
    "checkpoint_changed",
    "hang",
    "misread",
    "base_run",
    "workdir_left",
}
