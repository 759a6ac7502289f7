"""Loading the real datasets in ../shared/data (present in development and CI; not shipped)."""

import os
from pathlib import Path

import numpy as np
import pytest

from s4mi_jax.data import manifests
from s4mi_jax.data.sources import open_source, source_keys

SHARED = Path(
    os.environ.get(
        "S4MI_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
)
needs_shared = pytest.mark.skipif(
    not (SHARED / "chest_xray_pneumonia").is_dir(), reason=f"no shared datasets at {SHARED}"
)


@needs_shared
def test_full_chest_xray_folder():
    source = open_source(str(SHARED / "chest_xray_pneumonia"), verify=False)
    assert len(source) == 5216 and source.channels == 1
    assert np.bincount(source.labels).tolist() == [1341, 3875]
    assert len(set(source.groups)) < len(source)  # Several images per patient.
    m = manifests.make_manifest(
        source_keys(source), source.labels, source.groups, fraction=0.01, seed=0
    )
    patients = [{source.groups[i] for i in getattr(m, s)} for s in ("train", "val", "test")]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert 0.15 < len(m.test) / len(source) < 0.25 and 0.05 < len(m.val) / len(source) < 0.15
    assert 0.005 < len(m.train) / len(m.train_pool) < 0.03  # ~1% of the pool's patients.
    assert source[int(m.test[0])]["image"].shape == (128, 128, 1)


@needs_shared
def test_ph2_rgb_folder_with_masks_beside_images():
    source = open_source(str(SHARED / "ph2_dermoscopy"))
    assert len(source) == 140 and source.channels == 3
    assert (source.labels >= 0).all() and len(source.class_names) == 3
    assert source[0]["image"].shape[-1] == 3


@needs_shared
@pytest.mark.parametrize(
    "name", ["ph2_dermoscopy", "dsb2018_nuclei_stage1test", "covid_cxr_lung_segmentation"]
)
def test_segmentation_folders_read_binary_masks(name):
    source = open_source(str(SHARED / name), verify=False)
    assert source.mask_files is not None and all(m is not None for m in source.mask_files)
    for i in (0, len(source) - 1):
        image = source[i]["image"]
        mask = source.mask(i, image.shape)
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 1} and mask.any()
