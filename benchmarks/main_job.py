"""The main job as `make run` runs it, timed from start to exit against the sum of its epoch times."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from deepfake_platform.config import REPO_ROOT

MAIN_JOB_LINE = re.compile(r"Wall time (\d+) s; the epochs took (\d+) s")


def measure_main_job(workdir: Path, timeout_s: float) -> dict[str, dict[str, Any]]:
    """The main job as `make run` runs it (the reference recipe on the embedded data, built first), in a
    fresh folder: its wall time, start to exit, against the sum of its epoch times."""
    home = workdir / "main-job"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    start = time.perf_counter()
    ran = subprocess.run([sys.executable, str(REPO_ROOT / "experiments" / "reproduce_baseline.py"), "--no-promote",
                          "--name", "benchmark-main"], cwd=home, env=env, capture_output=True, text=True,
                         timeout=timeout_s)
    wall = time.perf_counter() - start
    if ran.returncode != 0:
        raise RuntimeError(f"the main job failed (exit {ran.returncode}): {(ran.stderr or ran.stdout)[-600:]}")
    epochs = MAIN_JOB_LINE.search(ran.stdout)
    if epochs is None:
        raise RuntimeError(f"the main job's output did not say its times: {ran.stdout[-600:]}")
    print(f"[benchmark] main job: {epochs.group(0)}", flush=True)
    return {"main_job": {"wall_s": wall, "epochs_s": float(epochs.group(2)),
                         "reported_wall_s": float(epochs.group(1))}}
