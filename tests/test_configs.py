"""Every config file loads in every variant, is locked, and the research model has the paper's shape."""

import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs import common
from s4mi_jax.models.simclr import build_simclr_model

CONFIGS = sorted(
    p.stem
    for p in (Path(__file__).parents[1] / "configs").glob("*.py")
    if p.stem not in ("common", "__init__")
)


VARIANTS = {
    "simclr_chest": [None, "local", "research", "vit", "local,vit"],
    "dino_chest": [None, "local", "vit", "research", "s4mi", "local,s4mi"],
    "cass_chest": [None, "local", "reference", "research"],
}


@pytest.mark.parametrize(
    "name,variant",
    [
        (n, v)
        for n in CONFIGS
        for v in VARIANTS.get(n, [None, "local", "local,label_fraction=0.1,seed=2"])
    ],
)
def test_config_loads_and_locks(name, variant):
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    assert config.trainer and config.batch_size > 0
    config.lock()
    with pytest.raises(AttributeError, match="base_lr"):
        config.optim.base_lrr = 0.1


def test_unknown_variant_fails():
    with pytest.raises(ValueError, match="lcoal"):
        common.parse_arg("lcoal", local=False)
    assert common.parse_arg("local,seed=3", local=False, seed=0).seed == 3


def test_research_variant_is_resnet50_bf16():
    from configs import simclr_chest

    config = simclr_chest.get_config("research")
    model = nnx.eval_shape(lambda: build_simclr_model(config.model, 1, nnx.Rngs(0)))
    assert model.encoder.feature_dim == 2048
    params = nnx.state(model, nnx.Param)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert 23e6 < n < 33e6  # ResNet-50 (23.5M without fc) + 2048->2048->128 head.
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert config.batch_size == 4096 and config.loss.temperature == 0.1
