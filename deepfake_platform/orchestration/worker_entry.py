"""What Ray Train ships to its controller and to every worker: a function whose module imports nothing heavy.

The controller only holds the function; importing the training loop there (torch, timm, scikit-learn) would
cost seconds at every run's start. The workers import it when they run it.
"""

from __future__ import annotations

from typing import Any


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Run deepfake_platform.orchestration.worker.train_loop_per_worker in this Ray Train worker."""
    from deepfake_platform.orchestration.worker import train_loop_per_worker as loop

    return loop(loop_config)
