"""Phases: named measurements run under a time limit, each failure recorded while the run goes on."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.timing import BenchmarkTimeout, time_limit


class Phases:
    """Runs named phases under a time limit; a phase that fails is recorded and the run goes on."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.raw: dict[str, dict[str, Any] | None] = {}
        self.errors: dict[str, str] = {}

    def run(self, name: str, measure: Callable[[], dict[str, dict[str, Any]]], timeout_s: float | None = None) -> None:
        """Run `measure`, which returns {figure name: figures}; on failure record why."""
        print(f"[benchmark] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            with time_limit(timeout_s or self.timeout_s, name):
                self.raw.update(measure())
        except Exception as err:  # one failed phase must not lose the figures of the others
            hint = " Raise --phase-timeout on a slower machine." if isinstance(err, BenchmarkTimeout) else ""
            self.errors[name] = f"{type(err).__name__}: {err}{hint}"
            print(f"[benchmark] {name} FAILED: {self.errors[name]}", flush=True)
        finally:
            # The phase's models go now, not when the next phase needs their memory.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(f"[benchmark] {name} done in {time.perf_counter() - start:.0f} s", flush=True)


def with_errors_ignored(action: Callable[[], Any]) -> None:
    """Run a clean-up `action`; print, never raise, what goes wrong in it."""
    try:
        action()
    except Exception as err:  # clean-up after a failed phase: the phase's own error is the one to report
        print(f"[benchmark] clean-up: {type(err).__name__}: {err}", flush=True)
