"""Sweep-report pictures: metric vs label fraction and training curves written by `launch/report.py` on
a sweep folder the test writes; the PCA embedding plot checked against scikit-learn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s4mi_jax.evaluators import report
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


def _sane_png(path: Path) -> None:
    assert path.stat().st_size > 10_000, path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 600 and im.height >= 400
        assert np.asarray(im.convert("L"), np.float64).std() > 5  # Not a blank canvas.


def _sweep(root: Path) -> Path:
    for method, base in (("supervised", 0.6), ("finetune", 0.7)):
        for fraction in (0.1, 1.0):
            for seed in (0, 1):
                cell = root / method / f"frac_{fraction}" / f"seed_{seed}"
                cell.mkdir(parents=True)
                acc = base + 0.2 * fraction + 0.01 * seed
                (cell / "results.json").write_text(json.dumps(
                    {"method": method, "label_fraction": fraction, "seed": seed,
                     "manifest_hash": f"h{fraction}{seed}", "test": {"accuracy": acc}}))  # fmt: skip
                lines = [json.dumps({"step": s, "train/loss": 2.0 / (1 + s) + seed})
                         for s in range(0, 100, 10)]  # fmt: skip
                lines.insert(3, json.dumps({"step": 25, "train/loss": "nan"}))
                (cell / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 100, "tra')
    return root


def test_sweep_report_writes_fraction_and_curve_plots(tmp_path):
    sweep = _sweep(tmp_path / "sweep")
    curves = report.collect_curves(str(sweep), "train/loss")
    assert len(curves) == 8
    steps, values = curves[os.path.join("finetune", "frac_0.1", "seed_1")]
    np.testing.assert_array_equal(steps, np.arange(0, 100, 10))  # NaN and the cut line skipped.
    np.testing.assert_allclose(values, 2.0 / (1 + steps) + 1)
    assert report.collect_curves(str(sweep), "train/nope") == {}

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "launch/report.py", f"--sweep_dir={sweep}", f"--out={out}"],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("accuracy.png", "curves_train_loss.png"):
        _sane_png(out / name)
    assert "curves_train_loss.png" in proc.stderr


def test_embedding_plot_is_the_pca_of_the_features(tmp_path):
    sklearn = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, -1], 30)
    features = rng.normal(size=(90, 12)) + 3.0 * (labels == 1)[:, None] * rng.normal(size=12)
    coords = report.plot_embedding(
        features, labels, str(tmp_path / "embedding.png"), class_names=["normal", "pneumonia"]
    )
    ref = sklearn.PCA(n_components=2).fit_transform(features)
    np.testing.assert_allclose(np.abs(coords), np.abs(ref), atol=1e-8)
    for k in range(2):  # Same components up to sign.
        assert (
            min(np.abs(coords[:, k] - ref[:, k]).max(), np.abs(coords[:, k] + ref[:, k]).max())
            < 1e-8
        )
    _sane_png(tmp_path / "embedding.png")
