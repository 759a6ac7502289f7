"""The benchmark command in quick mode (a smoke test: it runs and reports every field; no timing is
asserted, the CPU is shared)."""

from __future__ import annotations

import math

import pytest

from s4mi_jax import benchmark
from s4mi_jax.errors import ConfigError
from tests.helpers import classification_config, local_config, make_seg_folder, override


def test_quick_benchmark_reports_every_field(tmp_path):
    config = local_config(batch_size=8, **{"aug.on_device": True})  # Views made in the step.
    result = benchmark.run(config, steps=1, warmup=1, name="simclr_chest.py:local")
    assert result["augmentation"] == "device" and result["platform"] == "cpu"
    for key in (
        "host_examples_per_s",
        "synthetic_examples_per_s",
        "e2e_examples_per_s",
        "e2e_over_synthetic",
        "compile_s",
        "flops_per_step",
        "peak_flops_per_s_per_device",
        "peak_memory_bytes",
    ):
        assert result[key] > 0 and math.isfinite(result[key]), key
    assert 0 < result["mfu"] < 1 and math.isfinite(result["final_loss"])
    table = tmp_path / "bench.md"
    benchmark.append_row(str(table), result)
    benchmark.append_row(str(table), result)
    lines = table.read_text().splitlines()
    assert lines[0].startswith("| date | config |") and len(lines) == 4  # Header once, two rows.
    assert lines[2] == lines[3] == benchmark.table_row(result)


def test_peak_table_and_unregistered_trainer():
    class Dev:
        platform = "gpu"
        device_kind = "NVIDIA H100 80GB HBM3"

    assert benchmark.peak_flops(Dev, "bfloat16")[0] == 989e12
    Dev.device_kind = "TPU v5 lite"
    assert benchmark.peak_flops(Dev, "bfloat16")[0] == 197e12
    # Every registered trainer is measured through the registry; another name lists them.
    with pytest.raises(ConfigError, match=r"config.trainer='nope': expected one of \[.*'simclr'"):
        benchmark.run(override(classification_config("supervised"), trainer="nope"), steps=1)


def test_quick_benchmark_of_a_semi_supervised_segmentation_config(tmp_path):
    """FixMatch-seg: examples = labeled + unlabeled images per step, from the run's own iterator."""
    from configs import common

    root = make_seg_folder(tmp_path / "data", n=16, size=16, unlabeled=(1, 2, 3))
    config = common.segmentation_config("fixmatch_seg", "local")
    override(config, **{"data.root": root, "label_fraction": 0.5, "aug.image_size": 16})
    result = benchmark.run(config, steps=1, warmup=1, name="fixmatch_seg_ph2.py:local")
    assert result["trainer"] == "fixmatch_seg"
    assert result["global_batch"] == config.batch_size + config.unlabeled_batch_size
    for key in ("host_examples_per_s", "e2e_examples_per_s", "flops_per_step", "compile_s"):
        assert result[key] > 0 and math.isfinite(result[key]), key
    assert math.isfinite(result["final_loss"])
