"""The must-show catalogue of bad inputs (docs/data.md, "Bad input"), through the real entry points.

Every case runs a command's own `main(argv)` in this process, as `python -m` runs it (flags parsed from
`sys.argv` by the command's parser; a few run as real subprocesses to prove the in-process runs are
faithful), and asserts: exit status 2, exactly one line on stderr, naming the file (and row) or the
config key / flag, no traceback, the data folder byte-identical before and after, no workdir written
for data and config errors, and a previous checkpoint intact where there is one. Then inspect_data and
main must agree on every data case: both refuse. Errors come before any JAX compile, so the whole
catalogue takes seconds.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from PIL import Image

from configs import common, simclr_chest
from s4mi_jax import inspect_data, predict
from s4mi_jax import main as main_module
from s4mi_jax.cli import parse_flags
from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.core.metric_writer import prepare_workdir
from s4mi_jax.data import manifests
from tests.helpers import HANG_GUARD_S, override

ROOT = Path(__file__).resolve().parents[1]
SUP = "--config=configs/supervised_chest.py:local"
N = 12


# ---- Building data -------------------------------------------------------------------------------


def dataset(data: Path, labels=None, patients=True, n=N) -> Path:
    """`n` 8x8 grayscale PNGs, labels.csv (ids 0/1 alternating, or `labels`), one patient each."""
    (data / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8)).astype(np.uint8)).save(
            data / "images" / f"im{i:02d}.png"
        )
    labels = labels or [str(i % 2) for i in range(n)]
    rows = "".join(f"im{i:02d}.png,{y}\n" for i, y in enumerate(labels))
    (data / "labels.csv").write_text("filename,label\n" + rows)
    if patients:
        rows = "".join(f"im{i:02d}.png,p{i:02d}\n" for i in range(n))
        (data / "metadata.csv").write_text("filename,patient_id\n" + rows)
    return data


def names(a="NORMAL", b="PNEUMONIA"):
    return [a if i % 2 else b for i in range(N)]


def write(path: Path, data: bytes | str) -> None:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def with_file(name: str, content, **kw):
    """A clean dataset with `name` (relative to it) replaced by `content`."""

    def make(data: Path) -> Path:
        dataset(data, **kw)
        target = data / name
        if callable(content):
            content(target)
        else:
            write(target, content)
        return data

    return make


def labels_bytes(text: str, encoding: str) -> bytes:
    return text.encode(encoding)


def png_bomb(path: Path) -> None:
    """A 1-bit PNG of 20000 x 20000 pixels (a few KB on disk, 400 M pixels decoded)."""
    w = h = 20000
    raw = zlib.compress(b"".join(b"\x00" + bytes(w // 8) for _ in range(h)), 9)

    def chunk(kind, body):
        return (
            len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        )

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    )


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def big_png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64)).astype(np.uint8)).save(path)
    truncate(path)


def npz(labels=None, images=None, **extra):
    def make(data: Path) -> Path:
        data.mkdir(parents=True, exist_ok=True)
        arrays = {
            "images": np.zeros((N, 8, 8), np.uint8) if images is None else images,
            **({} if labels is None else {"labels": labels}),
            **extra,
        }
        np.savez(data / "d.npz", **arrays)
        return data / "d.npz"

    return make


def raw_file(name: str, content: bytes):
    def make(data: Path) -> Path:
        data.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(content)
        return data / name

    return make


def list_csv(text: str, encoding: str = "utf-8"):
    def make(data: Path) -> Path:
        dataset(data / "ds")
        (data / "list.csv").write_bytes(text.encode(encoding))
        return data / "list.csv"

    return make


def non_utf8_name(data: Path) -> Path:
    dataset(data)
    src = data / "images" / "im00.png"
    os.rename(os.fsencode(src), os.fsencode(data / "images") + b"/caf\xe9.png")
    return data


def class_with_one_patient(data: Path) -> Path:
    dataset(data, labels=["0", "1"] * 5 + ["2", "0"])
    return data


def class_with_one_patient_two_images(data: Path) -> Path:
    dataset(data, labels=["0", "1"] * 5 + ["2", "2"])
    meta = (data / "metadata.csv").read_text().replace("im11.png,p11", "im11.png,p10")
    (data / "metadata.csv").write_text(meta)
    return data


def split_without_class(data: Path) -> Path:
    """Class 2 has 2 patients: both stay in the train pool, so the test split has none."""
    dataset(data, labels=["0", "1"] * 5 + ["2", "2"])
    return data


def rmtree_images(data: Path) -> Path:
    dataset(data)
    for p in (data / "images").iterdir():
        p.unlink()
    return data


def only_text_files(data: Path) -> Path:
    (data / "images").mkdir(parents=True)
    (data / "images" / "notes.txt").write_text("hello")
    return data


LATIN1_LABELS = "filename,label\n" + "".join(
    f"im{i:02d}.png,{'Pneumonie' if i % 2 else 'Normalité'}\n" for i in range(N)
)
GOOD_LABELS = "filename,label\n" + "".join(f"im{i:02d}.png,{i % 2}\n" for i in range(N))
METADATA = "filename,{col}\n" + "".join(f"im{i:02d}.png,p{i:02d}\n" for i in range(N))

# (id, make(data) -> data root, extra main flags, regex the one stderr line must match)
DATA_CASES = [
    # CSV files as people write them.
    ("labels Latin-1", with_file("labels.csv", LATIN1_LABELS.encode("latin-1")), [],
     r"labels\.csv line 2: not UTF-8 \(byte 0xe9\); it looks like Latin-1"),
    ("metadata Latin-1", with_file("metadata.csv", "filename,patient_id\nim00.png,Müller\n".encode("latin-1")), [],
     r"metadata\.csv line 2: not UTF-8"),
    ("labels UTF-16 without BOM", with_file("labels.csv", GOOD_LABELS.encode("utf-16-le")), [],
     r"labels\.csv line 1: NUL bytes: it looks like UTF-16 without a byte-order mark"),
    ("labels.csv is a folder", with_file("labels.csv", lambda p: p.unlink() or p.mkdir()), [],
     r"labels\.csv is a folder, not a CSV file"),
    ("labels.csv empty", with_file("labels.csv", b""), [], r"labels\.csv is empty"),
    ("labels.csv blank lines only", with_file("labels.csv", "\n \n\n"), [], r"labels\.csv is empty"),
    ("labels.csv header only", with_file("labels.csv", "filename,label\n"), [],
     r"labels\.csv has a header but no rows"),
    ("labels.csv pipe-delimited", with_file("labels.csv", GOOD_LABELS.replace(",", "|")), [],
     r"labels\.csv: missing column\(s\) \['filename'\].*Separate columns with commas"),
    ("labels.csv without label column", with_file("labels.csv", "filename,class\nim00.png,0\n"), [],
     r"labels\.csv: missing column\(s\) \['label'\]"),
    ("labels.csv is a PNG", with_file("labels.csv", lambda p: shutil.copy(p.parent / "images" / "im00.png", p)), [],
     r"labels\.csv line 1: not UTF-8"),
    ("metadata.csv header only", with_file("metadata.csv", "filename,patient_id\n"), [],
     r"metadata\.csv has a header but no rows"),
    ("metadata.csv without filename", with_file("metadata.csv", "file,patient_id\na,b\n"), [],
     r"metadata\.csv: missing column\(s\) \['filename'\]"),
    ("metadata.csv is a folder", with_file("metadata.csv", lambda p: p.unlink() or p.mkdir()), [],
     r"metadata\.csv is a folder"),
    # Labels.
    ("empty label cell", with_file("labels.csv", GOOD_LABELS.replace("im03.png,1", "im03.png,")), [],
     r"labels\.csv line 5: label '' is not a class id"),
    ("negative label", with_file("labels.csv", GOOD_LABELS.replace("im03.png,1", "im03.png,-2")), [],
     r"labels\.csv line 5: label '-2' is not a class id"),
    ("fractional label", with_file("labels.csv", GOOD_LABELS.replace("im03.png,1", "im03.png,0.7")), [],
     r"labels\.csv line 5: label '0\.7' is not an integer class id"),
    ("NaN label", with_file("labels.csv", GOOD_LABELS.replace("im03.png,1", "im03.png,nan")), [],
     r"labels\.csv line 5: label 'nan' is not an integer class id"),
    ("float-formatted label", with_file("labels.csv", GOOD_LABELS.replace("im03.png,1", "im03.png,1.0")), [],
     r"labels\.csv line 5: label '1\.0' is not an integer class id"),
    ("ids and names mixed", lambda d: dataset(d, labels=["0", "1"] * 5 + ["NORMAL", "PNEUMONIA"]), [],
     r"labels\.csv: labels mix class ids and names \(line 2: '0', line 12: 'NORMAL'\)"),
    ("ids with a gap", lambda d: dataset(d, labels=["0", "2"] * 6), [],
     r"labels\.csv: class ids \[0, 2\] skip \[1\]"),
    ("names differing in case", lambda d: dataset(d, labels=names()[:10] + ["Normal", "Normal"]), [],
     r"labels\.csv: class names 'NORMAL' \(5 image\(s\)\) and 'Normal' \(2 image\(s\)\) look like"),
    ("names one letter apart", lambda d: dataset(d, labels=names()[:10] + ["PNEUMONA", "PNEUMONA"]), [],
     r"labels\.csv: class names 'PNEUMONA' \(2 image\(s\)\) and 'PNEUMONIA' \(5 image\(s\)\)"),
    ("class with one patient", class_with_one_patient, [],
     r"class\(es\) \['2'\] have fewer than 2 patients \(patients per class: 0: 6, 1: 5, 2: 1\)"),
    ("class of one patient, two images", class_with_one_patient_two_images, [],
     r"class\(es\) \['2'\] have fewer than 2 patients"),
    ("test split without a class", split_without_class, [],
     r"data: the val split has no image of class\(es\) \['2'\] \(images per class: \{'0': 1, '1': 1, '2': 0\}\)"),
    ("label not in class_names", lambda d: dataset(d, labels=names()), ["--config.data.class_names=NORMAL,COVID"],
     r"labels\.csv line 2: label 'PNEUMONIA' is not in config\.data\.class_names"),
    ("labels.csv names a missing file", with_file("labels.csv", GOOD_LABELS + "gone.png,1\n"), [],
     r"labels\.csv line 14: file 'gone\.png' is not in"),
    ("labels.csv duplicate rows", with_file("labels.csv", GOOD_LABELS + "im00.png,0\n"), [],
     r"labels\.csv lines 2 and 14: 'im00\.png' is listed twice"),
    ("multi-label value not 0/1", with_file("labels.csv", "filename,a,b\nim00.png,1,2\n"), [],
     r"labels\.csv line 2: multi-label columns \['a', 'b'\] must be 0 or 1"),
    # Patients.
    ("PatientID column", with_file("metadata.csv", METADATA.format(col="PatientID")), [],
     r"metadata\.csv: column 'PatientID' looks like a patient id but is not named 'patient_id'"),
    ("subject_id column", with_file("metadata.csv", METADATA.format(col="subject_id")), [],
     r"metadata\.csv: column 'subject_id' looks like a patient id"),
    ("'Patient ID' column", with_file("metadata.csv", METADATA.format(col="Patient ID")), [],
     r"metadata\.csv: column 'Patient ID' looks like a patient id"),
    ("one image, two patient ids", with_file("metadata.csv", METADATA.format(col="patient_id") + "im00.png,p99\n"), [],
     r"metadata\.csv lines 2 and 14: 'im00\.png' has patient ids 'p00' and 'p99'; keep one row"),
    # Images.
    ("truncated PNG", with_file("images/im03.png", big_png), [],
     r"cannot read image .*images/im03\.png: .*Remove or replace the file"),
    ("zero-byte PNG", with_file("images/im03.png", b""), [], r"cannot read image .*images/im03\.png"),
    ("text named .png", with_file("images/im03.png", b"hello" * 50), [],
     r"cannot read image .*images/im03\.png"),
    ("decompression bomb", with_file("images/huge.png", png_bomb), [],
     r"image .*images/huge\.png is too large to read safely"),
    ("non-UTF-8 file name", non_utf8_name, [],
     r"images: file name b'caf\\xe9\.png' is not valid UTF-8; rename it"),
    ("no images left", rmtree_images, [], r"no images \(.png.*\) in .*images"),
    ("only non-image files", only_text_files, [], r"no images .* in .*images"),
    ("data root missing", lambda d: d / "nope", [], r"data folder .*nope does not exist \(config\.data\.root"),
    # .npz.
    ("npz NaN label", npz(labels=np.array([0, 1] * 5 + [np.nan, 1])), [],
     r"d\.npz: 'labels' row 10 is nan; labels must be integer ids"),
    ("npz fractional label", npz(labels=np.array([0, 1] * 5 + [0.7, 1])), [],
     r"d\.npz: 'labels' row 10 is 0\.7, not an integer class id"),
    ("npz negative label", npz(labels=np.array([0, 1] * 5 + [-3, 1])), [],
     r"d\.npz: 'labels' row 10 is -3; labels are ids >= 0, or -1"),
    ("npz ids with a gap", npz(labels=np.array([0, 2] * 6)), [], r"d\.npz: class ids \[0, 2\] skip \[1\]"),
    ("npz string labels", npz(labels=np.array(["a", "b"] * 6)), [], r"d\.npz: 'labels' has dtype <U1"),
    ("npz float images", npz(labels=np.arange(N) % 2, images=np.zeros((N, 8, 8), np.float32)), [],
     r"d\.npz: 'images' must be a non-empty uint8 array"),
    ("npz without images", lambda d: npz(labels=np.arange(N) % 2)(d) and _drop_images(d), [],
     r"d\.npz: no 'images' array \(found \['labels'\]\)"),
    ("npz labels of wrong length", npz(labels=np.arange(3)), [], r"d\.npz: 'labels' shape \(3,\) != \(12,\)"),
    ("npz with pickled objects", npz(labels=np.arange(N) % 2, images=np.array([{}] * N, object)), [],
     r"cannot read .*d\.npz: Object arrays cannot be loaded"),
    ("npz that is not a zip", raw_file("d.npz", b"not a zip file" * 10), [], r"cannot read .*d\.npz"),
    # A CSV of paths.
    ("list.csv names a missing file", list_csv("path,label\nds/images/im00.png,0\nds/images/nope.png,1\n"), [],
     r"list\.csv line 3: file 'ds/images/nope\.png' does not exist"),
    ("list.csv blank path", list_csv("path,label\nds/images/im00.png,0\n,1\n"), [],
     r"list\.csv line 3: file '' does not exist"),
    ("list.csv without path column", list_csv("file,label\nds/images/im00.png,0\n"), [],
     r"list\.csv: no 'path' column \(found \['file', 'label'\]\)"),
    ("list.csv in Latin-1", list_csv("path,label\nds/images/im00.png,Normalité\n", "latin-1"), [],
     r"list\.csv line 2: not UTF-8"),
    ("list.csv PatientID column", list_csv("path,label,PatientID\nds/images/im00.png,0,p\n"), [],
     r"list\.csv: column 'PatientID' looks like a patient id"),
]  # fmt: skip


def _drop_images(data: Path) -> Path:
    with np.load(data / "d.npz") as f:
        labels = f["labels"]
    np.savez(data / "d.npz", labels=labels)
    return data / "d.npz"


# (id, extra main flags, regex)
CONFIG_CASES = [
    ("batch_size 0", ["--config.batch_size=0"], r"config\.batch_size=0 must be > 0"),
    ("batch_size negative", ["--config.batch_size=-3"], r"config\.batch_size=-3 must be > 0"),
    ("total_steps negative", ["--config.total_steps=-5"], r"config\.total_steps=-5 must be > 0"),
    ("image_size 0", ["--config.aug.image_size=0"], r"config\.aug\.image_size=0 must be > 0"),
    ("keep_ckpts 0", ["--config.keep_ckpts=0"], r"config\.keep_ckpts=0 must be > 0"),
    ("keep_ckpts negative", ["--config.keep_ckpts=-1"], r"config\.keep_ckpts=-1 must be > 0"),
    ("eval batch 0", ["--config.eval.batch_size=0"], r"config\.eval\.batch_size=0 must be > 0"),
    ("label_fraction 0", ["--config.label_fraction=0"], r"config\.label_fraction=0\.0 is not in \(0, 1\]"),
    ("label_fraction 1.5", ["--config.label_fraction=1.5"], r"config\.label_fraction=1\.5 is not in \(0, 1\]"),
    ("label_fraction nan", ["--config.label_fraction=nan"], r"config\.label_fraction=nan must be a finite"),
    ("val_fraction 1.2", ["--config.data.val_fraction=1.2"], r"config\.data\.val_fraction=1\.2 must be in \[0, 1\)"),
    ("val+test >= 1", ["--config.data.val_fraction=0.5", "--config.data.test_fraction=0.5"],
     r"config\.data\.val_fraction \+ config\.data\.test_fraction = 1\.0 leaves nothing"),
    ("base_lr negative", ["--config.optim.base_lr=-0.1"], r"config\.optim\.base_lr=-0\.1 must be > 0"),
    ("class_names repeated", ["--config.data.class_names=a,a"], r"config\.data\.class_names=\['a', 'a'\]: names must be distinct"),
    ("config key typo", ["--config.batch_sise=4"], r"bad config or flag: .*batch_sise"),
    ("wrong type", ["--config.batch_size=abc"], r"bad config or flag: .*--config\.batch_size=abc"),
]  # fmt: skip

# (id, --config value, regex)
CONFIG_FILE_CASES = [
    ("README.md as config", "README.md", r"--config=README\.md is not a Python config file \(line \d+\)"),
    ("config without get_config", "{tmp}/noget.py", r"--config=.*noget\.py defines no get_config\(\)"),
    ("missing config file", "configs/nope.py", r"bad config file.*configs/nope\.py"),
    ("unknown variant", "configs/supervised_chest.py:lcoal", r"unknown config argument 'lcoal'"),
    ("dataset variant without data.root", "configs/supervised_seg_ph2.py:ph2",
     r"config\.data\.root is not set: .*--config\.data\.root=/path/to/ph2_dermoscopy"),
]  # fmt: skip


# ---- Running the commands in-process -------------------------------------------------------------


def _capture(fn, argv0: str, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    saved = sys.argv
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            sys.argv = [argv0, *argv]  # config_flags reads its overrides from sys.argv.
            fn(sys.argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """`python -m s4mi_jax.main ARGV` in this process: its parser, then its main."""

    def reset():  # A fresh process: no `--config.*` override flags from the previous run.
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()

    def go(full):
        reset()
        main_module.main(parse_flags(full))

    try:
        return _capture(go, "s4mi_jax.main", argv)
    finally:  # Back to the test session's flags (parsed, all at their defaults).
        reset()
        flags.FLAGS.mark_as_parsed()


def _own_flags(define) -> flags.FlagValues:
    values = flags.FlagValues()
    define(values)
    return values


def run_inspect(argv: list[str]) -> tuple[int, str, str]:
    values = _own_flags(inspect_data.define_flags)
    return _capture(lambda full: inspect_data.main(values(full), values), "inspect_data", argv)


def run_predict(argv: list[str]) -> tuple[int, str, str]:
    values = _own_flags(predict.define_flags)
    return _capture(lambda full: predict.main(values(full), values), "predict", argv)


def tree_digest(path: Path) -> dict[str, str]:
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        os.fsdecode(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def assert_one_line_error(code: int, err: str, pattern: str, prefix: str = "s4mi_jax") -> None:
    lines = err.strip("\n").split("\n")
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"{prefix}: error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(pattern, lines[0]), (pattern, lines[0])


# ---- The catalogue ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, make, extra, pattern", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data(tmp_path, name, make, extra, pattern):
    root = make(tmp_path / "data")
    before = tree_digest(tmp_path / "data")
    workdir = tmp_path / "run"
    code, _, err = run_main(
        [
            SUP,
            f"--config.data.root={root}",
            f"--workdir={workdir}",
            "--config.data.verify=True",
            *extra,
        ]
    )
    assert_one_line_error(code, err, pattern)
    assert tree_digest(tmp_path / "data") == before, "the data folder was modified"
    assert not workdir.exists(), "a workdir was written although the data were refused"


@pytest.mark.parametrize("name, extra, pattern", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value(tmp_path, name, extra, pattern):
    data = dataset(tmp_path / "data")
    before = tree_digest(data)
    code, _, err = run_main(
        [SUP, f"--config.data.root={data}", f"--workdir={tmp_path}/run", *extra]
    )
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "run").exists() and tree_digest(data) == before


@pytest.mark.parametrize(
    "name, config, pattern", CONFIG_FILE_CASES, ids=[c[0] for c in CONFIG_FILE_CASES]
)
def test_bad_config_file(tmp_path, name, config, pattern):
    (tmp_path / "noget.py").write_text("import ml_collections\n\nCONFIG = 1\n")
    code, _, err = run_main(
        [f"--config={config.format(tmp=tmp_path)}", f"--workdir={tmp_path}/run"]
    )
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "run").exists()


# ---- Workdirs with a previous run --------------------------------------------------------------------


def _config(argv_overrides: dict):
    """The config `SUP` with `--config.KEY=VALUE` overrides, as main builds it."""
    return override(common.classification_config("supervised", "local"), **argv_overrides)


def _previous_run(tmp_path, data: Path, **overrides):
    """A workdir as a run of `SUP` on `data` leaves it: config.json, data fingerprint, a checkpoint."""
    from s4mi_jax.data.sources import open_from_config

    workdir = tmp_path / "run"
    config = _config({"data.root": str(data), **overrides})
    prepare_workdir(str(workdir), config, data={"dataset": open_from_config(config.data)})
    ckpt = Checkpointer(str(workdir / "checkpoints"), async_save=False)
    ckpt.save(2, {"w": np.arange(5.0)}, None)
    ckpt.close()
    return workdir


def test_resume_with_changed_data_is_refused(tmp_path):
    data = dataset(tmp_path / "data")
    workdir = _previous_run(tmp_path, data)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "images" / "new.png")
    before, run_before = tree_digest(data), tree_digest(workdir)
    code, _, err = run_main([SUP, f"--config.data.root={data}", f"--workdir={workdir}"])
    assert_one_line_error(
        code, err, rf"{workdir} was trained on other data: {data} now has 13 records .* recorded 12"
    )
    assert tree_digest(data) == before and tree_digest(workdir) == run_before


def test_damaged_config_json_is_named(tmp_path):
    data = dataset(tmp_path / "data")
    workdir = _previous_run(tmp_path, data)
    config_json = workdir / "config.json"
    config_json.write_text(config_json.read_text()[:50])
    run_before = tree_digest(workdir)
    code, _, err = run_main([SUP, f"--config.data.root={data}", f"--workdir={workdir}"])
    assert_one_line_error(
        code, err, rf"cannot read {config_json}: .*The run's config record is damaged"
    )
    assert tree_digest(workdir) == run_before


def test_workdir_of_another_config_keeps_its_checkpoint(tmp_path):
    data = dataset(tmp_path / "data")
    workdir = _previous_run(tmp_path, data)
    run_before = tree_digest(workdir)
    code, _, err = run_main(
        [SUP, f"--config.data.root={data}", f"--workdir={workdir}", "--config.optim.base_lr=0.5"]
    )
    assert_one_line_error(
        code, err, r"holds a run of another config \(optim\.base_lr: 0\.001 -> 0\.5\)"
    )
    assert tree_digest(workdir) == run_before


def test_workdir_that_is_a_file(tmp_path):
    data = dataset(tmp_path / "data")
    (tmp_path / "run").write_text("not a folder")
    code, _, err = run_main([SUP, f"--config.data.root={data}", f"--workdir={tmp_path}/run"])
    assert_one_line_error(code, err, rf"cannot write to workdir {tmp_path}/run")
    assert (tmp_path / "run").read_text() == "not a folder"


# ---- predict -------------------------------------------------------------------------------------


def _predict_workdir(tmp_path, config=None, meta: bytes | None = None) -> Path:
    workdir = tmp_path / "run"
    prepare_workdir(str(workdir), config or _config({}))
    if meta is not None:
        (workdir / "checkpoints" / "2" / "meta").mkdir(parents=True)
        (workdir / "checkpoints" / "2" / "meta" / "metadata").write_bytes(meta)
    return workdir


def _images(tmp_path) -> Path:
    return dataset(tmp_path / "new") / "images"


PREDICT_CASES = [
    ("batch_size negative", ["--batch_size=-4"], None, r"--batch_size=-4 must be > 0"),
    ("batch_size 0", ["--batch_size=0"], None, r"--batch_size=0 must be > 0"),
    ("checkpoint not a step", ["--checkpoint=newest"], None,
     r"--checkpoint='newest': expected best, latest or a step number"),
    ("checkpoint step missing", ["--checkpoint=7"], b"{}", r"--checkpoint=7: no such step in"),
    ("no checkpoint", [], None, r"--workdir=.*run: no checkpoint in .*checkpoints"),
    ("damaged checkpoint meta", [], b'{"class_na', r"no checkpoint restores: .*checkpoints/2 \(cannot read its metadata .*checkpoints/2/meta/metadata"),
    ("checkpoint without meta", [], b"{}", r"checkpoints/2: the checkpoint does not record its classes"),
    ("network on a classifier", ["--network=cnn"], None, r"--network=cnn: a classifier has one network"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, extra, meta, pattern", PREDICT_CASES, ids=[c[0] for c in PREDICT_CASES]
)
def test_bad_predict_flags(tmp_path, name, extra, meta, pattern):
    workdir = _predict_workdir(tmp_path, meta=meta)
    images = _images(tmp_path)
    before, run_before = tree_digest(images.parent), tree_digest(workdir)
    code, _, err = run_predict(
        [f"--workdir={workdir}", f"--input={images}", f"--output={tmp_path}/out", *extra]
    )
    assert_one_line_error(code, err, pattern, prefix="predict")
    assert tree_digest(images.parent) == before and tree_digest(workdir) == run_before


def test_predict_damaged_config_json(tmp_path):
    workdir = _predict_workdir(tmp_path)
    (workdir / "config.json").write_bytes(b"\xff\xfe{")
    code, _, err = run_predict(
        [f"--workdir={workdir}", f"--input={_images(tmp_path)}", "--output=o"]
    )
    assert_one_line_error(code, err, rf"cannot read {workdir}/config\.json", prefix="predict")


def test_predict_refuses_non_runs_and_pretraining(tmp_path):
    images = _images(tmp_path)
    code, _, err = run_predict([f"--workdir={tmp_path}", f"--input={images}", "--output=o"])
    assert_one_line_error(code, err, r"no config\.json; not a run folder", prefix="predict")
    workdir = _predict_workdir(tmp_path, config=simclr_chest.get_config("local"))
    code, _, err = run_predict([f"--workdir={workdir}", f"--input={images}", "--output=o"])
    assert_one_line_error(
        code, err, r"predict does not support config\.trainer='simclr'", prefix="predict"
    )
    workdir2 = _predict_workdir(tmp_path / "b")
    code, _, err = run_predict([f"--workdir={workdir2}", f"--input={tmp_path}/nope", "--output=o"])
    assert_one_line_error(
        code, err, r"--input: .*nope is neither a folder nor a file", prefix="predict"
    )


def test_inspect_data_without_a_dataset(tmp_path):
    code, _, err = run_inspect([f"--data_dir={tmp_path}/nope"])
    assert_one_line_error(
        code, err, r"nope is neither a folder nor a \.csv file", prefix="inspect_data"
    )


# ---- inspect_data and main agree ---------------------------------------------------------------------


def _inspect_flags(extra: list[str]) -> dict:
    out = {}
    for arg in extra:
        if arg.startswith("--config.data.class_names="):
            out["class_names"] = arg.split("=", 1)[1]
    return out


@pytest.mark.parametrize("name, make, extra, pattern", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_inspect_data_refuses_what_main_refuses(tmp_path, name, make, extra, pattern):
    """Every data case main refuses (test_bad_data) is NOT USABLE for the inspector's command too, with
    its one summary line on stderr naming a file; the data are left as they were."""
    root = make(tmp_path / "data")
    before = tree_digest(tmp_path / "data")
    argv = [f"--data_dir={root}"]
    if "class_names" in _inspect_flags(extra):
        argv.append(f"--class_names={_inspect_flags(extra)['class_names']}")
    code, out, err = run_inspect(argv)
    assert code in (1, 2), out
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("inspect_data: error: "), err
    assert "Traceback" not in err + out
    assert tree_digest(tmp_path / "data") == before


ACCEPTED = [
    ("labels with UTF-8 BOM", with_file("labels.csv", codecs.BOM_UTF8 + GOOD_LABELS.encode())),
    ("metadata with UTF-8 BOM", with_file("metadata.csv", codecs.BOM_UTF8 + METADATA.format(col="patient_id").encode())),
    ("labels in UTF-16 with BOM", with_file("labels.csv", GOOD_LABELS.encode("utf-16"))),
    ("labels with semicolons", with_file("labels.csv", GOOD_LABELS.replace(",", ";"))),
    ("labels with tabs and CRLF", with_file("labels.csv", GOOD_LABELS.replace(",", "\t").replace("\n", "\r\n"))),
    ("blank patient ids", with_file("metadata.csv", METADATA.format(col="patient_id").replace(",p03", ",").replace(",p04", ","))),
    ("class names", lambda d: dataset(d, labels=names())),
    ("16-bit big-endian TIFF", with_file("images/im03.png", lambda p: _tiff16_in(p, ">u2"))),
    ("16-bit little-endian TIFF", with_file("images/im03.png", lambda p: _tiff16_in(p, "<u2"))),
    ("npz", npz(labels=np.arange(N) % 2)),
    ("npz with -1 unlabeled", npz(labels=np.array([0, 1] * 5 + [-1, -1]))),
]  # fmt: skip


def _tiff16(path: Path, dtype: str) -> np.ndarray:
    """A 16-bit grayscale TIFF in the given byte order; returns its pixel values."""
    array = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(dtype)
    mode = "I;16B" if dtype.startswith(">") else "I;16"
    Image.frombytes(mode, (8, 8), array.tobytes()).save(path)
    return array


def _tiff16_in(png: Path, dtype: str) -> None:
    """Replaces one image of the dataset by a 16-bit TIFF (and renames it in the CSVs)."""
    png.unlink()
    _tiff16(png.with_suffix(".tif"), dtype)
    data = png.parent.parent
    for name in ("labels.csv", "metadata.csv"):
        text = (data / name).read_text()
        (data / name).write_text(text.replace(png.name, png.with_suffix(".tif").name))


@pytest.mark.parametrize("name, make", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_inspect_data_accepts_what_main_accepts(tmp_path, name, make):
    """Files as people write them: the trainer's data path (`data.classification.load_splits`, what main runs
    before building the model) and the inspector both accept them, and read the same labels/patients."""
    from s4mi_jax.data import classification

    root = make(tmp_path / "data")
    config = _config({"data.root": str(root)})
    source, manifest, *_ = classification.load_splits(config)
    report = inspect_data.inspect(str(root))
    assert report.ok, [f.message for f in report.findings]
    assert report.summary["labeled"] == int((source.labels >= 0).sum())
    assert sorted(report.summary["classes"]) == sorted(
        source.class_names[i] for i in set(source.labels[source.labels >= 0].tolist())
    )
    if source.groups is not None:
        assert report.summary["patients"] == len(set(source.groups))
    assert source.channels == 1  # 16-bit grayscale stays one channel.


def test_blank_patient_ids_are_separate_patients_in_trainer_and_inspector(tmp_path):
    root = with_file(
        "metadata.csv",
        METADATA.format(col="patient_id").replace(",p03", ",").replace(",p04", ","),
    )(tmp_path / "data")
    from s4mi_jax.data.sources import open_source

    source = open_source(str(root))
    assert source.groups[3] == "im03.png" and source.groups[4] == "im04.png"
    assert len(set(source.groups)) == N
    assert "2 image(s) without a patient_id" in source.notes.items[0]
    report = inspect_data.inspect(str(root))
    assert report.summary["patients"] == N and report.kinds() == {"missing_patient"}


def test_16bit_images_of_either_byte_order_are_rescaled(tmp_path):
    """Big- and little-endian 16-bit TIFFs: one channel, min-max rescaled to 8 bit, same pixels."""
    from s4mi_jax.data.sources import read_image

    for dtype in (">u2", "<u2"):
        tif = tmp_path / f"x{dtype[0] == '>'}.tif"
        array = _tiff16(tif, dtype)
        image = read_image(tif, None)
        assert image.shape == (8, 8, 1)
        want = np.round(array.astype(np.float32) / array.max() * 255).astype(np.uint8)
        np.testing.assert_array_equal(image[..., 0], want)


def test_single_class_is_refused_for_classification_only(tmp_path):
    """One class: nothing to classify (main refuses), but fine to pretrain on (the inspector, which
    cannot know the trainer, warns `single_class`)."""
    root = dataset(tmp_path / "data", labels=["0"] * N)
    code, _, err = run_main([SUP, f"--config.data.root={root}", f"--workdir={tmp_path}/run"])
    assert_one_line_error(code, err, r"data: every labeled image is class '0'; a classifier needs")
    report = inspect_data.inspect(str(root))
    assert report.ok and report.kinds() == {"single_class"}
    assert "classification refuses" in report.findings[0].message


def test_home_relative_data_root(tmp_path, monkeypatch):
    dataset(tmp_path / "data")
    monkeypatch.setenv("HOME", str(tmp_path))
    from s4mi_jax.data.sources import open_source

    assert len(open_source("~/data")) == N


def test_accept_switch_lets_label_warnings_through(tmp_path):
    root = dataset(tmp_path / "data", labels=names()[:10] + ["Normal", "Normal"])
    config = _config({"data.root": str(root), "data.accept_label_warnings": True})
    from s4mi_jax.data import classification

    source, *_ = classification.load_splits(config)
    assert source.class_names == ["NORMAL", "Normal", "PNEUMONIA"]
    assert inspect_data.inspect(str(root), accept_label_warnings=True).ok
    assert not inspect_data.inspect(str(root)).ok


def test_class_names_fix_order_and_allow_empty_classes(tmp_path):
    root = dataset(tmp_path / "data", labels=names())
    config = _config({"data.root": str(root), "data.class_names": "PNEUMONIA,NORMAL,COVID"})
    source, manifest, *_ = manifests.open_and_split(config.data, fraction=1.0, seed=0)
    assert source.class_names == ["PNEUMONIA", "NORMAL", "COVID"]
    assert source.labels[:2].tolist() == [0, 1]  # im00 PNEUMONIA, im01 NORMAL


# ---- A few as real subprocesses: the in-process runs above are what `python -m` does ---------------


def _subprocess(module: str, *args: str):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def test_as_real_subprocesses(tmp_path):
    data = with_file("labels.csv", "filename,label\n")(tmp_path / "data")
    before = tree_digest(data)
    cases = [
        (("s4mi_jax.main", "--config=README.md"), "s4mi_jax", r"README\.md is not a Python config"),
        (
            ("s4mi_jax.main", SUP, f"--config.data.root={data}", f"--workdir={tmp_path}/run"),
            "s4mi_jax",
            r"labels\.csv has a header but no rows",
        ),
        (("s4mi_jax.inspect_data", f"--data_dir={data}"), "inspect_data", r"header but no rows"),
    ]
    for args, prefix, pattern in cases:
        proc = _subprocess(*args)
        code = 2 if proc.returncode == 1 and prefix == "inspect_data" else proc.returncode
        assert_one_line_error(code, proc.stderr, pattern, prefix=prefix)
    assert tree_digest(data) == before and not (tmp_path / "run").exists()


def test_catalogue_size():
    n = (
        len(DATA_CASES) + len(CONFIG_CASES) + len(CONFIG_FILE_CASES) + len(PREDICT_CASES)
        + 4 + 3 + 1 + 3  # workdir tests, predict extras, inspect without data, subprocesses
    )  # fmt: skip
    assert n >= 60, n
