"""EXIF orientation: a camera JPEG stores its pixels as the sensor saw them and says in its EXIF
Orientation tag how to turn them for display. Every reader (training, the inspector, segmentation
masks, predict) must see the image as it is shown, or a model trains on transposed pixels and a mask
drawn on the displayed image is refused as the wrong size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image, ImageOps

from s4mi_jax.data import image_io
from s4mi_jax.data import segmentation as segdata
from s4mi_jax.data.sources import FolderSource
from tests.helpers import HANG_GUARD_S, make_seg_folder

ROOT = Path(__file__).resolve().parents[1]
H, W = 24, 40  # Displayed (upright) size: non-square, so a transposed read shows in the shape.
ORIENTATION = 0x0112


def _upright() -> tuple[np.ndarray, np.ndarray]:
    """An upright RGB image (H, W, 3) with a bright disc off-centre, and the disc as a 0/255 mask.

    Smooth, large shapes: JPEG keeps them within a few grey levels."""
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - 8) ** 2 + (xx - 28) ** 2 <= 36
    image = np.full((H, W, 3), 40, np.uint8)
    image[disc] = (220, 200, 180)
    image[:, :4] = (40, 40, 200)  # A blue band on the left edge: tells left from right.
    return image, (disc * 255).astype(np.uint8)


def _rotated_jpeg(path: Path, upright: np.ndarray) -> None:
    """Saves `upright` as a phone does: pixels stored turned 90° counter-clockwise, with EXIF
    Orientation=6 ("rotate 90° clockwise to display")."""
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
    exif = stored.getexif()
    exif[ORIENTATION] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, quality=100, subsampling=0, exif=exif)


def test_reader_returns_the_displayed_orientation(tmp_path):
    upright, _ = _upright()
    path = tmp_path / "phone.jpg"
    _rotated_jpeg(path, upright)
    with Image.open(path) as img:
        assert img.size == (H, W)  # Stored sideways (W x H as PIL says it: 24 wide, 40 high).
        shown = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    got = image_io.read_image(path, 3)
    assert got.shape == (H, W, 3)
    np.testing.assert_array_equal(got, shown)  # Same decoder, same turn: identical.
    assert np.abs(got.astype(int) - upright).max() <= 12  # And it is the source, up to JPEG.
    gray = image_io.read_image(path, 1)
    assert gray.shape == (H, W, 1)
    assert image_io.displayed_size(path) == (W, H)
    # Grain/cache/predict read through the folder source: the same pixels.
    folder = tmp_path / "ds"
    (folder / "images").mkdir(parents=True)
    path.rename(folder / "images" / "phone.jpg")
    np.testing.assert_array_equal(FolderSource(folder, channels=3)[0]["image"], got)


def test_inspect_data_reports_the_displayed_size(tmp_path):
    upright, _ = _upright()
    _rotated_jpeg(tmp_path / "ds" / "images" / "phone.jpg", upright)
    proc = subprocess.run(
        [sys.executable, "-m", "s4mi_jax.inspect_data", f"--data_dir={tmp_path / 'ds'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert f"most common {W}x{H} (1)" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def _seg_cfg() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(channels=3, resize="resize", num_classes=2, class_names=None)
    )


def test_segmentation_accepts_a_rotated_jpeg_with_an_upright_mask(tmp_path):
    root = Path(make_seg_folder(tmp_path / "seg", n=3, size=H))
    upright, mask = _upright()
    _rotated_jpeg(root / "images" / "phone.jpg", upright)
    Image.fromarray(mask).save(root / "masks" / "phone.png")
    data = segdata.load_folder(root, _seg_cfg(), 32)  # Today: "mask ... is 40x24 but its image ..."
    i = data.keys.index("phone.jpg")
    assert data.has_mask[i]
    # The mask lies on the disc of the image, not on a transposed copy of it.
    bright = data.images[i].mean(-1)
    inside, outside = bright[data.masks[i] == 1], bright[data.masks[i] == 0]
    assert inside.mean() > 150 > outside.mean()
    # The mask alone (no image shape given) is checked against the displayed size too.
    folder = FolderSource(root, verify=False)
    np.testing.assert_array_equal(
        folder.mask([f.name for f in folder.files].index("phone.jpg")), mask // 255
    )
