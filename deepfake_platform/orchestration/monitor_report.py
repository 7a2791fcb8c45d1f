"""The monitoring report of a deployed detector: its prediction log, against its validation scores and the
corrections users sent. MONITORING.md and its PNG plots, from `summarize`'s rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_platform.errors import InvalidInput
from deepfake_platform.monitoring import bucket_size, ks_pvalue, psi, summarize
from deepfake_platform.reporting import markdown_table, write_text_atomic

PLOTS = ("scores_over_time.png", "fake_rate.png", "drift.png", "accuracy.png")


def build_report(records: list[dict[str, Any]], reference: list[float], labels: dict[str, str], out: Path,
                 sources: dict[str, str]) -> Path:
    """Write MONITORING.md and its plots under `out`; its path. `sources` names the log, checkpoint, feedback."""
    if not records:
        raise InvalidInput(f"the prediction log {sources['log']} holds no answers yet; serve some requests first.")
    out.mkdir(parents=True, exist_ok=True)
    times = [dt.datetime.fromisoformat(r["time"]).timestamp() for r in records]
    width, name = bucket_size(min(times), max(times))
    rows = summarize(records, reference, labels, width)
    scores = [r["fake_probability"] for r in records if r.get("fake_probability") is not None]
    _plot(rows, reference, out)
    judged = [r for r in records if r["request_id"] in labels and r.get("label") in ("real", "fake")]
    overall_psi = psi(reference, scores) if reference and scores else float("nan")
    lines = [
        "# Monitoring report",
        "",
        f"{len(records)} answers from {records[0]['time']} to {records[-1]['time']}, in buckets of one {name}. "
        f"Log: `{sources['log']}`; validation scores: `{sources['checkpoint']}`; corrections: `{sources['feedback']}`.",
        "",
        "## Overall",
        "",
        markdown_table(("measure", "value"), [
            ("answers", len(records)),
            ("fake rate", float(np.mean([r.get("label") == "fake" for r in records]))),
            ("no-face rate", float(np.mean([bool(r.get("no_face")) for r in records]))),
            ("median fake probability (validation)", float(np.median(reference)) if reference else None),
            ("median fake probability (served)", float(np.median(scores)) if scores else None),
            ("PSI against validation (0.1: look, 0.25: the inputs changed)", overall_psi),
            ("KS p-value against validation", ks_pvalue(reference, scores) if reference and scores else None),
            ("answers corrected by users", len(judged)),
            ("accuracy on corrected answers", float(np.mean([labels[r["request_id"]] == r["label"] for r in judged]))
             if judged else None),
        ]),
        "## Over time",
        "",
        markdown_table(("from", "answers", "q10", "median", "q90", "fake rate", "no-face rate", "PSI", "KS p",
                        "corrected", "accuracy"),
                       [(row["start"], row["answers"], row["q10"], row["median"], row["q90"], row["fake_rate"],
                         row["no_face_rate"], row["psi"], row["ks_p"], row["corrected"], row["accuracy"])
                        for row in rows]),
        "![fake probability over time against validation](scores_over_time.png)",
        "",
        "![fake rate over time](fake_rate.png)",
        "",
        "![drift against validation](drift.png)",
        "",
        "![accuracy where users corrected an answer](accuracy.png)" if judged else
        "No corrections yet: send them with `POST /feedback` (or the page's \"This is wrong\" button).",
        "",
        f"What to do: a PSI above 0.25 or a KS p-value near 0 for several {name}s says the served images no longer "
        "look like the validation images; collect corrections and run `python experiments/fine_tune.py "
        f"--from {sources['checkpoint']} --feedback {sources['feedback']}`.",
        "",
    ]
    return write_text_atomic(out / "MONITORING.md", "\n".join(lines))


def _plot(rows: list[dict[str, Any]], reference: list[float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(rows)))
    ticks = [row["start"][5:16].replace("T", " ") for row in rows]

    def figure(path: str, draw) -> None:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        draw(ax)
        ax.set_xticks(x, ticks, rotation=45, ha="right", fontsize=7)
        fig.tight_layout()
        fig.savefig(out / path, dpi=100)
        plt.close(fig)

    def scores(ax) -> None:
        if reference:
            ax.axhspan(np.quantile(reference, 0.1), np.quantile(reference, 0.9), color="grey", alpha=0.2,
                       label="validation 10-90 %")
            ax.axhline(np.median(reference), color="grey", linestyle="--", label="validation median")
        ax.plot(x, [r["median"] for r in rows], marker="o", label="served median")
        ax.fill_between(x, [r["q10"] or np.nan for r in rows], [r["q90"] or np.nan for r in rows], alpha=0.3,
                        label="served 10-90 %")
        ax.set(ylabel="fake probability", ylim=(0, 1), title="Scores over time against validation")
        ax.legend(fontsize=7)

    def fake_rate(ax) -> None:
        ax.plot(x, [r["fake_rate"] for r in rows], marker="o", color="tab:red", label="fake")
        ax.plot(x, [r["no_face_rate"] for r in rows], marker="o", color="tab:grey", label="no face")
        ax.set(ylabel="share of answers", ylim=(0, 1), title="Fake and no-face rates")
        ax.legend(fontsize=7)

    def drift(ax) -> None:
        ax.plot(x, [cell_or_nan(r["psi"]) for r in rows], marker="o", label="PSI")
        ax.axhline(0.25, color="tab:red", linestyle=":", label="0.25: the inputs changed")
        ax.set(ylabel="PSI", title="Drift against the validation scores")
        ax.legend(fontsize=7)

    def accuracy(ax) -> None:
        ax.plot(x, [cell_or_nan(r["accuracy"]) for r in rows], marker="o", color="tab:green")
        ax.set(ylabel="accuracy", ylim=(0, 1), title="Accuracy where users sent a correction")

    for path, draw in zip(PLOTS, (scores, fake_rate, drift, accuracy), strict=True):
        figure(path, draw)


def cell_or_nan(value: float | None) -> float:
    """A plotted value: None (nothing measured) as NaN, a gap in the line."""
    return float("nan") if value is None else float(value)



