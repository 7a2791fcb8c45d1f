"""The training launcher: a TorchTrainer around the one training loop, and a run that ends in a sentence.

`build_trainer` is the Ray seam (scaling, storage, failure policy, logging); `run_training` runs it for
the main job: it fails early on a bad `--resume`, says when the run waits for nodes, turns a
diverged or misconfigured run into one line (never retried), and on Ctrl-C stops Ray within seconds
and says what was kept and how to continue.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfake_platform.checkpoints import (
    CheckpointError,
    DetectorCheckpoint,
    epoch_checkpoints,
    read_checkpoint,
)
from deepfake_platform.config import ExperimentConfig
from deepfake_platform.orchestration.cluster import cpus_per_worker
from deepfake_platform.orchestration.worker_entry import train_loop_per_worker
from deepfake_platform.outputs import RunPaths, read_status
from deepfake_platform.training import threads_for


class RunFailed(RuntimeError):
    """A run that ended without finishing its epochs (diverged, misconfigured, out of retries)."""


class RunStopped(KeyboardInterrupt):
    """A run stopped by the user (Ctrl-C); what was kept is in the message."""


def build_trainer(config: ExperimentConfig, data_root: Path, *, resume_from: str | None = None,
                  callbacks: list | None = None, storage_path: str | None = None, run_name: str | None = None,
                  verbose: bool = False, progress: bool = True, init_from: str | None = None):
    """A TorchTrainer running `train_loop_per_worker` for `config` (the Ray seam of training)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # ray:
    from ray.train.torch import TorchTrainer  # ray:
    from ray.train.v2.api.config import LoggingConfig  # ray:

    paths = RunPaths.for_config(config)
    cpus = cpus_per_worker(config.scaling.cpus_per_worker, config.scaling.num_workers)
    loop_config = {
        "config": config.to_dict(),
        "paths": paths.to_dict(),
        "data_root": str(Path(data_root).resolve()),
        "resume_from": str(Path(resume_from).resolve()) if resume_from else None,
        "init_from": str(Path(init_from).resolve()) if init_from else None,
        "cpus_per_worker": cpus,
        "verbose": verbose,
        "progress": progress,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(  # ray:
            num_workers=config.scaling.num_workers,
            use_gpu=config.scaling.use_gpu,
            resources_per_worker={"CPU": cpus},
        ),
        run_config=RunConfig(  # ray:
            name=run_name or config.name,
            storage_path=storage_path or paths.storage,
            # Worker and node losses are retried from the latest checkpoint; the loop never raises the
            # deterministic failures (divergence, bad data), it returns them as a status.
            failure_config=FailureConfig(max_failures=config.scaling.max_failures),
            # Ray keeps the latest checkpoint only: the per-epoch files live in checkpoints/<run>/.
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            # The worker process starts with OpenMP sized to the CPUs it holds, as the scoring actor does: Ray
            # otherwise starts it without the variable and sets it only when the loop's task begins, after the
            # process is up (the loop's set_threads then sets torch's threads to the same count).
            worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads_for(cpus))}},
        ),
    )


@dataclass
class TrainingOutcome:
    """What a finished training run leaves behind."""

    config: ExperimentConfig
    paths: RunPaths
    best_checkpoint: Path
    wall_time_s: float
    epoch_time_s: float
    cpus_per_worker: float


def check_resume(resume_from: str | None, epochs: int) -> None:
    """Fail before starting Ray when a --resume file is unusable or has already trained `epochs`."""
    if not resume_from:
        return
    state = read_checkpoint(resume_from, DetectorCheckpoint)
    if state.epoch + 1 >= epochs:
        raise CheckpointError(
            f"{resume_from} already finished epoch {state.epoch}; pass --epochs above {state.epoch + 1} to train further."
        )


def run_training(config: ExperimentConfig, data_root: Path, resume_from: str | None = None, *,
                 verbose: bool = False, rerun_hint: str = "", init_from: str | None = None) -> TrainingOutcome:
    """Run the training through Ray Train (Ray must be up) and return where the best checkpoint is."""
    check_resume(resume_from, config.train.epochs)
    paths = RunPaths.for_config(config)
    start = time.perf_counter()
    # Ray resumes a run name it has seen from that run's latest checkpoint; a --resume file must win over
    # that, so continuing from a chosen file is a Ray run of its own.
    run_name = f"{config.name}-from-{Path(resume_from).stem}-{int(time.time())}" if resume_from else config.name
    trainer = build_trainer(config, data_root, resume_from=resume_from, run_name=run_name, verbose=verbose,
                            init_from=init_from)
    needed = config.scaling.num_workers * trainer.train_loop_config["cpus_per_worker"]
    # The driver waits while the workers train: import what testing and reporting need meanwhile (seconds
    # of torch, timm, torchvision and matplotlib that would otherwise come after the last epoch).
    threading.Thread(target=_import_finalize_modules, name="warm-imports", daemon=True).start()
    with WaitingForNodes(needed, config.scaling.num_workers):
        result = fit_or_stop(trainer, paths, rerun_hint)
    status = result.return_value or read_status(paths.checkpoints) or {"status": "finished"}
    if status["status"] != "finished":
        raise RunFailed(status["message"])
    best = paths.checkpoints / "best.pth"
    if not best.is_file():
        raise RunFailed(f"the run finished without writing {best}; see the log above for the cause.")
    latest = epoch_checkpoints(paths.checkpoints)[-1]
    epoch_time = sum(row.get("epoch_time_s", 0.0) for row in read_checkpoint(latest, DetectorCheckpoint).history)
    return TrainingOutcome(config, paths, best, time.perf_counter() - start, epoch_time,
                           trainer.train_loop_config["cpus_per_worker"])


def _import_finalize_modules() -> None:
    import importlib

    for module in ("deepfake_platform.evaluation", "deepfake_platform.orchestration.report", "models",
                   "deepfake_platform.data.transforms", "matplotlib.pyplot", "sklearn.metrics"):
        try:
            importlib.import_module(module)
        except Exception:  # a failed warm-up only means the import happens later, where it belongs
            return


def fit_or_stop(trainer: Any, paths: RunPaths, rerun_hint: str) -> Any:
    """`trainer.fit()`; on Ctrl-C, RunStopped saying which checkpoint was kept and how to continue.

    fit() runs in a thread of its own, so Ray Train installs no SIGINT handler of its own (its graceful
    abort takes over ten seconds); Ctrl-C reaches this thread at once and the caller stops Ray. Nothing
    is lost: every checkpoint is written atomically, and the next run continues from the latest one.
    """
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # handed to the main thread below
            outcome["error"] = err

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        raise RunStopped(stopped_message(paths, rerun_hint)) from None
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def stopped_message(paths: RunPaths, rerun_hint: str) -> str:
    """What a stopped run kept and the command that continues it."""
    epochs = epoch_checkpoints(paths.checkpoints)
    kept = (f"kept {len(epochs)} epoch checkpoint(s), the latest {epochs[-1]}" if epochs
            else "no epoch had finished, so no checkpoint was written")
    return f"Stopped: {kept}. Continue with: {rerun_hint}" if rerun_hint else f"Stopped: {kept}."


class WaitingForNodes:
    """While a run is on, print a line when the cluster holds fewer CPUs than its workers need, and when it
    holds enough again (a lost node replaced). Public Ray calls only, every few seconds, in a thread."""

    def __init__(self, cpus_needed: float, workers: int, interval_s: float = 2.0):
        self.cpus_needed, self.workers, self.interval_s = cpus_needed, workers, interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="waiting-for-nodes")

    def __enter__(self) -> WaitingForNodes:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _watch(self) -> None:
        import ray  # ray:

        waiting = False
        while not self.stop.wait(self.interval_s):
            try:
                cpus = ray.cluster_resources().get("CPU", 0.0)  # ray:
            except Exception:  # Ray shutting down under us: nothing left to watch
                return
            if cpus + 1e-9 < self.cpus_needed and not waiting:
                waiting = True
                print(f"Waiting for nodes: the run needs {self.workers} worker(s), {self.cpus_needed:g} CPUs in all, "
                      f"and the cluster has {cpus:g} now. It continues from its latest checkpoint when a node joins.",
                      file=sys.stderr, flush=True)
            elif cpus + 1e-9 >= self.cpus_needed and waiting:
                waiting = False
                print("A node joined: the run continues from its latest checkpoint.", file=sys.stderr, flush=True)
