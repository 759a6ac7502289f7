"""What a set of pretraining runs ended with: the collapse monitors at the last logged step and the
closing linear probes, mean ± std over seeds, plus each sweep's linear-probe cells.

    python benchmarks/ssl_readings.py runs/sweep_dino runs/sweep_cass runs/sweep_simclr runs/sweep_random

Each argument is a `launch/sweep.py` folder: `pretrain/seed_*/` (metrics.jsonl, results.json) and
`linear_probe/frac_*/seed_*/results.json`; a `runs/random_init_probe/seed_*` folder (1-step runs with
`eval.probe_at_init=True`) gives the random-init encoder's closing-probe row.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

MONITORS = (
    "collapse_spread",
    "collapse_rank",
    "collapse_entropy_ratio",
    "collapse_prototypes",
    "teacher_entropy",
    "branch_cosine",
)


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    v = np.asarray(values, float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def _last_train_row(path: str) -> dict:
    last = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if any(k.startswith("train/") for k in row):
                last = row
    return last


def main(sweeps: list[str]) -> None:
    print(
        "| run | seeds | 10% probe test AUROC | 10% probe balanced acc. | closing probe AUROC |"
        " " + " | ".join(MONITORS) + " |"
    )
    print("|---" * (5 + len(MONITORS)) + "|")
    for sweep in sweeps:
        cells = sorted(
            glob.glob(os.path.join(sweep, "linear_probe", "frac_0.1", "seed_*", "results.json"))
        )
        auroc = [json.load(open(c))["test"]["auroc"] for c in cells]
        bacc = [json.load(open(c))["test"]["balanced_accuracy"] for c in cells]
        pre = sorted(glob.glob(os.path.join(sweep, "pretrain", "seed_*")))
        pre += sorted(glob.glob(os.path.join(sweep, "seed_*")))
        closing, monitors = [], {m: [] for m in MONITORS}
        for run in pre:
            res_path = os.path.join(run, "results.json")
            init_path = os.path.join(run, "probe_at_init.json")
            direct = os.path.dirname(run) == sweep.rstrip(
                "/"
            )  # <folder>/seed_*: a random-init row.
            if direct and os.path.exists(init_path):
                closing.append(json.load(open(init_path))["probe_at_init"]["auroc"])
            elif os.path.exists(res_path):
                res = json.load(open(res_path))
                key = next((k for k in ("linear_probe", "linear_probe_cnn") if k in res), None)
                if key:
                    closing.append(res[key]["auroc"])
            metrics = os.path.join(run, "metrics.jsonl")
            if os.path.exists(metrics) and os.path.exists(res_path) and not direct:
                row = _last_train_row(metrics)
                for m in MONITORS:
                    if f"train/{m}" in row:
                        monitors[m].append(row[f"train/{m}"])
        seeds = max(len(cells), len(pre))
        print(
            f"| {sweep} | {seeds} | {_fmt(auroc)} | {_fmt(bacc)} | {_fmt(closing)} | "
            + " | ".join(_fmt(monitors[m]) for m in MONITORS)
            + " |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
