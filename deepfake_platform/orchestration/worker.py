"""The Ray Train worker: the seam between Ray and the plain-PyTorch epoch loop.

Each worker reads its rank and device from Ray, continues from Ray's restored checkpoint (or the run's
own latest epoch file), wraps the model for DDP, runs `deepfake_platform.epoch_loop.run_epochs`, and
reports every epoch to Ray with the epoch's checkpoint. Ray lines are marked `# ray:`.

Deterministic failures (a diverging loss, a broken data set or config) end the worker with a status
the launcher turns into one sentence; they are never retried. Only a lost worker or node is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfake_platform.checkpoints import input_size, remove_partial_writes
from deepfake_platform.config import config_from_dict
from deepfake_platform.epoch_loop import DETERMINISTIC_ERRORS, latest_state, run_epochs, start_from
from deepfake_platform.files import link_or_copy
from deepfake_platform.outputs import RunPaths, clear_status, write_status
from deepfake_platform.predict import resolve_precision
from deepfake_platform.training import (
    TrainingDiverged,
    build_optimizer,
    compile_if_configured,
    make_loaders,
    prepare_detector,
    set_threads,
)

# The file inside each checkpoint directory reported to Ray.
RAY_CHECKPOINT_FILE = "checkpoint.pth"
# Ray copies a reported checkpoint directory into its storage; it is staged beside the epoch files (same
# filesystem, so a hard link usually does) and removed once reported.
STAGING_PREFIX = ".ray-staging-"


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Train on this worker's share, validate on all, checkpoint and report every epoch; returns the status."""
    import ray.train  # ray:

    paths = RunPaths.from_dict(loop_config["paths"])
    rank = ray.train.get_context().get_world_rank()  # ray:
    if not loop_config.get("verbose"):
        _quiet_ray_train_logs()
    try:
        _train(loop_config, paths)
    except DETERMINISTIC_ERRORS as err:
        status = {"status": "diverged" if isinstance(err, TrainingDiverged) else "error", "message": str(err)}
        if rank == 0:
            write_status(paths, status)
        return status
    return {"status": "finished"}


def _train(loop_config: dict[str, Any], paths: RunPaths) -> None:
    import ray.train  # ray:
    import ray.train.torch  # ray:

    config = config_from_dict(loop_config["config"], "loop config")
    context = ray.train.get_context()  # ray:
    rank, world_size = context.get_world_rank(), context.get_world_size()  # ray:
    set_threads(loop_config["cpus_per_worker"])
    torch.manual_seed(config.train.seed)
    np.random.seed(config.train.seed + rank)
    device = ray.train.torch.get_device() if config.scaling.use_gpu else torch.device("cpu")  # ray:
    precision = resolve_precision(config.train.precision, device)

    # On the device before the optimizer exists, so a resumed optimizer state lands next to its parameters.
    model = prepare_detector(config, device)
    optimizer = build_optimizer(model, config)
    restored = ray.train.get_checkpoint()  # ray: set after a worker-group restart or a same-name rerun
    with (restored.as_directory() if restored is not None else contextlib.nullcontext()) as restored_dir:
        restored_file = Path(restored_dir) / RAY_CHECKPOINT_FILE if restored_dir else None
        state = latest_state(restored_file, loop_config.get("resume_from"), paths.checkpoints, config.model.name)
    history, start_epoch = start_from(model, optimizer, state, loop_config.get("init_from"), config.model.name,
                                      announce=rank == 0)
    train_model = ray.train.torch.prepare_model(model, move_to_device=False)  # ray: DDP when world > 1
    train_model = compile_if_configured(train_model, config)
    data_root = Path(loop_config["data_root"])
    loaders = make_loaders(config, data_root, input_size(config, model), rank, world_size,
                           cpus=loop_config["cpus_per_worker"])
    from deepfake_platform.data import face_preset_of, source_videos, video_sampling_of

    val_paths = [path for path, _ in getattr(loaders[1].dataset, "samples", [])]
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(paths.checkpoints)  # a run stopped mid-write left a temporary file
        for leftover in paths.checkpoints.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        clear_status(paths)
        writer = SummaryWriter(log_dir=str(paths.run_dir / "tensorboard"))
    try:
        run_epochs(config, model, train_model, optimizer, loaders, device, precision, paths=paths, history=history,
                   start_epoch=start_epoch, rank=rank, world_size=world_size, faces=face_preset_of(data_root),
                   videos=source_videos(data_root, val_paths) if val_paths else None,
                   report=lambda metrics, epoch_file: report_epoch(metrics, epoch_file, paths.checkpoints),
                   writer=writer, show_progress=rank == 0 and loop_config.get("progress", True),
                   progress_class=_progress_class(), sampling=video_sampling_of(data_root))
    finally:
        if writer is not None:
            writer.close()


def report_epoch(metrics: dict[str, float], epoch_file: Path | None, checkpoints_dir: Path) -> None:
    """Report an epoch to Ray Train (a barrier: every rank calls it); rank 0 hands Ray the epoch's checkpoint."""
    import ray.train  # ray:

    if epoch_file is None:
        ray.train.report(metrics, checkpoint=None)  # ray:
        return
    # Staged in the checkpoints folder, never in /tmp: a hard link cannot cross filesystems (a tmpfs /tmp, an
    # NFS output home), and where one cannot be made the file is copied.
    staging = checkpoints_dir / f"{STAGING_PREFIX}{int(metrics['epoch']):03d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        link_or_copy(epoch_file, staging / RAY_CHECKPOINT_FILE)
        # ray: Ray copies the directory into the run's storage before report returns.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _progress_class() -> Any:
    # Under Ray, tqdm_ray's updates travel to the driver, which draws one bar; plain tqdm elsewhere.
    if os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH") == "0":
        from ray.experimental.tqdm_ray import tqdm  # ray:

        return tqdm
    return None


def _quiet_ray_train_logs() -> None:
    # Ray Train logs every report and checkpoint at INFO from the worker; warnings and errors still show.
    # Its loggers are found by name, without importing Ray's private modules: the execution context's is
    # named after its file, the storage's after its module.
    import importlib.util

    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    names = [spec.origin] if spec is not None and spec.origin else []
    for name in [*names, "ray.train.v2._internal.execution.storage"]:
        logging.getLogger(name).setLevel(logging.WARNING)
