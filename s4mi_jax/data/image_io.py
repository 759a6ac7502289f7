"""Decoding one image or mask file to a uint8 array, with a one-line error naming a bad file.

Every file is read as it is displayed: a camera or phone JPEG (or a TIFF) stores its pixels as the
sensor saw them and says in its EXIF Orientation tag how to turn them for display; `open_upright`
applies that turn once, for every reader (training, the inspector, masks, `s4mi_jax.predict`), so a
model never trains on, and a mask is never checked against, a transposed copy of what people see.

Its own module, below both `sources` (folders, CSV, .npz) and `tfds_builders` (which turns the same
files into TFDS records): each imports it, and neither imports the other at module level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from s4mi_jax.data import medical, validate
from s4mi_jax.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_ORIENTATION = 0x0112  # EXIF Orientation; 5..8 swap width and height.
_TRANSPOSING = (5, 6, 7, 8)


def open_upright(path: str | Path) -> Image.Image:
    """The decoded image at `path`, turned as its EXIF Orientation says (what a viewer shows).

    `validate.open_image_checked`'s size limit applies; the caller closes the image."""
    img = validate.open_image_checked(path)
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except BaseException:
        img.close()
        raise
    return img


def displayed_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the image at `path` as displayed (EXIF Orientation applied), without
    decoding its pixels: the size a mask of it must have."""
    if str(path).lower().endswith(medical.DICOM_EXTENSIONS):
        arr = read_image(path, None)
        return arr.shape[1], arr.shape[0]
    try:
        with validate.open_image_checked(path) as img:
            w, h = img.size
            # Pillow's TIFF reader turns a TIFF itself and already reports its upright size.
            if img.format != "TIFF" and img.getexif().get(_ORIENTATION) in _TRANSPOSING:
                w, h = h, w
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}. Remove or replace the file.") from None
    return w, h


def read_image(path: str | Path, channels: int | None) -> np.ndarray:
    """Decodes one image to uint8 (H, W, C); C = `channels` (1 or 3) or what the file holds."""
    if str(path).lower().endswith(medical.DICOM_EXTENSIONS):
        arr, _ = medical.read_dicom(path)
        if channels is not None and arr.shape[-1] != channels:
            arr = (
                arr.mean(-1, keepdims=True).round().astype(np.uint8)
                if channels == 1
                else (np.repeat(arr, channels, axis=-1))
            )
        return arr
    try:
        with open_upright(path) as img:
            # 16-bit (either byte order: I;16, I;16B, ...) / 32-bit / float grayscale.
            wide = img.mode.startswith(("I", "F"))
            if channels is None:
                channels = 1 if wide or img.mode in ("1", "L", "LA") else 3
            if wide:  # Rescale to 8 bit per image (min-max).
                arr = np.asarray(img).astype(np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
                img = Image.fromarray(arr.round().astype(np.uint8), "L")
            img = img.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(img, np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}. Remove or replace the file.") from None
    return arr[..., None] if arr.ndim == 2 else arr


def read_mask(path: str | Path, image_shape: tuple[int, ...], image_path: str | Path) -> np.ndarray:
    """A segmentation mask as uint8 class indices (H, W).

    Binary masks stored as 0/255 (the usual layout) become 0/1; masks whose maximum is below
    255 are taken as class indices. A mask with 255 and other non-zero values (e.g. softened by a resize)
    or of another size than its image is an error naming both files. Mask and `image_shape` are both
    as displayed (EXIF Orientation applied, `open_upright`), so they are compared as people see them.
    """
    try:
        with open_upright(path) as img:
            if img.mode not in ("L", "P", "1", "I", "I;16"):
                raise DataError(
                    f"mask {path}: mode {img.mode} with several channels; masks are single-channel."
                )
            mask = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read mask {path}: {e}. Remove or replace the file.") from None
    if mask.shape != tuple(image_shape[:2]):
        raise DataError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
            f"{image_shape[1]}x{image_shape[0]}; masks must have their image's size."
        )
    values = np.unique(mask)
    if values.max(initial=0) == 255:
        if not set(values.tolist()) <= {0, 255}:
            raise DataError(
                f"mask {path} has values {values[:8].tolist()}...: a binary mask must hold only 0 and "
                "255 (was it resized with interpolation? use nearest neighbour)."
            )
        return (mask == 255).astype(np.uint8)
    if values.max(initial=0) > 255:
        raise DataError(
            f"mask {path}: values up to {values.max()} do not fit class indices 0..254."
        )
    return mask.astype(np.uint8)
