"""`benchmarks/device_check.sh --tiny`: the GPU machine's prepared command, whole, on this CPU.

Every row runs (tiny configs on the embedded samples, one step each); torch is not a dependency, so
where it is absent the reference row must say so rather than fail. No speed is asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import HANG_GUARD_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_device_check_tiny_runs_every_row(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PY=sys.executable)
    env.pop("XLA_FLAGS", None)  # One CPU device, as the GPU machine has one GPU.
    run = subprocess.run(
        ["bash", "benchmarks/device_check.sh", str(tmp_path / "out"), "--tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    for name in ("matmul", "simclr", "dino", "cass", "fixmatch_seg", "claim"):
        assert rows[name]["status"] == "ok", rows[name]
    for name in ("simclr", "dino", "cass", "fixmatch_seg"):
        r = rows[name]
        assert r["synthetic_examples_per_s"] > 0 and 0 < r["mfu_vs_measured_matmul"] < 1, name
    cells = {(c["method"], c["label_fraction"]) for c in rows["claim"]["cells"]}
    assert cells == {(m, f) for m in ("supervised", "finetune") for f in (0.01, 0.1)}
    assert all(0 <= c["test_auroc"] <= 1 for c in rows["claim"]["cells"])
    torch_present = importlib.util.find_spec("torch") and importlib.util.find_spec("torchvision")
    if not torch_present:
        assert rows["torch_reference"] == {
            "row": "torch_reference",
            "status": "skipped",
            "note": "torch/torchvision absent",
            "wall_s": rows["torch_reference"]["wall_s"],
        }
    # The table is printed last and written beside the JSON.
    table = (tmp_path / "out" / "table.md").read_text()
    assert run.stdout.rstrip().endswith(table.rstrip())
    assert "| simclr | ok |" in table and "| supervised | 1% |" in table
