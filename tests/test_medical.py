"""DICOM / NIfTI readers and the CSV-of-paths source, on files the tests write themselves."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from s4mi_jax.data import medical
from s4mi_jax.data.sources import CsvSource, FolderSource, open_source
from s4mi_jax.errors import DataError

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")


def write_dicom(path, pixels, photometric="MONOCHROME2", **tags):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.astype(np.uint8).tobytes()
    else:
        ds.SamplesPerPixel = 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = pixels.astype("<i2").tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(str(path), enforce_file_format=True)


def _voi(x, c, w):  # DICOM PS3.3 C.11.2.1.2, written out independently.
    out = np.where(
        x <= c - 0.5 - (w - 1) / 2,
        0.0,
        np.where(x > c - 0.5 + (w - 1) / 2, 255.0, ((x - (c - 0.5)) / (w - 1) + 0.5) * 255),
    )
    return np.round(out)


def test_dicom_rescale_window_photometric_and_spacing(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(-200, 1500, (6, 7))
    write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope="2", RescaleIntercept="-1024",
                WindowCenter="40", WindowWidth="400", PixelSpacing=[0.7, 0.8])  # fmt: skip
    image, spacing = medical.read_dicom(tmp_path / "ct.dcm")
    hu = stored * 2.0 - 1024
    assert image.shape == (6, 7, 1) and image.dtype == np.uint8 and spacing == (0.7, 0.8)
    np.testing.assert_array_equal(image[..., 0], _voi(hu, 40, 400))
    assert 0 < (image == 0).sum() < image.size  # Both clipped and in-window pixels present.
    bone, _ = medical.read_dicom(tmp_path / "ct.dcm", window=(400, 1800))  # Explicit window wins.
    np.testing.assert_array_equal(bone[..., 0], _voi(hu, 400, 1800))

    write_dicom(
        tmp_path / "cr.dcm", stored, photometric="MONOCHROME1", ImagerPixelSpacing=[0.1, 0.1]
    )
    inverted, spacing = medical.read_dicom(tmp_path / "cr.dcm")  # No window: min..max, inverted.
    assert spacing == (0.1, 0.1)
    assert inverted[..., 0][stored == stored.min()].min() == 255
    assert inverted[..., 0][stored == stored.max()].max() == 0

    rgb = rng.integers(0, 256, (4, 5, 3))
    write_dicom(tmp_path / "photo.dcm", rgb, photometric="RGB")
    colour, spacing = medical.read_dicom(tmp_path / "photo.dcm")
    np.testing.assert_array_equal(colour, rgb) and spacing is None

    # A folder of DICOM files is a dataset like any other, spacing kept per image.
    (tmp_path / "labels.csv").write_text("filename,label\nct.dcm,1\ncr.dcm,0\n")
    (tmp_path / "photo.dcm").unlink()
    src = FolderSource(tmp_path)
    assert [p.name for p in src.files] == ["cr.dcm", "ct.dcm"] and src.labels.tolist() == [0, 1]
    np.testing.assert_array_equal(src[1]["image"], image)
    assert src.spacing(1) == (0.7, 0.8)

    (tmp_path / "bad.dcm").write_bytes(b"not a dicom")
    with pytest.raises(DataError, match=r"cannot read DICOM .*bad\.dcm"):
        FolderSource(tmp_path)


def test_missing_reader_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(
        DataError, match=r"needs the optional package pydicom: pip install 's4mi_jax\[medical\]'"
    ):
        medical.read_dicom(tmp_path / "x.dcm")
    with pytest.raises(DataError, match=r"needs the optional package nibabel"):
        medical.read_nifti(tmp_path / "x.nii.gz")


def test_nifti_slices_with_masks_and_spacing(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    volumes = {}
    for name, depth in (("case_a", 3), ("case_b", 2)):
        vol = rng.normal(100, 30, (8, 6, depth))
        affine = np.diag([0.5, 0.6, 2.0, 1.0])
        nib.save(nib.Nifti1Image(vol, affine), tmp_path / "images" / f"{name}.nii.gz")
        volumes[name] = vol
    mask = np.zeros((8, 6, 3), np.uint8)
    mask[2:5, 1:4, 1] = 2
    nib.save(
        nib.Nifti1Image(mask, np.diag([0.5, 0.6, 2.0, 1.0])), tmp_path / "masks" / "case_a.nii.gz"
    )

    src = open_source(str(tmp_path))
    assert isinstance(src, medical.NiftiSource) and len(src) == 5 and src.channels == 1
    assert (
        src.keys[:2] == ["case_a:0000", "case_a:0001"]
        and src.groups == ["case_a"] * 3 + ["case_b"] * 2
    )
    assert src.spacing(0) == pytest.approx((0.5, 0.6))  # float32 in the header
    vol = volumes["case_a"]
    lo, hi = np.percentile(vol, [0.5, 99.5])
    expected = np.round(np.clip((vol[:, :, 1] - lo) / (hi - lo), 0, 1) * 255)
    np.testing.assert_allclose(
        src[1]["image"][..., 0], expected, atol=1.0
    )  # width hi-lo+1 vs hi-lo
    assert src[1]["image"].shape == (8, 6, 1)
    np.testing.assert_array_equal(src.mask(1), mask[:, :, 1])
    assert src.mask(3) is None  # case_b has no mask: unlabeled, no fake mask.
    assert (src.labels == -1).all()

    nib.save(nib.Nifti1Image(np.zeros((8, 5, 2)), np.eye(4)), tmp_path / "masks" / "case_b.nii.gz")
    with pytest.raises(DataError, match=r"case_b\.nii\.gz has shape \(8, 5, 2\) but its volume"):
        open_source(str(tmp_path))


def test_csv_of_paths(tmp_path):
    for sub, name, value in (("a", "x.png", 10), ("b", "x.png", 200), ("b", "y.png", 90)):
        (tmp_path / sub).mkdir(exist_ok=True)
        Image.fromarray(np.full((4, 4), value, np.uint8)).save(tmp_path / sub / name)
    (tmp_path / "data.csv").write_text(
        "path,label,patient_id\na/x.png,normal,p1\nb/x.png,pneumonia,p2\nb/y.png,,p2\n"
    )
    src = open_source(str(tmp_path / "data.csv"))
    assert isinstance(src, CsvSource)
    assert src.keys == ["a/x.png", "b/x.png", "b/y.png"]  # Same file name in two folders: distinct.
    assert src.labels.tolist() == [0, 1, -1] and src.class_names == ["normal", "pneumonia"]
    assert src.groups == ["p1", "p2", "p2"] and src[1]["image"][0, 0, 0] == 200

    (tmp_path / "bad.csv").write_text("path,label\na/x.png,0\nc/z.png,1\n")
    with pytest.raises(DataError, match=r"bad\.csv line 3: file 'c/z.png' does not exist"):
        open_source(str(tmp_path / "bad.csv"))
