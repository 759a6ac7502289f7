"""The S4MI paper configs (configs/paper): every variant loads and locks, takes its data from
`--config.data.root`, and builds its model and trainer step without data (abstract shapes only)."""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from configs.paper import datasets
from s4mi_jax.core import sharding

PAPER = sorted(
    p.stem
    for p in (Path(__file__).parents[1] / "configs" / "paper").glob("*.py")
    if p.stem != "datasets"
)


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
    assert PAPER == ["cass_pretrain", "dino_pretrain", "finetune"]


@pytest.mark.parametrize("name", PAPER)
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
    module = importlib.import_module(f"s4mi_jax.trainers.{config.trainer}")
    mesh = sharding.make_mesh(config.mesh)
    step, abstract_state, batch = module.aot_setup(config, mesh)  # eval_shape: nothing allocated
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
