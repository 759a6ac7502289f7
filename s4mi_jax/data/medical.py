"""DICOM and NIfTI readers (optional extras: `pip install 's4mi_jax[medical]'`) feeding the same pipeline.

Both produce what every source produces, uint8 (H, W, C) images, plus the physical pixel spacing in mm
(row, column) as metadata, so that distance metrics (HD95, ASD) can be reported in millimetres.

* **DICOM** (one 2-D image per file, pydicom): stored values -> modality values with RescaleSlope /
  RescaleIntercept (CT: Hounsfield units) -> a window (`window=(center, width)`, else the file's own
  WindowCenter/WindowWidth, else the image's min..max) with DICOM's linear VOI function (PS3.3
  C.11.2.1.2) -> 0..255; MONOCHROME1 (bright = low values) is inverted so bright always means dense;
  RGB / YBR photometric interpretations become RGB. Spacing: PixelSpacing, else ImagerPixelSpacing.
* **NIfTI** (volumes, nibabel): each volume is cut into 2-D slices along `axis` (default 2, axial for
  RAS-stored volumes); spacing is the voxel size of the two in-plane axes (header zooms). Intensities
  are windowed per volume (`window`, else the 0.5..99.5 percentiles, robust to a few hot voxels), so
  all slices of a volume share one mapping. Masks are volumes of integer class ids of the same shape.
  Slices of one volume share a group id, so splits never put one volume on both sides.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from s4mi_jax.errors import DataError

DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")


def _require(module: str, extension: str):
    try:
        return __import__(module)
    except ImportError:
        raise DataError(
            f"reading {extension} files needs the optional package {module}: "
            "pip install 's4mi_jax[medical]'"
        ) from None


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_EXTENSIONS)


def nifti_stem(path: str | Path) -> str:
    name = os.path.basename(str(path))
    return (
        name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else os.path.splitext(name)[0]
    )


def window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI LUT: values below c - w/2 -> 0, above c + w/2 -> 255."""
    width = max(float(width), 1.0)
    y = ((values - (center - 0.5)) / (width - 1.0) + 0.5).clip(0.0, 1.0)
    return np.round(y * 255.0).astype(np.uint8)


def _first(value) -> float:
    """WindowCenter/Width may hold several windows (MultiValue); the first is the default one."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def read_dicom(
    path: str | Path, window: tuple[float, float] | None = None
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """(uint8 (H, W, C) image, (row, column) spacing in mm or None) of a 2-D DICOM file."""
    pydicom = _require("pydicom", "DICOM (.dcm)")
    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types for a bad file.
        raise DataError(f"cannot read DICOM {path}: {e}. Remove or replace the file.") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    spacing = (float(spacing[0]), float(spacing[1])) if spacing else None
    if pixels.ndim == 3 and photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        raise DataError(
            f"DICOM {path}: {pixels.shape} is a multi-frame file; give one frame a file."
        )
    if photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        pixels = convert_color_space(pixels, photometric, "RGB")
        photometric = "RGB"
    if photometric == "RGB":
        return np.asarray(pixels, np.uint8), spacing
    values = pixels.astype(np.float64) * float(ds.get("RescaleSlope", 1.0) or 1.0)
    values += float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
    if window is None:
        lo, hi = float(values.min()), float(values.max())
        window = ((lo + hi) / 2 + 0.5, hi - lo + 1.0)  # Maps lo -> 0 and hi -> 255 exactly.
    image = window_to_uint8(values, *window)
    if photometric == "MONOCHROME1":
        image = 255 - image
    return image[..., None], spacing


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """(volume as float64 array, voxel sizes in mm) of a NIfTI file."""
    nib = _require("nibabel", "NIfTI (.nii/.nii.gz)")
    try:
        img = nib.load(str(path))
        volume = np.asarray(img.get_fdata(dtype=np.float64))
    except Exception as e:
        raise DataError(f"cannot read NIfTI {path}: {e}. Remove or replace the file.") from None
    if volume.ndim == 2:
        volume = volume[..., None]
    if volume.ndim != 3:
        raise DataError(f"NIfTI {path}: shape {volume.shape}; expected a 2-D image or 3-D volume.")
    return volume, tuple(float(z) for z in img.header.get_zooms()[:3])


class NiftiSource:
    """2-D slices of NIfTI volumes in `root/images/` (or `root/`), masks from `root/masks/<same name>`.

    Records are `{"image": uint8 (H, W, 1), "label": -1, "index"}`; `mask(i)` is the slice's class-id
    mask (or None: a volume without a mask file is unlabeled), `spacing(i)` its (row, col) mm.
    """

    def __init__(
        self, root: str | Path, *, axis: int = 2, window: tuple[float, float] | None = None
    ):
        root = Path(root)
        image_dir = root / "images" if (root / "images").is_dir() else root
        self.root = root
        self.volumes = sorted(p for p in image_dir.iterdir() if is_nifti(p))
        if not self.volumes:
            raise DataError(f"no NIfTI volumes (.nii, .nii.gz) in {image_dir}.")
        self.axis, self.window = axis, window
        mask_dir = root / "masks"
        masks = (
            {nifti_stem(p): p for p in mask_dir.iterdir() if is_nifti(p)}
            if mask_dir.is_dir()
            else {}
        )
        self.mask_files = [masks.get(nifti_stem(v)) for v in self.volumes]
        self._images, self._masks, self._spacing = [], [], []
        index = []
        for v, volume_path in enumerate(self.volumes):
            volume, zooms = read_nifti(volume_path)
            self._images.append(self._to_uint8(volume))
            in_plane = [a for a in range(3) if a != axis]
            self._spacing.append((zooms[in_plane[0]], zooms[in_plane[1]]))
            self._masks.append(self._read_mask(v, volume.shape))
            index += [(v, k) for k in range(volume.shape[axis])]
        self.index = index
        self.keys = [f"{nifti_stem(self.volumes[v])}:{k:04d}" for v, k in index]
        self.groups = [nifti_stem(self.volumes[v]) for v, _ in index]
        self.labels = np.full(len(index), -1, np.int32)
        self.class_names: list[str] = []
        self.channels = 1

    def _to_uint8(self, volume: np.ndarray) -> np.ndarray:
        if self.window is not None:
            return window_to_uint8(volume, *self.window)
        lo, hi = np.percentile(volume, [0.5, 99.5])
        return window_to_uint8(volume, (lo + hi) / 2 + 0.5, hi - lo + 1.0)

    def _read_mask(self, v: int, shape: tuple[int, ...]) -> np.ndarray | None:
        path = self.mask_files[v]
        if path is None:
            return None
        mask, _ = read_nifti(path)
        if mask.shape != shape:
            raise DataError(
                f"mask {path} has shape {mask.shape} but its volume {self.volumes[v]} {shape}."
            )
        if not np.array_equal(mask, np.round(mask)) or mask.min() < 0 or mask.max() > 254:
            raise DataError(f"mask {path}: values must be integer class ids 0..254.")
        return mask.astype(np.uint8)

    def _slice(self, array: np.ndarray, k: int) -> np.ndarray:
        return np.take(array, k, axis=self.axis)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        v, k = self.index[i]
        image = self._slice(self._images[v], k)[..., None]
        return {"image": image, "label": self.labels[i], "index": np.int32(i)}

    def mask(self, i: int, image_shape=None) -> np.ndarray | None:
        v, k = self.index[i]
        return None if self._masks[v] is None else self._slice(self._masks[v], k)

    def spacing(self, i: int) -> tuple[float, float]:
        return self._spacing[self.index[i][0]]
