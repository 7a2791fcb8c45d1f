"""Report building blocks shared by every report: number cells, Markdown tables, strict JSON, ROC plots,
and files written whole or not at all. Pure functions, except the two writers at the bottom."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_platform.files import write_text_atomic


def cell(value: Any, digits: int = 4) -> str:
    """A table cell: floats to `digits` places, NaN and None as n/a, the rest as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, digits: int = 4) -> str:
    """A Markdown table; each row's values go through `cell`."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(value, digits) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities turned into None, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write `rows` as CSV with a header of `columns`, atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def write_json(path: str | Path, data: Any) -> Path:
    """Strict JSON (NaN as null), written atomically."""
    return write_text_atomic(path, json.dumps(json_safe(data), indent=2, allow_nan=False, default=str) + "\n")


def plot_roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    """ROC curves (label, labels, scores), each with its AUC in the legend, and the chance line; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for index, (label, labels, scores) in enumerate(curves):
        labels, scores = np.asarray(labels), np.asarray(scores)
        if len(np.unique(labels)) == 2:
            fpr, tpr, _ = roc_curve(labels, scores)
            ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(labels, scores):.4f})",
                    linewidth=2.5 if index == len(curves) - 1 and len(curves) > 1 else 1.5)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
