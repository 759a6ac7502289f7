"""TFDS builders: each prepared (ArrayRecord, no TensorFlow) from a tiny release layout the test writes,
read back through `tfds.data_source` / `TfdsSource` / Grain, records checked against what was written."""

from __future__ import annotations

from pathlib import Path

import grain
import ml_collections
import numpy as np
import pytest
from PIL import Image

from s4mi_jax.data import tfds_builders
from s4mi_jax.data.sources import open_from_config
from s4mi_jax.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def _img(path: Path, shape=(6, 8, 3), value=None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = (
        RNG.integers(0, 256, shape, dtype=np.uint8)
        if value is None
        else np.full(shape, value, np.uint8)
    )
    Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a).save(path)
    return a


def _mask(path: Path, shape=(6, 8)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[1:4, 2 : 2 + RNG.integers(1, 5)] = 255
    _img(path, shape, 0)
    Image.fromarray(m).save(path)
    return (m > 0).astype(np.uint8)


def chest(root: Path):
    exp = []
    for split, cls, name, patient in (
        ("train", "NORMAL", "IM-0115-0001.jpeg", "IM-0115"),
        ("train", "PNEUMONIA", "person1_bacteria_1.jpeg", "person1"),
        ("test", "NORMAL", "NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ):
        _img(root / "chest_xray" / split / cls / name, (6, 8, 1), 60)
        exp.append((split, f"{split}/{name}", int(cls == "PNEUMONIA"), patient, None))
    return exp


def ph2(root: Path):
    exp = []
    for lesion, label in (("IMD002", 1), ("IMD003", 2)):
        base = root / "PH2 Dataset images" / lesion
        _img(base / f"{lesion}_Dermoscopic_Image" / f"{lesion}.bmp")
        m = _mask(base / f"{lesion}_lesion" / f"{lesion}_lesion.bmp")
        exp.append(("train", f"{lesion}.bmp", label, lesion, m))
    (root / "PH2_dataset.txt").write_text(
        "||  Name  || Histological Diagnosis || Clinical Diagnosis || Asymmetry ||\n"
        "|| IMD002 ||                  ||  1  ||  0  ||\n"
        "|| IMD003 || Melanoma in situ ||  2  ||  1  ||\n"
    )
    return exp


def dsb(root: Path):
    case = root / "stage1_train" / "abc"
    _img(case / "images" / "abc.png", (6, 8, 4))  # RGBA in the release.
    m1, m2 = np.zeros((6, 8), np.uint8), np.zeros((6, 8), np.uint8)
    m1[0:2, 0:2], m2[4:6, 5:8] = 255, 255
    for k, m in enumerate((m1, m2)):
        (case / "masks").mkdir(exist_ok=True)
        Image.fromarray(m).save(case / "masks" / f"n{k}.png")
    _img(root / "stage1_test" / "def" / "images" / "def.png")
    return [
        ("train", "train/abc", -1, "abc", ((m1 > 0) | (m2 > 0)).astype(np.uint8)),
        ("test", "test/def", -1, "def", None),
    ]


def isic2018(root: Path):
    _img(root / "ISIC2018_Task3_Training_Input" / "ISIC_0000001.jpg")
    _img(root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000002.jpg")
    _img(root / "ISIC2018_Task3_Training_Input" / "ISIC_0000002.jpg")
    m = _mask(root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000002_segmentation.png")
    gt = root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    gt.parent.mkdir()
    gt.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0000001,0,0,1.0,0,0,0,0\n")
    return [
        ("train", "ISIC_0000001.jpg", 2, "", None),
        ("train", "ISIC_0000002.jpg", -1, "", m),  # Mask but no diagnosis: partially labelled.
    ]


def isic2017(root: Path):
    exp = []
    for split, tag in (("train", "Training"), ("test", "Test_v2")):
        _img(root / f"ISIC-2017_{tag}_Data" / "ISIC_0000010.jpg")
        _img(root / f"ISIC-2017_{tag}_Data" / "ISIC_0000011.jpg")
        m = _mask(root / f"ISIC-2017_{tag}_Part1_GroundTruth" / "ISIC_0000010_segmentation.png")
        (root / f"ISIC-2017_{tag}_Part3_GroundTruth.csv").write_text(
            "image_id,melanoma,seborrheic_keratosis\nISIC_0000010,1.0,0.0\nISIC_0000011,0.0,1.0\n"
        )
        exp += [
            (split, f"{split}/ISIC_0000010", 1, "", m),
            (split, f"{split}/ISIC_0000011", 2, "", None),
        ]
    return exp


def dermofit(root: Path):
    exp = []
    for cls, lesion in (("BCC", "B1"), ("SK", "P7")):
        _img(root / cls / lesion / f"{lesion}.png")
        m = _mask(root / cls / lesion / f"{lesion}mask.png")
        exp.append(
            ("train", f"{lesion}.png", tfds_builders.Dermofit.CLASS_NAMES.index(cls), lesion, m)
        )
    return exp


def normalized(root: Path):  # The project's own layout, accepted by every builder (here: PH2).
    _img(root / "images" / "a.png")
    _img(root / "images" / "b.png")
    m = _mask(root / "masks" / "b.png")
    (root / "labels.csv").write_text("filename,label\na.png,2\n")
    (root / "metadata.csv").write_text("filename,patient_id\na.png,p9\nb.png,p9\n")
    return [("train", "a.png", 2, "p9", None), ("train", "b.png", -1, "p9", m)]


CASES = {
    "chest_xray_pneumonia": chest,
    "ph2": ph2,
    "dsb2018": dsb,
    "isic2018": isic2018,
    "isic2017": isic2017,
    "dermofit": dermofit,
    "ph2:normalized": normalized,
}


@pytest.mark.parametrize("case", list(CASES))
def test_builder_prepares_from_local_files_and_reads_back(tmp_path, case):
    name = case.split(":")[0]
    expected = CASES[case](tmp_path / "manual")
    builder = tfds_builders.prepare(name, str(tmp_path / "manual"), str(tmp_path / "tfds"))
    assert builder.info.file_format.value == "array_record"
    assert list((tmp_path / "tfds" / name / "1.0.0").glob("*.array_record*"))
    for split in sorted({e[0] for e in expected}):
        rows = [e for e in expected if e[0] == split]
        src = tfds_builders.TfdsSource(name, data_dir=str(tmp_path / "tfds"), split=split)
        assert len(src) == len(rows)
        assert src.keys == [r[1] for r in rows] and src.labels.tolist() == [r[2] for r in rows]
        for i, (_, key, _, patient, mask) in enumerate(rows):
            rec = src.data[i]
            assert rec["filename"].decode() == key and rec["patient_id"].decode() == patient
            assert (
                src[i]["image"].shape[-1] == builder.CHANNELS and src[i]["image"].dtype == np.uint8
            )
            if mask is None:
                assert src.mask(i) is None
            else:
                np.testing.assert_array_equal(src.mask(i), mask)
            assert src.spacing(i) is None


def test_config_names_a_tfds_dataset_and_grain_reads_it(tmp_path):
    expected = ph2(tmp_path / "manual")
    tfds_builders.prepare("ph2", str(tmp_path / "manual"), str(tmp_path / "tfds"))
    data = ml_collections.ConfigDict(
        dict(
            root=None,
            tfds_name="ph2",
            tfds_data_dir=str(tmp_path / "tfds"),
            tfds_split="train",
            channels=None,
            verify=True,
        )  # fmt: skip
    )
    src = open_from_config(data)
    assert src.class_names == list(tfds_builders.Ph2.CLASS_NAMES) and src.groups == [
        "IMD002",
        "IMD003",
    ]
    first = next(iter(grain.MapDataset.source(src).batch(2)))
    assert first["image"].shape == (2, 6, 8, 3) and first["label"].tolist() == [
        e[2] for e in expected
    ]

    with pytest.raises(
        DataError, match=r"dermofit \(split 'train'\) is not prepared in .*--dataset=dermofit"
    ):
        open_from_config(ml_collections.ConfigDict({**data.to_dict(), "tfds_name": "dermofit"}))
    with pytest.raises(ConfigError, match="give one of them"):
        open_from_config(ml_collections.ConfigDict({**data.to_dict(), "root": "x"}))
