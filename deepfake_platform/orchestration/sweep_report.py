"""The sweep's results: one row per trial, the table (sweep.csv, sweep.md), the plot and SWEEP.md.

Pure functions of the rows, then the file writers at the bottom.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

from deepfake_platform.metrics import auc_key
from deepfake_platform.reporting import cell, markdown_table, write_csv, write_text_atomic

TABLE_COLUMNS = ("trial", "lr", "epochs", "freeze", "best_val_auc", "best_epoch", "epochs_run", "status", "time_s")
HEADER = ("trial", "lr", "epochs", "freeze", "best val AUC", "at epoch", "epochs run", "status", "time (s)")
# Statuses of a trial that can be promoted; `diverged` and `error` never are.
HEALTHY = ("finished", "stopped early (ASHA)")


def trial_row(trial: str, params: dict[str, Any], history: list[dict[str, Any]], *, error: bool = False,
              run_status: dict[str, Any] | None = None) -> dict[str, Any]:
    """One line of the sweep table from a trial's parameters, its per-epoch metrics and how it ended."""
    scored = [row for row in history if not math.isnan(float(row.get("val_auc", math.nan)))]
    best = max(scored, key=lambda row: row["val_auc"], default=None)
    epochs_run = len({int(row["epoch"]) for row in history})
    if run_status is not None and run_status.get("status") in ("diverged", "error"):
        status = run_status["status"]
    elif error:
        status = "error"
    elif epochs_run < int(params["epochs"]):
        status = "stopped early (ASHA)"
    else:
        status = "finished"
    return {
        "trial": trial,
        "lr": float(params["lr"]),
        "epochs": int(params["epochs"]),
        "freeze": params["freeze"],
        "best_val_auc": float(best["val_auc"]) if best else math.nan,
        "best_epoch": int(best["epoch"]) if best else None,
        "epochs_run": epochs_run,
        "status": status,
        "time_s": float(history[-1].get("time_total_s", 0.0)) if history else 0.0,
    }


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Healthy trials first, each group by best validation AUC."""
    return sorted(rows, key=lambda row: (row["status"] not in HEALTHY, -auc_key(row["best_val_auc"]), row["trial"]))


def best_healthy(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial to test and promote: the best validation AUC among trials that neither diverged nor failed."""
    healthy = [row for row in sort_rows(rows) if row["status"] in HEALTHY and not math.isnan(row["best_val_auc"])]
    return healthy[0] if healthy else None


def render_table(rows: list[dict[str, Any]]) -> str:
    """The sweep table as Markdown."""
    return markdown_table(HEADER, [
        (row["trial"], f"{row['lr']:.2e}", row["epochs"], row["freeze"], row["best_val_auc"], row["best_epoch"],
         row["epochs_run"], row["status"], f"{row['time_s']:.1f}") for row in rows
    ])


def plot_auc_vs_lr(rows: list[dict[str, Any]], path: Path) -> Path:
    """Best validation AUC against learning rate (log scale), one series per freeze mode, PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for freeze in sorted({row["freeze"] for row in rows}):
        points = sorted((row["lr"], row["best_val_auc"]) for row in rows
                        if row["freeze"] == freeze and not math.isnan(row["best_val_auc"]))
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", linestyle=":", label=f"freeze={freeze}")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="best validation AUC", title="Validation AUC against learning rate")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_sweep_report(summary: dict[str, Any], rows: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    """SWEEP.md: what was searched, the table, the plot, the best trial and where everything is.

    `summary` holds the sweep's name, model, data root, search space, Tune settings, sizing line, batch,
    precision, wall time and folders (see `tuner.run_sweep`).
    """
    search, settings = summary["search"], summary["tune"]
    lines = [
        f"# Sweep {summary['sweep']}",
        "",
        f"{len(rows)} trial(s) of `{summary['model']}` on `{summary['data_root']}`, in "
        f"{summary['wall_time_s'] / 60:.1f} min ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC).",
        "",
        "## Search",
        "",
        (f"- learning rate: each of {', '.join(f'{lr:g}' for lr in search['lr'])}" if search.get("lr") else
         f"- learning rate: log-uniform in [{search['lr_min']:g}, {search['lr_max']:g}]"),
        f"- epochs: one of {search['epochs']}",
        f"- freezing: one of {', '.join(search['freeze'])}",
        f"- {settings['num_samples']} sample(s) (seed {settings['seed']}); ASHA on `{settings['metric']}` "
        f"({settings['mode']}), time attribute `epoch`, grace period {settings['grace_period']}, reduction "
        f"factor {settings['reduction_factor']}",
        f"- {summary['sizing']}; batch {summary['batch_size']}, precision {summary['precision']}",
        "",
        "## Trials",
        "",
        "Healthy trials first, best validation AUC first; `at epoch` counts from 0, like the checkpoint file "
        "names. A `diverged` trial stopped when its loss stopped being a number; it is never promoted. The same "
        "table: `sweep.csv`.",
        "",
        render_table(rows),
        "## Validation AUC against learning rate",
        "",
        "![best validation AUC against learning rate, by freezing](val_auc_vs_lr.png)",
        "",
        "## Best trial",
        "",
    ]
    if best is None:
        lines.append("No healthy trial reported a validation AUC; see the trial logs above the report.")
    else:
        test, row = best["test"], best["row"]
        lines += [
            f"Trial `{row['trial']}` (lr {row['lr']:.2e}, {row['epochs']} epochs, freeze {row['freeze']}): "
            f"validation AUC {cell(row['best_val_auc'])} at epoch {row['best_epoch']}; on test: AUC "
            f"{cell(test['auc'])}, accuracy {cell(test['at_val_threshold']['accuracy'])} at the validation threshold.",
            "",
            f"- checkpoint: `{best['checkpoint']}`",
            f"- full report: [{row['trial']}/RESULTS.md]({row['trial']}/RESULTS.md)",
            f"- promoted to: `{best['promoted']}`" if best["promoted"] else "- not promoted (--no-promote)",
        ]
    lines += [
        "",
        "## Where things are",
        "",
        f"- per-trial checkpoints: `{summary['checkpoints']}/<trial>/`",
        f"- Tune state: `{summary['tune_path']}`; Ray Train runs: `{summary['train_path']}`",
        f"- resume after a crash or a stop: rerun the same command with `--resume --name {summary['sweep']}`",
        "",
    ]
    return "\n".join(lines)


def write_table(rows: list[dict[str, Any]], run_dir: Path) -> tuple[Path, Path]:
    """Write sweep.csv and sweep.md."""
    run_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = run_dir / "sweep.csv", run_dir / "sweep.md"
    write_csv(csv_path, rows, TABLE_COLUMNS)
    write_text_atomic(md_path, render_table(rows))
    return csv_path, md_path
