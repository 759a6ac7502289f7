"""The catalogue of bad inputs (README "Bad input"): each gets one clear error naming the file or key.

Command-line cases (config typo, wrong type, missing config file) are in test_main.py, a checkpoint of
another model in test_classify.py, non-finite losses in test_nonfinite.py.
"""

import errno
import hashlib
import shutil
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from s4mi_jax.core.checkpoint import Checkpointer
from s4mi_jax.data import manifests
from s4mi_jax.data.sources import SAMPLE_ROOT, open_source, read_mask
from s4mi_jax.errors import ConfigError, DataError, S4MIError
from s4mi_jax.trainers import classify, simclr
from tests.helpers import classification_config, local_config


def _folder(tmp_path, n=3, size=(8, 8), mode="L"):
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shape = size if mode == "L" else (*size, len(mode))
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, shape).astype(np.uint8), mode).save(
            tmp_path / "images" / f"im{i}.png"
        )
    return tmp_path


def _labels(tmp_path, text):
    (tmp_path / "labels.csv").write_text(text)
    return tmp_path


# (id, make(tmp_path) -> callable that must raise, error type, message regex)
CASES = [
    (
        "missing data root",
        lambda t: lambda: open_source(str(t / "nope")),
        DataError,
        r"data folder .*nope does not exist \(config.data.root",
    ),
    ("empty folder", lambda t: lambda: open_source(str(t)), DataError, r"no images .* in"),
    (
        "garbage bytes named .png",
        lambda t: (
            _folder(t),
            (t / "images" / "x.png").write_bytes(b"hello" * 50),
            lambda: open_source(str(t)),
        )[-1],
        DataError,
        r"cannot read image .*x\.png",
    ),
    (
        "truncated PNG",
        lambda t: (
            _folder(t, size=(64, 64)),
            _truncate(t / "images" / "im1.png"),
            lambda: open_source(str(t)),
        )[-1],
        DataError,
        r"cannot read image .*im1\.png",
    ),
    (
        "zero-byte file",
        lambda t: (
            _folder(t),
            (t / "images" / "z.png").write_bytes(b""),
            lambda: open_source(str(t)),
        )[-1],
        DataError,
        r"cannot read image .*z\.png",
    ),
    (
        "labels.csv names a missing file",
        lambda t: (
            _labels(_folder(t), "filename,label\nim0.png,0\ngone.png,1\n"),
            lambda: open_source(str(t)),
        )[-1],
        DataError,
        r"labels\.csv line 3: file 'gone\.png' is not in",
    ),
    (
        "labels.csv unknown label",
        lambda t: (
            _labels(_folder(t), "filename,label\nim0.png,-2\n"),
            lambda: open_source(str(t)),
        )[-1],
        DataError,
        r"labels\.csv line 2: label '-2' is not a class id",
    ),
    (
        "labels.csv empty label",
        lambda t: (_labels(_folder(t), "filename,label\nim0.png,\n"), lambda: open_source(str(t)))[
            -1
        ],
        DataError,
        r"line 2: label '' is not a class id",
    ),
    (
        "labels.csv duplicate rows",
        lambda t: (
            _labels(_folder(t), "filename,label\nim0.png,0\nim1.png,1\nim0.png,1\n"),
            lambda: open_source(str(t)),
        )[-1],
        DataError,
        r"lines 2 and 4: 'im0\.png' is listed twice",
    ),
    (
        "labels.csv without label column",
        lambda t: (_labels(_folder(t), "file,y\nim0.png,0\n"), lambda: open_source(str(t)))[-1],
        DataError,
        r"labels\.csv: missing column\(s\) \['filename'\]; found \['file', 'y'\]",
    ),
    (
        "multi-label column not 0/1",
        lambda t: (_labels(_folder(t), "filename,a,b\nim0.png,1,2\n"), lambda: open_source(str(t)))[
            -1
        ],
        DataError,
        r"line 2: multi-label columns \['a', 'b'\] must be 0 or 1",
    ),
    (
        "mask of the wrong size",
        lambda t: (
            _folder(t),
            _mask(t, (4, 4), 255),
            lambda: read_mask(t / "m.png", (8, 8), "im.png"),
        )[-1],
        DataError,
        r"mask .*m\.png is 4x4 but its image im\.png is 8x8",
    ),
    (
        "mask with undocumented values",
        lambda t: (
            _folder(t),
            _mask(t, (8, 8), 128, 255),
            lambda: read_mask(t / "m.png", (8, 8), "im"),
        )[-1],
        DataError,
        r"must hold only 0 and 255",
    ),
    (
        "RGB mask",
        lambda t: (
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(t / "m.png"),
            lambda: read_mask(t / "m.png", (8, 8), "im"),
        )[-1],
        DataError,
        r"masks are single-channel",
    ),
    (
        "npz with float images",
        lambda t: (
            np.savez(t / "d.npz", images=np.zeros((2, 4, 4))),
            lambda: open_source(str(t / "d.npz")),
        )[-1],
        DataError,
        r"d\.npz: 'images' must be a non-empty uint8 array",
    ),
    (
        "npz holding pickled objects",
        lambda t: (
            np.savez(t / "d.npz", images=np.array([{}, {}], dtype=object)),
            lambda: open_source(str(t / "d.npz")),
        )[-1],
        DataError,
        r"cannot read .*d\.npz: Object arrays cannot be loaded",
    ),
    (
        "npz labels of wrong length",
        lambda t: (
            np.savez(t / "d.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.zeros(2)),
            lambda: open_source(str(t / "d.npz")),
        )[-1],
        DataError,
        r"'labels' shape \(2,\) != \(3,\)",
    ),
    (
        "empty npz dataset",
        lambda t: (
            np.savez(t / "d.npz", images=np.zeros((0, 4, 4), np.uint8)),
            lambda: open_source(str(t / "d.npz")),
        )[-1],
        DataError,
        r"must be a non-empty uint8 array",
    ),
    (
        "label fraction 0",
        lambda t: (
            lambda: manifests.make_manifest(
                ["a", "b"], np.array([0, 1]), None, fraction=0.0, seed=0
            )
        ),
        DataError,
        r"fraction",
    ),
    (
        "fraction leaving a class empty",
        lambda t: (
            lambda: manifests.make_manifest(
                [f"k{i}" for i in range(40)],
                np.array([0] * 38 + [1] * 2),
                None,
                fraction=0.1,
                seed=0,
                val_fraction=0.3,
                test_fraction=0.3,
            )
        ),
        DataError,
        r"class 1",
    ),
    (
        "batch larger than the dataset",
        lambda t: lambda: simclr.train_and_evaluate(local_config(batch_size=512), str(t / "w")),
        DataError,
        r"training images in .* is fewer than config\.batch_size=512",
    ),
    (
        "global batch not divisible by devices",
        lambda t: lambda: simclr.train_and_evaluate(local_config(batch_size=12), str(t / "w")),
        ConfigError,
        r"config\.batch_size=12 must be divisible by the 8 devices",
    ),
    (
        "unwritable workdir (a file in the way)",
        lambda t: (
            (t / "f").write_text("x"),
            lambda: simclr.train_and_evaluate(local_config(), str(t / "f" / "w")),
        )[-1],
        S4MIError,
        r"cannot write to workdir .*f/w",
    ),
    (
        "unknown method",
        lambda t: lambda: classify.train_and_evaluate(_cls(method="selfsup"), str(t / "w")),
        ConfigError,
        r"config\.method='selfsup'",
    ),
    (
        "unknown model name",
        lambda t: (
            lambda: classify.train_and_evaluate(_cls(**{"model.name": "resnet7"}), str(t / "w"))
        ),
        ConfigError,
        r"config\.model\.name='resnet7' .*\['resnet18', 'resnet50', 'vit'",
    ),
    (
        "unknown loss",
        lambda t: lambda: classify.train_and_evaluate(_cls(**{"loss.name": "hinge"}), str(t / "w")),
        ConfigError,
        r"config\.loss\.name='hinge'",
    ),
    (
        "unknown optimizer",
        lambda t: (
            lambda: classify.train_and_evaluate(_cls(**{"optim.name": "rmsprop"}), str(t / "w"))
        ),
        ConfigError,
        r"config\.optim\.name",
    ),
    (
        "linear probe without init_from",
        lambda t: lambda: classify.train_and_evaluate(_cls(method="linear_probe"), str(t / "w")),
        ConfigError,
        r"needs config\.init_from",
    ),
    (
        "init_from that does not exist",
        lambda t: (
            lambda: classify.train_and_evaluate(
                _cls(method="finetune", init_from=str(t / "none")), str(t / "w")
            )
        ),
        ConfigError,
        r"config\.init_from=.*none: no such run folder",
    ),
    (
        "eval_root without labels",
        lambda t: (
            lambda: simclr.train_and_evaluate(
                local_config(**{"data.eval_root": str(_folder(t / "e"))}), str(t / "w")
            )
        ),
        DataError,
        r"config\.data\.eval_root=.*: no labeled images",
    ),
]


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _mask(tmp_path, size, *values):
    m = np.zeros(size, np.uint8)
    for i, v in enumerate(values):
        m.flat[i] = v
    Image.fromarray(m).save(tmp_path / "m.png")


def _cls(**overrides):
    return classification_config(overrides.pop("method", "supervised"), **overrides)


@pytest.mark.parametrize("name,make,error,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(tmp_path, name, make, error, pattern):
    call = make(tmp_path)
    with pytest.raises(error, match=pattern):
        call()
    assert not (tmp_path / "w").exists()  # Nothing written for a run that never started.


def test_catalogue_is_large_enough():
    assert len(CASES) >= 30


def test_mixed_modes_16bit_and_non_image_files_are_handled(tmp_path):
    """Documented behaviour rather than errors: channels follow the first image (others are
    converted), 16-bit images are rescaled to 8 bit, files without an image extension are ignored."""
    _folder(tmp_path, n=1, mode="RGB")
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8), "RGBA").save(tmp_path / "images" / "im1.png")
    Image.fromarray(np.full((8, 8), 7, np.uint8), "L").save(tmp_path / "images" / "im2.png")
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(
        tmp_path / "images" / "im3.png"
    )
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    source = open_source(str(tmp_path))
    assert len(source) == 4 and source.channels == 3
    assert all(source[i]["image"].shape == (8, 8, 3) for i in range(4))
    deep = source[3]["image"][..., 0]
    assert deep.min() == 0 and deep.max() == 255  # 16-bit range mapped onto 0..255.


def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = Checkpointer(str(tmp_path / "c"))
    state = {"w": jax.numpy.arange(4.0)}
    ckpt.save(1, state, None)
    ckpt.wait()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.manager, "save", full)
    with pytest.raises(
        S4MIError,
        match=r"could not save checkpoint 2 .*No space left.*\(step 1\) is intact",
    ):
        ckpt.save(2, state, None)
    monkeypatch.undo()
    assert ckpt.latest_step() == 1
    np.testing.assert_array_equal(ckpt.restore(state, None)["w"], state["w"])
    ckpt.close()


def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch):
    from s4mi_jax.evaluators import report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(S4MIError, match=r"pip install 's4mi_jax\[report\]'"):
        report.plot([], "accuracy", str(tmp_path / "x.png"))


def test_workdir_of_another_config_is_refused_unless_allowed(tmp_path):
    from s4mi_jax.core.metric_writer import prepare_workdir

    config = local_config()
    prepare_workdir(str(tmp_path), config)
    before = (tmp_path / "config.json").read_text()
    config.log_every = 99  # Watching differently is fine.
    prepare_workdir(str(tmp_path), config)
    config.optim.base_lr = 1.0
    with pytest.raises(
        S4MIError, match=r"holds a run of another config \(optim\.base_lr: 0\.075 -> 1\.0"
    ):
        prepare_workdir(str(tmp_path), config)
    assert "0.075" in (tmp_path / "config.json").read_text() and before
    config.allow_config_change = True
    prepare_workdir(str(tmp_path), config)


def test_data_root_is_never_written(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE_ROOT, data)

    def digest():
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*"))
            if p.is_file()
        }, sorted(p.name for p in data.rglob("*"))

    before = digest()
    simclr.train_and_evaluate(
        local_config(**{"data.root": str(data), "total_steps": 2}), str(tmp_path / "w")
    )
    assert digest() == before
