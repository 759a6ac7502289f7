"""The label-fraction sweep and report cover segmentation: plan (semi-supervised methods skip 100%),
segmentation metrics by default, lower-is-better distances (no training)."""

import json

from s4mi_jax.evaluators import report
from tests.test_sweep import _sweep_module


def test_plan_runs_segmentation_configs_and_skips_semi_supervised_at_100_percent():
    runs = _sweep_module().plan(
        "S",
        data_root=None,
        variant="local",
        fractions=["0.1", "0.5", "1.0"],
        seeds=["0"],
        methods=["supervised_seg", "fixmatch_seg", "cross_teaching"],
        pretrain_config="unused.py",
        pretrain_overrides=[],
        cell_overrides=["total_steps=5"],
    )
    dirs = [w for w, _ in runs]
    assert dirs == [
        "S/supervised_seg/frac_0.1/seed_0",
        "S/supervised_seg/frac_0.5/seed_0",
        "S/supervised_seg/frac_1.0/seed_0",
        "S/fixmatch_seg/frac_0.1/seed_0",
        "S/fixmatch_seg/frac_0.5/seed_0",
        "S/cross_teaching/frac_0.1/seed_0",
        "S/cross_teaching/frac_0.5/seed_0",
    ]
    cmd = dict(runs)["S/cross_teaching/frac_0.5/seed_0"]
    assert cmd[0] == "--config=configs/cross_teaching_ph2.py:local,label_fraction=0.5,seed=0"
    assert not any("init_from" in a for _, c in runs for a in c)


def test_report_defaults_to_segmentation_metrics_and_bolds_lowest_distance(tmp_path):
    cells = [
        ("supervised_seg", 1.0, 0, 0.80, 5.0),
        ("supervised_seg", 0.5, 0, 0.70, 7.0),
        ("fixmatch_seg", 0.5, 0, 0.75, 6.0),
    ]
    for method, frac, seed, iou, hd95 in cells:
        d = tmp_path / method / str(frac)
        d.mkdir(parents=True)
        test = {"dice": iou + 0.1, "iou": iou, "hd95": hd95, "asd": hd95 / 3, "num_images": 28}
        result = {"method": method, "label_fraction": frac, "seed": seed, "test": test}
        (d / "results.json").write_text(json.dumps({**result, "manifest_hash": f"h{frac}"}))
    rows = report.collect(str(tmp_path))
    assert report.default_metrics(rows) == report.SEGMENTATION_METRICS
    table = report.markdown_table(report.aggregate(rows, ["iou", "hd95"]), ["iou", "hd95"])
    assert "| fixmatch_seg | 50% | 1 | **0.750** | **6.000** |" in table
    assert "| supervised_seg | 50% | 1 | 0.700 | 7.000 |" in table
    classification = [{"accuracy": 0.9, "dice": 0.1}]
    assert report.default_metrics(classification) == report.DEFAULT_METRICS


def test_picie_is_one_unsupervised_cell_per_seed_and_its_own_report_row(tmp_path):
    runs = _sweep_module().plan(
        "S",
        data_root=None,
        variant="local",
        fractions=["0.1", "1.0"],
        seeds=["0", "1"],
        methods=["supervised_seg", "picie"],
        pretrain_config="unused.py",
        pretrain_overrides=[],
        cell_overrides=[],
    )
    picie = [(w, c) for w, c in runs if "/picie/" in w]
    assert [w for w, _ in picie] == ["S/picie/frac_0/seed_0", "S/picie/frac_0/seed_1"]
    assert picie[0][1][0] == "--config=configs/picie_ph2.py:local,seed=0"
    for method, frac, iou in (("supervised_seg", 1.0, 0.8), ("picie", 0.0, 0.3)):
        d = tmp_path / method
        d.mkdir()
        test = {"dice": iou + 0.1, "iou": iou, "hd95": 5.0, "asd": 2.0}
        result = {"method": method, "label_fraction": frac, "seed": 0, "test": test}
        (d / "results.json").write_text(json.dumps(result))
    agg = report.aggregate(report.collect(str(tmp_path)), ["iou"])
    table = report.markdown_table(agg, ["iou"])
    assert "| picie | 0% (unsupervised) | 1 | 0.300 |" in table
    report.plot(agg, "iou", str(tmp_path / "iou.png"))  # The unsupervised level as a line.
    assert (tmp_path / "iou.png").stat().st_size > 0
