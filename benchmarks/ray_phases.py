"""The phases on a local Ray: the platform through Ray Train, the Serve app over HTTP, batch scoring.

The Ray-specific lines are marked `# ray:`; one local Ray serves all three phases and is shut down after.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from benchmarks.phases import Phases, with_errors_ignored
from benchmarks.process_cpu import CpuWindow
from benchmarks.scoring import measure_scoring
from benchmarks.serving import NO_TOKEN_ENV, measure_serve
from benchmarks.settings import Settings
from deepfake_platform.config import ExperimentConfig, with_changes
from deepfake_platform.orchestration.train import build_trainer


def ray_train_throughput(config: ExperimentConfig, data_root: Path, storage_path: Path) -> dict[str, dict[str, float]]:
    """The platform through Ray Train (`build_trainer`): figures of the last epoch, as its loop reported them, and
    the cores each process of the local Ray used meanwhile."""
    trainer = build_trainer(config, data_root, storage_path=str(storage_path),
                            run_name=f"benchmark-{uuid.uuid4().hex[:8]}")
    with CpuWindow() as window:  # who else used the cores while Ray Train ran (start-up included)
        result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"the Ray Train run failed: {result.error}") from result.error
    metrics = result.metrics
    return {"train_ray": {
        "images_per_s": float(metrics["images_per_s"]),
        "data_wait_fraction": float(metrics["data_wait_fraction"]),
        "epoch": float(metrics["epoch"]),
        "train_images": float(metrics["train_images"]),
    }, "cpu_train_ray": window.cores}


def measure_ray(config: ExperimentConfig, checkpoint: Path, data_root: Path, image: bytes, s: Settings,
                workdir: Path, phases: Phases) -> None:
    """Ray Train and Ray Serve phases on one local Ray, shut down afterwards whatever happens."""
    import ray  # ray:
    from ray import serve  # ray:

    os.environ["RAY_AUTH_MODE"] = "disabled"  # a private local cluster on loopback
    os.environ.pop(NO_TOKEN_ENV, None)
    cores = os.cpu_count() or 1
    # Replicas and workers get every core's thread (Ray would give a 0.5-CPU Serve replica one): the
    # comparison is with the bare model, which runs on all of them.
    try:
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,  # ray:
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": str(cores)}})
    except Exception as err:  # no Ray here: the other phases' figures still count
        phases.errors["start a local Ray"] = f"{type(err).__name__}: {err}"
        return
    try:
        ray_config = with_changes(config, train={"epochs": 2, "max_steps_per_epoch": s.ray_steps})
        phases.run("train through Ray Train",
                   lambda: ray_train_throughput(ray_config, data_root, workdir / "ray_results"))
        phases.run("serve over HTTP", lambda: measure_serve(checkpoint, image, s, workdir))
        with_errors_ignored(serve.shutdown)
        phases.run("batch scoring with Ray Data vs the predict path",
                   lambda: measure_scoring(checkpoint, data_root, s, workdir))
    finally:
        with_errors_ignored(serve.shutdown)
        ray.shutdown()
