"""Sweep report: methods x label fractions x seeds -> a Markdown table, a CSV and plots.

Plots: one per metric (metric vs label fraction, a line per method), training curves from every run's
``metrics.jsonl`` (``plot_curves``), and a PCA of frozen features coloured by label (``plot_embedding``).

A sweep leaves one ``results.json`` per cell; this module finds them (recursively, so the folder layout
can change without breaking the report), averages each (method, label fraction) over seeds and renders
the comparison the paper is about: how each method's test metrics grow with the fraction of labels.

Comparisons between methods at one fraction are like-for-like only if they ran the same seeds on the
same labelled subsets; every cell records the ``manifest_hash`` of its labelled subset, so the table
checks that and says so when it does not hold, instead of quietly bolding a "winner".

Only NumPy and (lazily, inside `plot`) matplotlib are imported: the report never needs JAX.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from s4mi_jax import provenance
from s4mi_jax.core.metric_writer import read_metrics
from s4mi_jax.errors import DataError, S4MIError

DEFAULT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
SEGMENTATION_METRICS = ("dice", "iou", "hd95", "asd")  # Segmentation sweeps' defaults.

# Row keys that describe a cell rather than measure it; test metrics never overwrite them.
META_KEYS = (
    "method",
    "label_fraction",
    "seed",
    "manifest_hash",
    "dataset",
    "wall_time_s",
    "path",
    "provenance",
)

# Substrings of metric names for which smaller is better (for bolding the best method).
_LOWER_IS_BETTER = ("loss", "error", "nll", "brier", "ece", "time", "hd95", "asd")


def _to_float(value: Any) -> float | None:
    """A JSON metric value as a float; our writer stores NaN/inf as the strings "nan"/"inf"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # Accepts "nan", "inf", "-inf", "Infinity".
        except ValueError:
            return None
    return None


def _flatten_metrics(test: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of the ``test`` dict, nested keys joined with "/"; lists/strings are dropped."""
    out: dict[str, float] = {}
    for key, value in test.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_metrics(value, prefix=name + "/"))
            continue
        number = _to_float(value)
        if number is not None:
            out[name] = number
    return out


def collect(sweep_dir: str) -> list[dict]:
    """One row per sweep cell found under ``sweep_dir`` (any depth), in path order.

    Each row has ``method``, ``label_fraction``, ``seed``, ``manifest_hash``, ``dataset``,
    ``wall_time_s``, ``path`` and every numeric test metric as a flat key (``"precision/0"``).
    A results.json without ``method``/``label_fraction``/``test`` (e.g. a pretraining run) is not a
    cell and is skipped; an unreadable one is skipped with a warning so a report can still be made
    while other cells are being written.
    """
    if not os.path.isdir(sweep_dir):
        raise DataError(f"sweep folder {sweep_dir!r} does not exist or is not a folder")
    pattern = os.path.join(glob.escape(sweep_dir), "**", "results.json")
    rows = []
    for path in sorted(glob.glob(pattern, recursive=True)):
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError) as e:
            warnings.warn(f"skipping {path}: not readable JSON ({e})", stacklevel=2)
            continue
        if not isinstance(result, Mapping) or not all(
            k in result for k in ("method", "label_fraction", "test")
        ):
            continue
        if not isinstance(result["test"], Mapping):
            continue
        fraction = _to_float(result["label_fraction"])
        if fraction is None or not 0.0 <= fraction <= 1.0:  # 0: unsupervised (PiCIE).
            raise DataError(
                f"{path}: label_fraction must be a number in [0, 1], got {result['label_fraction']!r}"
            )
        seed = result.get("seed")
        number = None if seed is None else _to_float(seed)
        if seed is not None and (number is None or not number.is_integer()):
            raise DataError(f"{path}: seed must be an integer, got {seed!r}")
        row: dict[str, Any] = _flatten_metrics(result["test"])
        row.update(
            method=str(result["method"]),
            label_fraction=fraction,
            seed=None if number is None else int(number),
            manifest_hash=result.get("manifest_hash"),
            dataset=result.get("dataset"),
            wall_time_s=_to_float(result.get("wall_time_s")),
            path=path,
            provenance=provenance.flatten(result.get("provenance")),
        )
        rows.append(row)
    return rows


def collect_provenance(sweep_dir: str) -> list[dict]:
    """One row per results.json under ``sweep_dir`` (cells *and* pretraining runs): ``path``,
    ``trainer``, ``method``, ``label_fraction``, ``seed``, then `provenance.COLUMNS` (empty where a
    results.json predates provenance). The full config is in each results.json."""
    rows = []
    for path in sorted(
        glob.glob(os.path.join(glob.escape(sweep_dir), "**", "results.json"), recursive=True)
    ):
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            continue  # `collect` warns about it.
        prov = result.get("provenance") if isinstance(result, Mapping) else None
        config = (prov or {}).get("config") or {}
        rows.append(
            {
                "path": os.path.relpath(path, sweep_dir),
                "trainer": config.get("trainer"),
                "method": result.get("method") or config.get("trainer"),
                "label_fraction": result.get("label_fraction"),
                "seed": result.get("seed", config.get("seed")),
                **provenance.flatten(prov),
            }
        )
    return rows


def write_provenance_csv(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """`collect_provenance` rows as a CSV (``provenance.csv`` of a sweep report)."""
    columns = ["path", "trainer", "method", "label_fraction", "seed", *provenance.COLUMNS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})


def default_metrics(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Classification defaults, or segmentation ones for a sweep whose cells have no classification
    metric (supervised vs semi-supervised segmentation)."""
    known = set(available_metrics(rows))
    if known.isdisjoint(DEFAULT_METRICS) and not known.isdisjoint(SEGMENTATION_METRICS):
        return SEGMENTATION_METRICS
    return DEFAULT_METRICS


def available_metrics(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Metric names present in at least one row (for error messages and ``--metrics`` discovery)."""
    return sorted({k for row in rows for k in row if k not in META_KEYS})


def aggregate(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[dict]:
    """Mean and sample std (ddof=1) over seeds of each metric, per (method, label_fraction).

    NaN values (and a metric missing from a cell) are left out of the mean/std and counted in
    ``<metric>_nan``; ``<metric>_n`` is the number of values used. With fewer than two values the
    std is NaN (unknown, not zero). Each row also carries ``n_seeds``, ``seeds``,
    ``manifest_by_seed`` and ``dataset`` so that comparability can be checked later.
    Sorted by method, then fraction.

    Raises `S4MIError` for a metric no cell has (likely a typo), and `DataError` when one
    (method, fraction) holds two cells with the same seed or cells from different datasets: an
    average over those would silently mean something else.
    """
    if rows:
        known = set(available_metrics(rows))
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise S4MIError(
                f"metric(s) {', '.join(unknown)} not in any results.json; "
                f"available: {', '.join(sorted(known))}"
            )
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], float(row["label_fraction"]))].append(row)

    agg = []
    for (method, fraction), cells in sorted(groups.items()):
        by_seed: dict[int, list[str]] = defaultdict(list)
        for cell in cells:
            if cell.get("seed") is not None:
                by_seed[cell["seed"]].append(cell.get("path", "?"))
        dupes = {s: p for s, p in by_seed.items() if len(p) > 1}
        if dupes:
            seed, paths = next(iter(dupes.items()))
            raise DataError(
                f"{method} at {format_fraction(fraction)} has seed {seed} more than once: "
                f"{', '.join(paths)}; remove the stale copy"
            )
        datasets = {c.get("dataset") for c in cells} - {None}
        if len(datasets) > 1:
            raise DataError(
                f"{method} at {format_fraction(fraction)} mixes datasets {sorted(datasets)}; "
                "report one dataset's sweep at a time"
            )
        entry: dict[str, Any] = {
            "method": method,
            "label_fraction": fraction,
            "n_seeds": len(cells),
            "seeds": sorted(by_seed),
            "manifest_by_seed": {
                c["seed"]: c.get("manifest_hash") for c in cells if c.get("seed") is not None
            },
            "dataset": datasets.pop() if datasets else None,
            **_provenance_summary(cells),
        }
        for metric in metrics:
            values = np.array([c.get(metric, math.nan) for c in cells], dtype=np.float64)
            kept = values[~np.isnan(values)]
            entry[f"{metric}_mean"] = float(kept.mean()) if kept.size else math.nan
            entry[f"{metric}_std"] = float(kept.std(ddof=1)) if kept.size > 1 else math.nan
            entry[f"{metric}_n"] = int(kept.size)
            entry[f"{metric}_nan"] = int(values.size - kept.size)
        agg.append(entry)
    return agg


def _provenance_summary(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What produced a (method, fraction) row: its cells' commits, devices and summed device-hours."""
    provs = [c.get("provenance") or {} for c in cells]
    hours = [p["device_hours"] for p in provs if p.get("device_hours") is not None]
    commits = {
        p["git_commit"][:12] + ("+dirty" if p.get("git_dirty") else "")
        if p.get("git_commit")
        else p.get("package_version")
        for p in provs
    } - {None}
    devices = {f"{p['device_count']}x {p['device_kind']}" for p in provs if p.get("device_kind")}
    return {
        "code_versions": sorted(commits),
        "devices": sorted(devices),
        "device_hours": float(sum(hours)) if hours else math.nan,
    }


def provenance_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """A paragraph for report.md: code versions, datasets, devices and device-hours of the cells."""
    s = _provenance_summary(rows)
    if not s["code_versions"]:
        return ""  # Results from before provenance was recorded.
    datasets = sorted(
        {
            r["provenance"]["dataset_sha256"][:12]
            for r in rows
            if (r.get("provenance") or {}).get("dataset_sha256")
        }
    )
    text = f"Code: {', '.join(s['code_versions'])}."
    if datasets:
        text += f" Dataset fingerprint(s): {', '.join(datasets)}."
    if s["devices"]:
        text += f" Devices: {', '.join(s['devices'])}."
    if not math.isnan(s["device_hours"]):
        text += f" {s['device_hours']:.3g} device-hours over {len(rows)} cells."
    return text + " Per run: `provenance.csv`.\n\n"


def format_fraction(fraction: float) -> str:
    """0.01 -> "1%", 0.1 -> "10%", 1.0 -> "100%", 0.125 -> "12.5%" (no float noise like 10.000000001%);
    0 -> "0% (unsupervised)"."""
    if fraction == 0:
        return "0% (unsupervised)"
    return f"{round(100.0 * fraction, 6):g}%"


def comparison_issues(agg: Sequence[Mapping[str, Any]]) -> dict[float, list[str]]:
    """Per label fraction, why methods there are not a like-for-like comparison (empty: they are).

    Like-for-like means the same dataset, the same seeds, and for each seed the same labelled subset
    (``manifest_hash``); a cell without a hash cannot contradict the others.
    """
    by_fraction: dict[float, list[Mapping[str, Any]]] = defaultdict(list)
    for entry in agg:
        by_fraction[entry["label_fraction"]].append(entry)
    issues: dict[float, list[str]] = {}
    for fraction, entries in sorted(by_fraction.items()):
        problems = []
        datasets = {e.get("dataset") for e in entries} - {None}
        if len(datasets) > 1:
            problems.append(f"different datasets ({', '.join(sorted(datasets))})")
        seed_sets = {tuple(e["seeds"]) for e in entries}
        if len(seed_sets) > 1:
            listing = "; ".join(
                f"{e['method']}: {', '.join(map(str, e['seeds'])) or 'none'}" for e in entries
            )
            problems.append(f"different seeds ({listing})")
        common = set.intersection(*(set(e["seeds"]) for e in entries)) if entries else set()
        for seed in sorted(common):
            hashes = {e["manifest_by_seed"].get(seed) for e in entries} - {None}
            if len(hashes) > 1:
                listing = "; ".join(
                    f"{e['method']}: {str(e['manifest_by_seed'].get(seed))[:12]}" for e in entries
                )
                problems.append(f"different labelled subsets for seed {seed} ({listing})")
        issues[fraction] = problems
    return issues


def _lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in _LOWER_IS_BETTER)


def _cell(entry: Mapping[str, Any], metric: str, digits: int) -> str:
    mean, std = entry[f"{metric}_mean"], entry[f"{metric}_std"]
    n_nan = entry.get(f"{metric}_nan", 0)
    if math.isnan(mean):
        text = "—"
    elif math.isnan(std):
        text = f"{mean:.{digits}f}"  # One value: no spread to show (not "± 0").
    else:
        text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    if n_nan:
        text += f" [{n_nan} NaN]"
    return text


def markdown_table(
    agg: Sequence[Mapping[str, Any]], metrics: Sequence[str], digits: int = 3
) -> str:
    """A Markdown table, rows grouped by label fraction so methods are compared at equal labels.

    Cells read ``mean ± std`` over seeds (``[k NaN]`` when k seeds gave NaN). Within a fraction
    where two or more methods ran a like-for-like comparison (`comparison_issues`), the best mean
    of each metric is bold; notes under the table name fractions where the comparison is not fair
    and methods missing at a fraction.
    """
    issues = comparison_issues(agg)
    methods = sorted({e["method"] for e in agg})
    ordered = sorted(agg, key=lambda e: (e["label_fraction"], e["method"]))

    best: dict[tuple[float, str], float] = {}
    for fraction, problems in issues.items():
        entries = [e for e in ordered if e["label_fraction"] == fraction]
        if problems or len(entries) < 2:
            continue
        for metric in metrics:
            means = [e[f"{metric}_mean"] for e in entries if not math.isnan(e[f"{metric}_mean"])]
            if len(means) >= 2:
                best[(fraction, metric)] = min(means) if _lower_is_better(metric) else max(means)

    header = ["method", "labels", "seeds", *metrics]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---", "---:", "---:"] + ["---:"] * len(metrics)) + "|",
    ]
    for e in ordered:
        cells = [
            e["method"].replace("|", "\\|"),
            format_fraction(e["label_fraction"]),
            str(e["n_seeds"]),
        ]
        for metric in metrics:
            text = _cell(e, metric, digits)
            if best.get((e["label_fraction"], metric)) == e[f"{metric}_mean"]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")

    notes = ["", "Mean ± sample std over seeds (test split)."]
    if best:
        notes[-1] += " **Bold**: best method at that label fraction."
    for fraction, problems in issues.items():
        present = {e["method"] for e in agg if e["label_fraction"] == fraction}
        missing = [m for m in methods if m not in present]
        if missing:
            notes.append(f"- {format_fraction(fraction)}: no results for {', '.join(missing)}.")
        if problems:
            notes.append(
                f"- {format_fraction(fraction)}: not a like-for-like comparison: "
                + "; ".join(problems)
                + "."
            )
    return "\n".join(lines + notes) + "\n"


def write_csv(agg: Sequence[Mapping[str, Any]], metrics: Sequence[str], path: str) -> None:
    """One row per (method, fraction) with ``<metric>_mean/_std/_n/_nan`` columns, full precision."""
    columns = ["method", "label_fraction", "n_seeds", "seeds", "dataset"]
    for metric in metrics:
        columns += [f"{metric}_{s}" for s in ("mean", "std", "n", "nan")]
    columns += ["code_versions", "devices", "device_hours"]  # Per cell: provenance.csv.
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for e in agg:
            row = [
                e["method"],
                repr(e["label_fraction"]),
                e["n_seeds"],
                " ".join(map(str, e["seeds"])),
                e.get("dataset") or "",
            ]
            for metric in metrics:
                row += [
                    repr(e[f"{metric}_mean"]),
                    repr(e[f"{metric}_std"]),
                    e[f"{metric}_n"],
                    e[f"{metric}_nan"],
                ]
            row += [
                " ".join(e.get("code_versions", [])),
                "; ".join(e.get("devices", [])),
                repr(e.get("device_hours", math.nan)),
            ]
            writer.writerow(row)


def _figure():
    """A matplotlib Figure on its own Agg canvas (no pyplot: no display, caller's backend untouched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise S4MIError(
            "plots need matplotlib, an optional dependency: pip install 's4mi_jax[report]' "
            "(the Markdown and CSV tables need nothing extra)."
        ) from None
    fig = Figure(figsize=(6.4, 4.2), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def collect_curves(sweep_dir: str, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{run: (steps, values)}` of `metric` from every `metrics.jsonl` under `sweep_dir`; the run is
    its folder relative to the sweep (`finetune/frac_0.1/seed_0`). Lines cut short by a kill and
    non-finite values are skipped; runs without the metric are left out."""
    curves = {}
    pattern = os.path.join(glob.escape(sweep_dir), "**", "metrics.jsonl")
    for path in sorted(glob.glob(pattern, recursive=True)):
        steps, values = [], []
        for row in read_metrics(path)[0]:
            value = _to_float(row.get(metric))
            if value is not None and math.isfinite(value) and "step" in row:
                steps.append(int(row["step"]))
                values.append(value)
        if steps:
            run = os.path.relpath(os.path.dirname(path), sweep_dir)
            curves[run] = (np.asarray(steps), np.asarray(values))
    return curves


def plot_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], metric: str, path: str
) -> None:
    """PNG of `metric` against step, one line per run, one colour per method (the run's first folder;
    line style per seed), so a diverging or collapsed run stands out next to its peers."""
    fig = _figure()
    ax = fig.add_subplot()
    methods = sorted({run.split(os.sep)[0] for run in curves})
    colours = {m: f"C{k % 10}" for k, m in enumerate(methods)}
    styles = ("-", "--", ":", "-.")
    for k, (run, (steps, values)) in enumerate(sorted(curves.items())):
        method = run.split(os.sep)[0]
        ax.plot(steps, values, color=colours[method], linestyle=styles[k % len(styles)],
                linewidth=1.2, label=run.replace(os.sep, "/"))  # fmt: skip
    ax.set_title(f"{metric} during training ({len(curves)} runs)")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if curves and len(curves) <= 12:
        ax.legend(fontsize=6)
    fig.savefig(path)


def pca_2d(features: np.ndarray) -> np.ndarray:
    """First two principal components (centred SVD), sign fixed so the largest loading is positive."""
    x = np.asarray(features, np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[:2] * np.sign(vt[:2, np.abs(vt[:2]).argmax(axis=1)].diagonal())[:, None]
    return x @ vt.T


def plot_embedding(
    features: np.ndarray,
    labels: np.ndarray,
    path: str,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "frozen features",
) -> np.ndarray:
    """PNG of a 2-D PCA of encoder features coloured by label (-1: unlabeled, grey); returns the
    coordinates. Classes that separate here are what a linear probe will find easy."""
    coords = pca_2d(features)
    labels = np.asarray(labels)
    fig = _figure()
    ax = fig.add_subplot()
    for c in sorted(set(labels.tolist())):
        sel = labels == c
        name = "unlabeled" if c < 0 else (class_names[c] if class_names else str(c))
        ax.scatter(coords[sel, 0], coords[sel, 1], s=8, alpha=0.7,
                   color="0.6" if c < 0 else None, label=f"{name} ({int(sel.sum())})")  # fmt: skip
    ax.set_title(f"PCA of {title} ({len(labels)} images)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(title="label", fontsize=7)
    fig.savefig(path)
    return coords


def plot(agg: Sequence[Mapping[str, Any]], metric: str, path: str) -> None:
    """PNG of ``metric`` against label fraction (log x), one line per method, std error bars.

    Uses matplotlib's Agg canvas directly (no pyplot): no display is needed and the process-wide
    backend of a caller (e.g. a notebook) is left alone. Methods are nudged apart slightly along x
    so that their error bars do not hide each other.
    """
    if agg and f"{metric}_mean" not in agg[0]:
        raise S4MIError(f"metric {metric!r} was not aggregated; pass it to aggregate()")
    fig = _figure()
    from matplotlib.ticker import NullFormatter, NullLocator

    ax = fig.add_subplot()
    methods = sorted({e["method"] for e in agg})
    fractions = sorted({e["label_fraction"] for e in agg} - {0.0})
    plotted = False
    for e in agg:  # Unsupervised (no labels; not on a log axis): a dashed level line.
        if e["label_fraction"] == 0 and not math.isnan(e[f"{metric}_mean"]):
            ax.axhline(
                e[f"{metric}_mean"],
                linestyle="--",
                color="gray",
                label=f"{e['method']} (no labels)",
            )
            plotted = True
    for k, method in enumerate(methods):
        entries = sorted(
            (
                e
                for e in agg
                if e["method"] == method
                and e["label_fraction"] > 0
                and not math.isnan(e[f"{metric}_mean"])
            ),
            key=lambda e: e["label_fraction"],
        )
        if not entries:
            continue
        nudge = 10 ** (0.012 * (k - (len(methods) - 1) / 2))
        x = np.array([e["label_fraction"] for e in entries]) * nudge
        y = np.array([e[f"{metric}_mean"] for e in entries])
        err = np.nan_to_num(np.array([e[f"{metric}_std"] for e in entries]), nan=0.0)
        ax.errorbar(
            x, y, yerr=err, marker="o", markersize=5, capsize=3, linewidth=1.5, label=method
        )
        plotted = True
    ax.set_xscale("log")
    if fractions:
        ax.set_xticks(fractions, [format_fraction(f) for f in fractions])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(fractions[0] / 1.6, fractions[-1] * 1.6)
    seeds = sorted({e[f"{metric}_n"] for e in agg if e[f"{metric}_n"]})  # Values behind each point.
    seeds_text = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    datasets = sorted({e.get("dataset") for e in agg} - {None})
    title = f"Test {metric} vs. labelled fraction"
    if datasets:
        title += f" ({', '.join(datasets)})"
    ax.set_title(title)
    ax.set_xlabel("fraction of training labels used (log scale)")
    ax.set_ylabel(f"{metric} (mean ± std over {seeds_text} seeds)" if seeds else metric)
    ax.grid(True, which="major", alpha=0.3)
    if plotted:
        ax.legend(title="method")
    fig.savefig(path)
