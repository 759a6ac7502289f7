"""Loading the real datasets in ../shared/data (present in development and CI; not shipped)."""

import os
from pathlib import Path

import numpy as np
import pytest

from s4mi_jax.data import splits
from s4mi_jax.data.sources import open_source

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
    keep, held = splits.holdout_split(source.labels, 0.2, 0, source.groups)
    assert not {source.groups[i] for i in keep} & {source.groups[i] for i in held}
    assert 0.15 < len(held) / len(source) < 0.25
    assert source[int(held[0])]["image"].shape == (128, 128, 1)


@needs_shared
def test_ph2_rgb_folder_with_masks_beside_images():
    source = open_source(str(SHARED / "ph2_dermoscopy"))
    assert len(source) == 140 and source.channels == 3
    assert (source.labels >= 0).all() and len(source.class_names) == 3
    assert source[0]["image"].shape[-1] == 3
