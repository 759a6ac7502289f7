"""Per-image classifier outputs: logits -> probabilities -> a CSV, shared by the test evaluation
(`trainers/classify.py` writes `test_predictions.csv`) and `s4mi_jax.predict`, so both files mean the
same thing, column for column.

CSV columns: `file`, [`label`,] `predicted`, then `prob_<class>` per class. Single-label: softmax
probabilities, `predicted` = the most probable class name. Multi-label: per-class sigmoid
probabilities, `predicted` = the names with probability > 0.5 joined by ";" (empty: none). Labels
(test split only) are written the same way. Probabilities are written with 17 significant digits
(float64 round trip).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import jax
import numpy as np


def probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Softmax (single-label) or per-class sigmoid (multi-label) in float64."""
    logits = np.asarray(logits, np.float64)
    if multilabel:
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def class_text(row: np.ndarray, class_names: Sequence[str], multilabel: bool) -> str:
    """A prediction or label as text: a class name, or ";"-joined names of a multi-label row."""
    if multilabel:
        return ";".join(n for n, v in zip(class_names, row, strict=True) if v > 0.5)
    return str(class_names[int(row)])


def write_csv(
    path: str,
    files: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    multilabel: bool,
    labels: np.ndarray | None = None,
) -> None:
    """One row per image (process 0 only; written to a temporary file, then renamed)."""
    if jax.process_index() != 0:
        return
    if len(files) != len(probs):
        raise ValueError(f"{len(files)} files but {len(probs)} rows of probabilities")
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(class_names, labels is not None))
        writer.writerows(csv_rows(files, probs, class_names, multilabel=multilabel, labels=labels))
    os.replace(tmp, path)


def csv_header(class_names: Sequence[str], with_labels: bool = False) -> list[str]:
    """`file[,label],predicted,prob_<class>...`: the columns of every predictions CSV."""
    header = ["file", *(["label"] if with_labels else []), "predicted"]
    return header + [f"prob_{c}" for c in class_names]


def csv_rows(
    files: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    multilabel: bool,
    labels: np.ndarray | None = None,
) -> list[list[str]]:
    """The rows under `csv_header` (17 significant digits: probabilities read back exactly)."""
    rows = []
    for i, (name, p) in enumerate(zip(files, probs, strict=True)):
        pred = class_text(p if multilabel else np.argmax(p), class_names, multilabel)
        label = [class_text(labels[i], class_names, multilabel)] if labels is not None else []
        rows.append([name, *label, pred, *(f"{v:.17g}" for v in p)])
    return rows


def read_csv(path: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(files, probabilities (N, C), class names) of a CSV written by `write_csv`."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        header = list(rows[0]) if rows else []
    columns = [c for c in header if c.startswith("prob_")]
    probs = np.array([[float(r[c]) for c in columns] for r in rows], np.float64)
    return (
        [r["file"] for r in rows],
        probs.reshape(len(rows), len(columns)),
        [c[len("prob_") :] for c in columns],
    )
