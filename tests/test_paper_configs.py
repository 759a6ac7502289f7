"""The S4MI paper configs (configs/paper): every variant loads and locks, takes its data from
`--config.data.root`, and builds its model and trainer step without data (abstract shapes only)."""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs.paper import datasets
from s4mi_jax import trainers
from s4mi_jax.core import run, sharding
from s4mi_jax.trainers import cross_teaching

PAPER = sorted(
    p.stem
    for p in (Path(__file__).parents[1] / "configs" / "paper").glob("*.py")
    if p.stem != "datasets"
)
CLASSIFICATION = ["cass_pretrain", "dino_pretrain", "finetune"]
SEGMENTATION = ["cross_teaching", "supervised_seg"]


def _variants(name: str) -> list[str]:
    """Every (dataset, backbone, pretrain, label fraction) a config distinguishes."""
    grid = {
        "cass_pretrain": (datasets.DATASETS, ["resnet50"], ["cass"], [1.0]),
        "dino_pretrain": (datasets.DATASETS, ["resnet50", "vit_base"], ["dino"], [1.0]),
        "finetune": (
            datasets.DATASETS,
            ["resnet50", "vit_base"],
            ["cass", "dino", "imagenet"],
            [0.01, 0.1, 1.0],
        ),
    }[name]
    return [
        f"dataset={d},backbone={b},pretrain={p},label_fraction={f}"
        for d, b, p, f in itertools.product(*grid)
    ]


def _dataset(arg: str) -> str:
    return arg.split(",")[0].split("=")[1]


def _load(name: str, arg: str):
    config = importlib.import_module(f"configs.paper.{name}").get_config(arg)
    config.lock()
    return config


def test_paper_configs_are_the_expected_set():
    assert PAPER == sorted(CLASSIFICATION + SEGMENTATION)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_every_variant_loads_locks_and_takes_the_data_root(name):
    for arg in _variants(name):
        config = _load(name, arg)
        dataset = _dataset(arg)
        with pytest.raises(AttributeError, match="roott"):
            config.data.roott = "/x"
        assert "REQUIRED:--config.data.root=" in config.data.root  # No silent default data.
        config.data.root = "/data/" + dataset  # What --config.data.root= sets.
        assert config.seed == config.data.split_seed == 77
        assert config.aug.image_size == 384 and config.batch_size == 16
        assert config.data.channels == 3 and config.aug.mean == (0.485, 0.456, 0.406)
        num_classes, multilabel, _ = datasets.DATASETS[dataset]
        if name == "finetune":
            assert (config.data.num_classes, config.data.multilabel) == (num_classes, multilabel)
            assert config.total_epochs == 50 and config.total_steps is None
            assert config.loss.name == "focal" and config.loss.class_weights == "reference"
            assert config.optim.schedule == "periodic_cosine" and config.optim.base_lr == 3e-4
            assert config.label_fraction == float(arg.split("label_fraction=")[1])
            if "pretrain=cass" in arg:
                branch = "cnn" if "resnet50" in arg else "vit"
                assert config.init_encoder == f"{branch}/encoder"
            else:
                assert config.init_encoder is None
        else:
            assert config.total_epochs == 100 and config.eval.linear_probe == (not multilabel)
    with pytest.raises(ValueError, match="unknown dataset 'isic2018'"):
        _load(name, "dataset=isic2018")


# One build per config file (both backbones, single- and multi-label data; the other variants differ
# from these only in values the load test checks). Each build traces the whole model: seconds.
BUILDS = [
    ("cass_pretrain", "dataset=isic2017", 112.4e6),  # ResNet-50 + ViT-B/16@384, 1000-way outputs
    ("dino_pretrain", "dataset=dermofit,backbone=vit_base", 103.2e6),  # ViT-B/16 + DINO head
    ("finetune", "dataset=dermatomyositis,backbone=vit_base,pretrain=cass", 86.09e6),
]


@pytest.mark.parametrize("name,arg,n_params", BUILDS)
def test_paper_config_builds_model_and_trainer_without_data(name, arg, n_params):
    config = _load(name, arg)
    mesh = sharding.make_mesh(config.mesh)
    trainer = trainers.get(config.trainer)
    step, abstract_state, batch = run.aot_setup(config, mesh, trainer)  # Nothing allocated.
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract_state))
    count = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    assert count == pytest.approx(n_params, rel=1e-3)
    assert batch[next(iter(batch))].shape[:2] == (16, 384) or name == "dino_pretrain"
    if name == "finetune":  # Trace the train step too (cheap for one network; no compile).
        num_classes, multilabel, _ = datasets.DATASETS[_dataset(arg)]
        head = jax.tree.leaves(abstract_state.params["head"]["kernel"])[0]
        assert head.shape[-1] == num_classes
        rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
        _, metrics = jax.eval_shape(step, abstract_state, batch, rng)
        assert set(metrics) == {"loss", "grad_norm", "accuracy"}
        assert batch["label"].shape == ((16, num_classes) if multilabel else (16,))


def _seg_variants(name: str) -> list[str]:
    fractions = datasets.SEG_FRACTIONS + ((1.0,) if name == "supervised_seg" else ())
    return [
        f"dataset={d},label_fraction={f},seed={s}"
        for d, f, s in itertools.product(datasets.SEG_DATASETS, fractions, datasets.SEG_SEEDS)
    ]


@pytest.mark.parametrize("name", SEGMENTATION)
def test_every_segmentation_variant_loads_locks_and_takes_the_data_root(name):
    for arg in _seg_variants(name):
        config = _load(name, arg)
        dataset = _dataset(arg)
        with pytest.raises(AttributeError, match="roott"):
            config.data.roott = "/x"
        assert "REQUIRED:--config.data.root=" in config.data.root  # No silent default data.
        config.data.root = "/data/" + dataset
        channels, resize, _ = datasets.SEG_DATASETS[dataset]
        assert (config.data.channels, config.data.resize) == (channels, resize)
        assert config.label_fraction == float(arg.split("label_fraction=")[1].split(",")[0])
        assert config.seed == int(arg.split("seed=")[1]) and config.data.split_seed == 0
        assert config.aug.image_size == 224 and config.data.num_classes == 2
        assert config.optim.name == "adam" and config.optim.base_lr == 3.6e-4
        assert config.optim.weight_decay == 1e-5 and config.optim.schedule == "periodic_cosine"
        assert config.optim.cosine_period_steps == 50
        if name == "cross_teaching":
            assert config.trainer == "cross_teaching" and config.total_steps == 10000
            assert (config.batch_size, config.unlabeled_batch_size) == (8, 8)
            assert config.optim.min_lr == 5e-6 and config.select_metric == "iou"
            cnn, swin = config.model.cnn, config.model.transformer
            assert (cnn.name, cnn.width, cnn.levels) == ("unet", 16, 5)
            assert (swin.embed_dim, swin.window_size, swin.drop_path) == (96, 7, 0.2)
            assert (swin.depths, swin.swin_heads) == ((2, 2, 2, 2), (3, 6, 12, 24))
            ct = config.cross_teaching
            assert (ct.consistency, ct.rampup_length, ct.rampup_divisor) == (0.1, 200, 150)
        else:
            assert config.trainer == "segment" and config.app.enabled and config.app.lr == 1e-3
            assert config.total_epochs == 50 and config.total_steps is None
            assert config.batch_size == 16 and config.optim.min_lr == 3.4e-4
            assert config.select_metric == "iou_micro" and config.model.name == "unet"
    assert not _load("supervised_seg", "app=False").app.enabled
    with pytest.raises(ValueError, match="unknown dataset 'ph2'"):
        _load(name, "dataset=ph2")


# Both networks at 224 (3- and 1-channel data), and the U-Net with its APP head.
SEG_BUILDS = [
    ("cross_teaching", "dataset=dermatomyositis", 1),
    ("supervised_seg", "dataset=isic2017", 3),
]


@pytest.mark.parametrize("name,arg,channels", SEG_BUILDS)
def test_segmentation_paper_config_builds_model_and_step_without_data(name, arg, channels):
    config = _load(name, arg)
    mesh = sharding.make_mesh(config.mesh)
    trainer = trainers.get(config.trainer)
    step, abstract_state, batch = run.aot_setup(config, mesh, trainer)  # Nothing allocated.
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract_state))
    params = abstract_state.params
    assert batch["image"].shape == (config.batch_size, 224, 224, channels)
    if name == "cross_teaching":  # Both networks' forward at 224 (tracing the two-network step
        # costs 9 s; the step itself is checked at small scale in test_seg_trainers.py).
        assert set(params) == {"cnn", "transformer"}
        assert set(batch) == {"image", "mask", "u_weak"}
        assert batch["u_weak"].shape == (8, 224, 224, channels)
        graphdef = nnx.graphdef(
            nnx.eval_shape(
                lambda: cross_teaching.task(config, run.RunData(channels, 8), mesh).build_model(
                    nnx.Rngs(0)
                )
            )
        )

        def forward(params, model_state, x):
            model = nnx.merge(graphdef, params, model_state)
            model.eval()
            return model.cnn(x), model.transformer(x)

        outs = jax.eval_shape(forward, params, abstract_state.model_state, batch["image"])
        assert [o.shape for o in outs] == [(8, 224, 224, 2)] * 2
        return
    assert "app" in params and set(batch) == {"image", "mask"}
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    new_state, metrics = jax.eval_shape(step, abstract_state, batch, rng)  # Traced, not compiled.
    assert jax.tree.structure(new_state.params) == jax.tree.structure(params)
    assert {"loss", "app_ce", "dice_loss", "ce"} <= set(metrics) and metrics["loss"].shape == ()


def test_sweep_runs_the_segmentation_paper_configs():
    from tests.test_sweep import _sweep_module

    sweep = _sweep_module()
    runs = sweep.plan(
        "/s",
        data_root="/data/isic",
        variant="dataset=isic2017",
        fractions=["0.1", "1.0"],
        seeds=["73"],
        methods=["cross_teaching"],
        pretrain_config="",
        pretrain_overrides=[],
        cell_overrides=[],
        cell_config="configs/paper/cross_teaching.py",
    )
    assert [r[1][0] for r in runs] == [  # 100% skipped: cross teaching needs unlabeled images.
        "--config=configs/paper/cross_teaching.py:dataset=isic2017,label_fraction=0.1,seed=73"
    ]
    assert sweep.config_file("cross_teaching") == "configs/cross_teaching_ph2.py"
