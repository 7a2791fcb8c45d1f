"""Clocks and time limits: images per second of a step, percentiles, interleaved runners, phase time limits."""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

Runner = Callable[[int], dict[str, float]]


class BenchmarkTimeout(TimeoutError):
    """A benchmark phase ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise BenchmarkTimeout in the main thread when the block runs longer than `seconds` (0: no limit)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise BenchmarkTimeout(f"{what} ran past its time limit of {seconds:.0f} s.")

    previous = signal.signal(signal.SIGALRM, expire)
    outer, interval = signal.setitimer(signal.ITIMER_REAL, 0)
    started = time.monotonic()
    # An outer timer (pytest-timeout's, say) is paused, never outlasted, and resumed afterwards.
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer) if outer else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3), interval)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it measures the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(step: Callable[[], int], steps: int, device: torch.device) -> dict[str, float]:
    """Run `step` (which returns its image count) `steps` times; the images per second over them."""
    synchronize(device)
    start = time.perf_counter()
    images = sum(step() for _ in range(steps))
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"images_per_s": images / elapsed, "images": float(images), "seconds": elapsed}


def interleaved(runners: dict[str, Runner], *, warmup: int, steps: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Warm each runner up, then run them in turn `rounds` times; the median of each figure per runner.

    Alternating A, B, A, B spreads slow drifts of a shared machine (another process, thermal limits)
    over every runner instead of charging them to whichever ran last.
    """
    for run in runners.values():
        if warmup:
            run(warmup)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            rows[name].append(run(steps))
    return {
        name: {
            **{key: statistics.median(row[key] for row in results) for key in results[0]},
            "rounds_images_per_s": [row["images_per_s"] for row in results],
        }
        for name, results in rows.items()
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, linearly interpolated; NaN when empty."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else math.nan

