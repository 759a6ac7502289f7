"""The dataset inspector: a clean dataset passes with a correct summary; each defect it claims to catch
is planted alone in an otherwise clean dataset and must be reported (and only it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s4mi_jax.errors import DataError
from s4mi_jax.inspect_data import ERROR, WARNING, format_report, inspect

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def make_dataset(root: Path) -> Path:
    """4 grayscale images (two sizes), 3 labeled (2 classes), 2 binary masks (one empty), patients."""
    for k, (name, size) in enumerate(
        (("a.png", (8, 8)), ("b.png", (8, 8)), ("c.png", (6, 10)), ("d.png", (8, 8)))
    ):
        _png(root / "images" / name, np.full(size, 40 * k + 10, np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    _png(root / "masks" / "a.png", mask)
    _png(root / "masks" / "b.png", np.zeros((8, 8), np.uint8))
    (root / "labels.csv").write_text("filename,label\na.png,0\nb.png,1\nc.png,1\n")
    (root / "metadata.csv").write_text(
        "filename,patient_id\na.png,p1\nb.png,p1\nc.png,p2\nd.png,p3\n"
    )
    return root


def test_clean_dataset_summary(tmp_path):
    report = inspect(str(make_dataset(tmp_path)), masks=True)
    assert report.findings == [] and report.ok
    assert report.summary == {
        "images": 4,
        "readable": 4,
        "labeled": 3,
        "unlabeled": 1,
        "classes": {"0": 1, "1": 2},
        "sizes": {(8, 8): 3, (10, 6): 1},
        "channels": {1: 4},
        "masks": 2,
        "empty_masks": 1,
        "mask_values": [0, 1],
        "patients": 3,
    }
    text = format_report(report)
    assert "most common 8x8 (3)" in text and "OK: usable for training." in text


def _truncate(root):
    data = (root / "images" / "b.png").read_bytes()
    (root / "images" / "b.png").write_bytes(data[: len(data) // 2])


DEFECTS = {
    "corrupt_image": (ERROR, _truncate),
    "corrupt_image:zero_bytes": (ERROR, lambda r: (r / "images" / "d.png").write_bytes(b"")),
    "no_images": (ERROR, lambda r: [p.unlink() for p in (r / "images").iterdir()]),
    "label_unknown_file": (ERROR, lambda r: _append(r / "labels.csv", "gone.png,1\n")),
    "label_duplicate": (ERROR, lambda r: _append(r / "labels.csv", "a.png,0\n")),
    "label_bad_value": (ERROR, lambda r: _append(r / "labels.csv", "d.png,-1\n")),
    "label_missing_column": (ERROR, lambda r: (r / "labels.csv").write_text("file,class\na.png,0\n")),
    "single_class": (WARNING, lambda r: (r / "labels.csv").write_text("filename,label\na.png,1\n")),
    "mixed_channels": (WARNING, lambda r: _png(r / "images" / "d.png", np.zeros((8, 8, 3), np.uint8))),
    "mask_size": (ERROR, lambda r: _png(r / "masks" / "b.png", np.zeros((4, 4), np.uint8))),
    "mask_values": (ERROR, lambda r: _png(r / "masks" / "b.png", np.array([[0, 128], [255, 0]], np.uint8).repeat(4, 0).repeat(4, 1))),
    "mask_channels": (ERROR, lambda r: _png(r / "masks" / "b.png", np.zeros((8, 8, 3), np.uint8))),
    "mask_corrupt": (ERROR, lambda r: (r / "masks" / "b.png").write_bytes(b"\x89PNG broken")),
    "mask_orphan": (ERROR, lambda r: _png(r / "masks" / "zzz.png", np.zeros((8, 8), np.uint8))),
    "no_masks": (ERROR, lambda r: [p.unlink() for p in (r / "masks").iterdir()]),
    "duplicate_stem": (WARNING, lambda r: (_png(r / "images" / "a.jpg", np.zeros((8, 8), np.uint8)), _append(r / "metadata.csv", "a.jpg,p1\n"))),
    "missing_patient": (WARNING, lambda r: (r / "metadata.csv").write_text("filename,patient_id\na.png,p1\n")),
}  # fmt: skip


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_defect_is_caught(tmp_path, defect):
    severity, plant = DEFECTS[defect]
    root = make_dataset(tmp_path)
    plant(root)
    report = inspect(str(root), masks=True)
    kind = defect.split(":")[0]
    assert report.kinds() == {kind}, [f.message for f in report.findings]
    assert report.kinds(severity) == {kind}
    assert report.ok == (severity == WARNING)
    assert f"[{kind}]" in format_report(report)


def test_csv_of_paths_and_cli(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (tmp_path / "list.csv").write_text(
        "path,label,mask\nds/images/a.png,0,ds/masks/a.png\nds/images/c.png,1,\nds/images/d.png,,\nds/images/nope.png,1,\n"
    )
    report = inspect(str(tmp_path / "list.csv"))
    assert report.kinds() == {"label_unknown_file"}  # nope.png is listed but missing.
    assert report.summary["images"] == 3 and report.summary["labeled"] == 2
    assert report.summary["masks"] == 1
    with pytest.raises(DataError, match="neither a folder nor a .csv"):
        inspect(str(tmp_path / "missing"))

    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "s4mi_jax.inspect_data", *a],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    ok = run(f"--data_dir={root}", "--masks")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.startswith(f"dataset: {root}\nimages: 4 (4 readable)")
    _truncate(root)
    bad = run(f"--data_dir={root}")
    assert bad.returncode == 1 and "[corrupt_image] cannot read image" in bad.stdout
    assert "NOT USABLE" in bad.stdout


def test_masks_the_trainer_refuses_are_not_called_usable(tmp_path):
    """An interpolated mask (values 0..244) or class ids above the configs' data.num_classes=2: the
    segmentation trainer refuses both, so the inspector must too (and `num_classes` mirrors the key)."""
    root = make_dataset(tmp_path)
    ramp = np.linspace(0, 244, 64).astype(np.uint8).reshape(8, 8)
    _png(root / "masks" / "a.png", ramp)
    report = inspect(str(root), masks=True)
    assert not report.ok and "holds class 244" in " ".join(f.message for f in report.findings)
    ids = np.zeros((8, 8), np.uint8)
    ids[:2], ids[2:4] = 1, 2
    _png(root / "masks" / "a.png", ids)
    refused = inspect(str(root), masks=True)
    assert not refused.ok and "config.data.num_classes=2" in refused.findings[-1].message
    assert inspect(str(root), masks=True, num_classes=3).ok
