"""Watching a deployed detector: drift of its scores against validation, and the log of what it served.

Every checkpoint records the fake probabilities it gave the validation images. A server keeps a sliding
window of the probabilities it gives production images and compares the two distributions with the
population stability index (PSI: above 0.1 means "look", above 0.25 "the inputs changed") and a two-sample
Kolmogorov-Smirnov test (a p-value near 0 says the two samples do not come from one distribution). The
prediction log holds one JSON line per answer (time, request id, kind, score, verdict, faces, model), never
the image, in size-rotated files. Pure functions first, then the window and the log.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

PSI_BINS = 10
# Proportions are floored here so an empty bin costs a finite amount (the usual PSI convention).
_EPS = 1e-4


def psi(reference: Iterable[float], current: Iterable[float], bins: int = PSI_BINS) -> float:
    """Population stability index of `current` against `reference`, on the reference's quantile bins."""
    reference = np.asarray(list(reference), dtype=np.float64)
    current = np.asarray(list(current), dtype=np.float64)
    if reference.size == 0 or current.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:  # a reference of one repeated value: below it, it, above it
        edges = np.array([-np.inf, edges[0] - 1e-9, edges[0] + 1e-9, np.inf])
    edges[0], edges[-1] = -np.inf, np.inf
    expected = np.maximum(np.histogram(reference, edges)[0] / reference.size, _EPS)
    actual = np.maximum(np.histogram(current, edges)[0] / current.size, _EPS)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_pvalue(reference: Iterable[float], current: Iterable[float]) -> float:
    """The two-sample Kolmogorov-Smirnov test's p-value (1: alike, near 0: different distributions)."""
    from scipy.stats import ks_2samp

    reference, current = list(reference), list(current)
    if not reference or not current:
        return float("nan")
    return float(ks_2samp(reference, current).pvalue)


def reference_scores(val_scores: dict[str, list[float]]) -> list[float]:
    """The validation scores of both classes, as one sample (production holds both too)."""
    return [float(score) for name in ("real", "fake") for score in val_scores.get(name, [])]


class DriftWindow:
    """The last `size` production answers, compared with the validation scores on request."""

    def __init__(self, reference: list[float], size: int = 500):
        self.reference = list(reference)
        self.answers: deque[tuple[float, bool, bool]] = deque(maxlen=size)
        self.lock = threading.Lock()

    def add(self, fake_probability: float | None, is_fake: bool, no_face: bool) -> None:
        """Record one answer (an answer without a score, a skipped picture, counts for the no-face rate only)."""
        with self.lock:
            self.answers.append((float("nan") if fake_probability is None else float(fake_probability),
                                 is_fake, no_face))

    def snapshot(self) -> dict[str, Any]:
        """Window size, PSI and KS p against validation, fake rate and no-face rate."""
        with self.lock:
            answers = list(self.answers)
        scores = [score for score, _, _ in answers if not np.isnan(score)]
        return {
            "window_size": len(answers),
            "window_capacity": self.answers.maxlen,
            "reference_size": len(self.reference),
            "psi": psi(self.reference, scores) if scores else None,
            "ks_p": ks_pvalue(self.reference, scores) if scores else None,
            "fake_rate": float(np.mean([fake for _, fake, _ in answers])) if answers else None,
            "no_face_rate": float(np.mean([no_face for _, _, no_face in answers])) if answers else None,
        }


class PredictionLog:
    """JSON lines of every answer under `directory`, one file per process, rotated at `max_bytes`."""

    def __init__(self, directory: str | Path, max_bytes: int = 10 * 1024 * 1024, backups: int = 20):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # One file per process: several server replicas never interleave their lines.
        path = self.directory / f"predictions-{os.getpid()}.jsonl"
        self.handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
        self.lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        """Append one answer (what was decided, never the image)."""
        line = json.dumps(record, default=str)
        with self.lock:
            self.handler.stream.write(line + "\n")
            self.handler.stream.flush()
            if self.handler.shouldRollover(logging.makeLogRecord({"msg": ""})):
                self.handler.doRollover()


def read_log(directory: str | Path) -> list[dict[str, Any]]:
    """Every answer logged under `directory` (current and rotated files), oldest first."""
    records = []
    for path in sorted(Path(directory).glob("predictions-*.jsonl*")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash mid-write
    return sorted(records, key=lambda record: record.get("time", ""))


def bucket_size(first: float, last: float) -> tuple[float, str]:
    """A bucket width (seconds) and its name giving about 10 to 30 buckets over [first, last]."""
    span = max(last - first, 1.0)
    for seconds, name in ((60, "minute"), (600, "10 minutes"), (3600, "hour"), (6 * 3600, "6 hours"),
                          (86400, "day"), (7 * 86400, "week")):
        if span / seconds <= 30:
            return float(seconds), name
    return 30 * 86400.0, "30 days"


def summarize(records: list[dict[str, Any]], reference: list[float], labels: dict[str, str],
              bucket_s: float) -> list[dict[str, Any]]:
    """Per time bucket: answers, score quantiles, fake and no-face rates, PSI and KS p against the validation
    scores, and the accuracy of the answers a correction (`labels`: request id -> true label) exists for."""
    import datetime as dt

    def seconds(record: dict[str, Any]) -> float:
        return dt.datetime.fromisoformat(record["time"]).timestamp()

    buckets: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        buckets.setdefault(int(seconds(record) // bucket_s), []).append(record)
    rows = []
    for key in sorted(buckets):
        group = buckets[key]
        scores = [r["fake_probability"] for r in group if r.get("fake_probability") is not None]
        judged = [r for r in group if r["request_id"] in labels and r.get("label") in ("real", "fake")]
        rows.append({
            "start": dt.datetime.fromtimestamp(key * bucket_s, dt.timezone.utc).isoformat(timespec="minutes"),
            "answers": len(group),
            "q10": float(np.quantile(scores, 0.1)) if scores else None,
            "median": float(np.median(scores)) if scores else None,
            "q90": float(np.quantile(scores, 0.9)) if scores else None,
            "fake_rate": float(np.mean([r.get("label") == "fake" for r in group])),
            "no_face_rate": float(np.mean([bool(r.get("no_face")) for r in group])),
            "psi": psi(reference, scores) if scores and reference else None,
            "ks_p": ks_pvalue(reference, scores) if scores and reference else None,
            "corrected": len(judged),
            "accuracy": float(np.mean([labels[r["request_id"]] == r["label"] for r in judged])) if judged else None,
        })
    return rows
