"""Report a finished (or running) sweep: `python launch/report.py --sweep_dir=DIR [--metrics=...] [--out=DIR]`.

Prints the Markdown table (methods compared at each label fraction, mean ± std over seeds) and writes
`report.md`, `report.csv`, `provenance.csv` (one row per run, pretraining included: git commit, config
hash, manifest hash, dataset fingerprint, devices, versions, wall time, device-hours), one
`<metric>.png` per metric and `curves_<key>.png` (training curves of every run, from its metrics.jsonl;
`--curves`) into `--out` (default: the sweep folder).
Problems the user can fix (no results, a metric name no cell has) print one line and exit with status 2.
"""

from __future__ import annotations

import os
import re
import sys

# `python launch/report.py` puts launch/ (not the repo root) on sys.path; make the package importable
# from a plain checkout too, not only from an installed one.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from s4mi_jax.errors import S4MIError  # noqa: E402
from s4mi_jax.evaluators import report  # noqa: E402

_SWEEP_DIR = flags.DEFINE_string(
    "sweep_dir", None, "Sweep folder; every results.json below it (any depth) is a cell."
)
_METRICS = flags.DEFINE_list(
    "metrics",
    list(report.DEFAULT_METRICS),
    "Comma-separated test metrics to report. Default: those of these four that the sweep has "
    f"(segmentation sweeps: {','.join(report.SEGMENTATION_METRICS)}).",
)
_OUT = flags.DEFINE_string(
    "out", None, "Where to write report.md/.csv and PNGs. Default: --sweep_dir."
)
_CURVES = flags.DEFINE_list(
    "curves",
    ["train/loss"],
    "metrics.jsonl keys to plot against step, every run of the sweep in one PNG per key.",
)
flags.mark_flags_as_required(["sweep_dir"])


def _file_name(metric: str) -> str:
    """`precision/0` -> `precision_0`: metric names may hold characters a file name should not."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") or "metric"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sweep_dir, metrics = _SWEEP_DIR.value, _METRICS.value
    out = _OUT.value or sweep_dir
    try:
        rows = report.collect(sweep_dir)
        if not rows:
            raise S4MIError(
                f"no sweep results under {sweep_dir!r} (results.json with method, label_fraction "
                "and test)"
            )
        if not flags.FLAGS["metrics"].present:  # Defaults: report those this sweep has.
            metrics = list(report.default_metrics(rows))
            known = set(report.available_metrics(rows))
            absent = [m for m in metrics if m not in known]
            if absent:
                print(f"report: no {', '.join(absent)} in these results; skipped", file=sys.stderr)
            metrics = [m for m in metrics if m in known] or metrics
        agg = report.aggregate(rows, metrics)
    except S4MIError as e:
        print(f"report: error: {e}", file=sys.stderr)
        sys.exit(2)

    table = report.markdown_table(agg, metrics)
    print(table, end="")
    os.makedirs(out, exist_ok=True)
    datasets = sorted({r["dataset"] for r in rows if r.get("dataset")})
    header = f"# Sweep report: {os.path.abspath(sweep_dir)}\n\n"
    header += f"{len(rows)} cells"
    if datasets:
        header += f", dataset {', '.join(datasets)}"
    header += f". Plots: {', '.join(f'`{_file_name(m)}.png`' for m in metrics)}.\n\n"
    header += report.provenance_note(rows)
    written = [os.path.join(out, "report.md"), os.path.join(out, "report.csv")]
    with open(written[0], "w") as f:
        f.write(header + table)
    report.write_csv(agg, metrics, written[1])
    written.append(os.path.join(out, "provenance.csv"))  # What produced every run of the sweep.
    report.write_provenance_csv(report.collect_provenance(sweep_dir), written[-1])
    for metric in metrics:
        written.append(os.path.join(out, f"{_file_name(metric)}.png"))
        report.plot(agg, metric, written[-1])
    for metric in _CURVES.value:  # Training curves of every run (pretraining included).
        curves = report.collect_curves(sweep_dir, metric)
        if curves:
            written.append(os.path.join(out, f"curves_{_file_name(metric)}.png"))
            report.plot_curves(curves, metric, written[-1])
    print(f"report: {len(rows)} cells; wrote {', '.join(written)}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
