"""Sweep report: collect/aggregate against NumPy, table/CSV format, PNGs, and the CLI end to end."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s4mi_jax.errors import DataError, S4MIError
from s4mi_jax.evaluators import report
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("simclr", "supervised")
FRACTIONS = (0.01, 0.1, 1.0)
SEEDS = (0, 1, 2)
METRICS = ["accuracy", "auroc"]
NAN_CELL = ("supervised", 0.01, 2)  # Its auroc is written as the string "nan".


def _value(metric: str, method: str, fraction: float, seed: int) -> float:
    """Known, distinct values: SimCLR beats supervised at 1% and 10%, loses at 100%."""
    base = {"simclr": 0.70, "supervised": 0.60}[method]
    base += {0.01: 0.0, 0.1: 0.08, 1.0: 0.3 if method == "supervised" else 0.15}[fraction]
    offset = 0.0 if metric == "accuracy" else 0.03
    return base + offset + 0.013 * seed**2 + (0.004 if method == "simclr" else 0.0) * seed


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _make_sweep(root: Path, manifest=lambda method, fraction, seed: f"h{fraction}-{seed}") -> Path:
    for method in METHODS:
        for fraction in FRACTIONS:
            for seed in SEEDS:
                test = {m: _value(m, method, fraction, seed) for m in METRICS}
                test["precision/0"] = 0.5
                test["ece"] = "inf"
                test["confusion"] = [[1, 2], [3, 4]]  # Non-scalar: dropped, not an error.
                if (method, fraction, seed) == NAN_CELL:
                    test["auroc"] = "nan"
                cell = {
                    "method": method,
                    "label_fraction": fraction,
                    "seed": seed,
                    "manifest_hash": manifest(method, fraction, seed),
                    "dataset": "chest_xray_pneumonia",
                    "test": test,
                    "test_ci95": {"accuracy": [0.1, 0.9]},
                    "wall_time_s": 1.5,
                    "provenance": {  # As s4mi_jax/provenance.py writes it (abridged).
                        "code": {"git_commit": "abc123def4567890", "git_dirty": True},
                        "environment": {"device_kind": "TPU v4", "device_count": 8},
                        "wall_time_s": 1.5,
                        "device_hours": 1.5 * 8 / 3600,
                    },
                }
                # One cell one level deeper: discovery must not depend on the layout.
                sub = "extra/" if (method, fraction, seed) == ("simclr", 1.0, 0) else ""
                _write(root / method / f"frac_{fraction}" / f"{sub}seed_{seed}/results.json", cell)
    # A pretraining run's results.json: no method/label_fraction/test, so not a cell.
    _write(root / "pretrain" / "results.json", {"linear_probe": {"accuracy": 0.9}, "steps": 600})
    return root


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return _make_sweep(tmp_path / "sweep")


def _known(metric: str, method: str, fraction: float) -> np.ndarray:
    vals = [_value(metric, method, fraction, s) for s in SEEDS]
    if metric == "auroc" and (method, fraction) == NAN_CELL[:2]:
        vals[NAN_CELL[2]] = np.nan
    return np.array(vals)


def test_collect_finds_cells_skips_pretraining_and_parses_nan(sweep: Path):
    rows = report.collect(str(sweep))
    assert len(rows) == len(METHODS) * len(FRACTIONS) * len(SEEDS)
    assert not any("pretrain" in r["path"] for r in rows)
    assert sum("extra" in r["path"] for r in rows) == 1
    keys = {(r["method"], r["label_fraction"], r["seed"]) for r in rows}
    assert len(keys) == len(rows)
    nan_row = next(r for r in rows if (r["method"], r["label_fraction"], r["seed"]) == NAN_CELL)
    assert isinstance(nan_row["auroc"], float) and math.isnan(nan_row["auroc"])
    assert nan_row["ece"] == math.inf and nan_row["precision/0"] == 0.5
    assert "confusion" not in nan_row
    assert nan_row["manifest_hash"] == "h0.01-2" and nan_row["dataset"] == "chest_xray_pneumonia"
    assert nan_row["accuracy"] == pytest.approx(_value("accuracy", *NAN_CELL))
    assert report.available_metrics(rows) == ["accuracy", "auroc", "ece", "precision/0"]


def test_collect_warns_and_skips_a_broken_file(sweep: Path):
    (sweep / "half" / "results.json").parent.mkdir()
    (sweep / "half" / "results.json").write_text('{"method": "simclr", ')
    with pytest.warns(UserWarning, match="half.*not readable JSON"):
        rows = report.collect(str(sweep))
    assert len(rows) == len(METHODS) * len(FRACTIONS) * len(SEEDS)


def test_collect_missing_folder_is_a_user_error(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        report.collect(str(tmp_path / "nope"))


def test_aggregate_matches_numpy(sweep: Path):
    agg = report.aggregate(report.collect(str(sweep)), METRICS)
    assert [(e["method"], e["label_fraction"]) for e in agg] == [
        (m, f) for m in METHODS for f in FRACTIONS
    ]
    for e in agg:
        assert e["n_seeds"] == 3 and e["seeds"] == [0, 1, 2]
        assert e["dataset"] == "chest_xray_pneumonia"
        for metric in METRICS:
            vals = _known(metric, e["method"], e["label_fraction"])
            kept = vals[~np.isnan(vals)]
            assert e[f"{metric}_mean"] == pytest.approx(np.mean(kept), abs=1e-12)
            assert e[f"{metric}_std"] == pytest.approx(np.std(kept, ddof=1), abs=1e-12)
            assert e[f"{metric}_n"] == kept.size
            assert e[f"{metric}_nan"] == 3 - kept.size
    nan_entry = next(e for e in agg if (e["method"], e["label_fraction"]) == NAN_CELL[:2])
    assert nan_entry["auroc_nan"] == 1 and nan_entry["auroc_n"] == 2
    assert nan_entry["auroc_mean"] == pytest.approx(np.mean([0.63, 0.63 + 0.013]))


def test_aggregate_single_seed_std_is_nan_not_zero():
    rows = [{"method": "a", "label_fraction": 0.1, "seed": 0, "accuracy": 0.8, "path": "x"}]
    (entry,) = report.aggregate(rows, ["accuracy"])
    assert entry["accuracy_mean"] == 0.8 and math.isnan(entry["accuracy_std"])
    assert report.markdown_table([entry], ["accuracy"]).splitlines()[2] == "| a | 10% | 1 | 0.800 |"


def test_aggregate_rejects_unknown_metric_and_duplicate_seed(sweep: Path):
    rows = report.collect(str(sweep))
    with pytest.raises(S4MIError, match="aucroc.*available: accuracy, auroc"):
        report.aggregate(rows, ["accuracy", "aucroc"])
    _write(
        sweep / "copy" / "results.json",
        json.loads((sweep / "simclr" / "frac_0.1" / "seed_1" / "results.json").read_text()),
    )
    with pytest.raises(DataError, match="seed 1 more than once"):
        report.aggregate(report.collect(str(sweep)), METRICS)


@pytest.mark.parametrize(
    "fraction, text", [(0.01, "1%"), (0.1, "10%"), (1.0, "100%"), (0.125, "12.5%"), (0.3, "30%")]
)
def test_format_fraction(fraction: float, text: str):
    assert report.format_fraction(fraction) == text


def _table_rows(table: str) -> list[list[str]]:
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_markdown_table_grouped_by_fraction_with_best_in_bold(sweep: Path):
    agg = report.aggregate(report.collect(str(sweep)), METRICS)
    table = report.markdown_table(agg, METRICS)
    header, rule, *rows = _table_rows(table)
    assert header == ["method", "labels", "seeds", "accuracy", "auroc"]
    assert set(rule[1]) <= set("-:")
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (m, f, "3") for f in ("1%", "10%", "100%") for m in METHODS
    ]
    for r in rows:
        for cell in r[3:]:
            assert re.fullmatch(r"(\*\*)?\d\.\d{3} ± \d\.\d{3}( \[1 NaN\])?(\*\*)?", cell), cell
    acc = _known("accuracy", "simclr", 0.01)
    expected = f"{np.mean(acc):.3f} ± {np.std(acc, ddof=1):.3f}"
    assert rows[0][3] == f"**{expected}**"  # simclr is best at 1%.
    assert rows[1][4].endswith("[1 NaN]") and not rows[1][4].startswith("**")
    assert rows[4][3].startswith("0.") and rows[5][3].startswith("**")  # supervised best at 100%.
    assert "not a like-for-like" not in table


def test_markdown_table_flags_different_labelled_subsets(tmp_path: Path):
    def manifest(method, fraction, seed):
        return f"{method}-{seed}" if fraction == 0.1 else f"h{fraction}-{seed}"

    sweep = _make_sweep(tmp_path / "sweep", manifest=manifest)
    (sweep / "supervised" / "frac_1.0" / "seed_2" / "results.json").unlink()
    agg = report.aggregate(report.collect(str(sweep)), METRICS)
    table = report.markdown_table(agg, METRICS)
    rows = _table_rows(table)[2:]
    ten = [r for r in rows if r[1] == "10%"]
    assert not any("**" in c for r in ten for c in r)  # No winner where subsets differ.
    assert any("**" in c for r in rows if r[1] == "1%" for c in r)
    assert "10%: not a like-for-like comparison: different labelled subsets for seed 0" in table
    assert "100%: not a like-for-like comparison: different seeds" in table


def test_aggregate_sums_device_hours_and_lists_code_and_devices(sweep: Path):
    agg = report.aggregate(report.collect(str(sweep)), METRICS)
    for e in agg:
        assert e["device_hours"] == pytest.approx(3 * 1.5 * 8 / 3600)  # Three seeds.
        assert e["code_versions"] == ["abc123def456+dirty"] and e["devices"] == ["8x TPU v4"]


def test_write_csv(sweep: Path, tmp_path: Path):
    agg = report.aggregate(report.collect(str(sweep)), METRICS)
    path = tmp_path / "report.csv"
    report.write_csv(agg, METRICS, str(path))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(agg)
    assert list(rows[0])[:5] == ["method", "label_fraction", "n_seeds", "seeds", "dataset"]
    for row, e in zip(rows, agg, strict=True):
        assert (row["method"], float(row["label_fraction"])) == (e["method"], e["label_fraction"])
        assert row["seeds"] == "0 1 2"
        for metric in METRICS:
            assert float(row[f"{metric}_mean"]) == e[f"{metric}_mean"]
            assert float(row[f"{metric}_std"]) == e[f"{metric}_std"]
            assert int(row[f"{metric}_nan"]) == e[f"{metric}_nan"]


def test_plot_writes_valid_png(sweep: Path, tmp_path: Path):
    agg = report.aggregate(report.collect(str(sweep)), METRICS)
    path = tmp_path / "accuracy.png"
    report.plot(agg, "accuracy", str(path))
    assert path.stat().st_size > 10_000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 600 and im.height >= 400
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.std() > 5  # Not a blank canvas.
    with pytest.raises(S4MIError, match="not aggregated"):
        report.plot(agg, "macro_f1", str(tmp_path / "x.png"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch/report.py", *args],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def test_cli_end_to_end(sweep: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = _cli(f"--sweep_dir={sweep}", "--metrics=accuracy,auroc", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("| method | labels | seeds | accuracy | auroc |")
    assert proc.stdout.count("\n| ") == 6  # One row per (method, fraction).
    assert (out / "report.md").read_text().endswith(proc.stdout)
    assert len((out / "report.csv").read_text().splitlines()) == 7
    with open(out / "provenance.csv", newline="") as f:
        prov = list(csv.DictReader(f))
    assert len(prov) == 19  # 18 cells + the pretraining run, whose provenance is absent here.
    assert {r["git_commit"] for r in prov} == {"", "abc123def4567890"}
    assert "Code: abc123def456+dirty." in (out / "report.md").read_text()
    for name in ("accuracy.png", "auroc.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"

    default = _cli(f"--sweep_dir={sweep}")  # Default metrics: the fake sweep has two of them.
    assert default.returncode == 0, default.stderr[-2000:]
    assert "no balanced_accuracy, macro_f1 in these results; skipped" in default.stderr
    assert "report: error" not in default.stderr
    assert (sweep / "report.md").exists() and (sweep / "auroc.png").exists()

    bad = _cli(f"--sweep_dir={sweep}", "--metrics=accuracy,aucroc")
    assert bad.returncode == 2 and bad.stderr.startswith("report: error: metric(s) aucroc")
