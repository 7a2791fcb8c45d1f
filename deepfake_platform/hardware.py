"""What machine a job ran on: the CPU model, core count and software versions, for reports and benchmarks."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary(device: str, num_workers: int, cpus_per_worker: float, threads_per_worker: int,
                    precision: str) -> dict[str, Any]:
    """The machine and software a run used, for the report: the CPUs each worker held and the torch threads it
    really ran."""
    import torch

    return {
        "device": device,
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "num_workers": num_workers,
        "cpus_per_worker": cpus_per_worker,
        "threads_per_worker": threads_per_worker,
        "precision": precision,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": _version("ray"),
    }
