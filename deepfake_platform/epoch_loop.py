"""A training run's epochs: where it continues from, what each epoch's checkpoint holds, keeping the best.

Plain PyTorch, no Ray: `run_epochs` trains, validates, writes `checkpoints/<run>/epoch_XXX_auc_Y.pth`,
keeps `best.pth` on the best validation AUC and hands each epoch's metrics and file to `report`. Under Ray
Train, `deepfake_platform.orchestration.worker` supplies `report` (Ray's checkpoint and metrics barrier);
a test or a single process can pass any function.

Deterministic failures (a diverging loss, a broken data set or config) are DETERMINISTIC_ERRORS: the
launcher turns them into one sentence and never retries them. Only a lost worker or node is retried.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from deepfake_platform.checkpoints import (
    CheckpointError,
    DetectorCheckpoint,
    checkpoint_filename,
    epoch_checkpoints,
    link_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from deepfake_platform.config import ConfigError, ExperimentConfig
from deepfake_platform.metrics import auc_key
from deepfake_platform.outputs import RunPaths
from deepfake_platform.training import TrainingDiverged, train_one_epoch, validate
from models import parameter_table

# Mistakes that repeat on every attempt: shown as a sentence, never retried.
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (TrainingDiverged, ConfigError, CheckpointError, ValueError,
                                                         FileNotFoundError)

# report(metrics, epoch file or None): called once per epoch on every rank, the epoch file on rank 0 only.
Report = Callable[[dict[str, float], "Path | None"], None]


def epoch_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, config: ExperimentConfig, epoch: int,
                     metrics: dict[str, Any], history: list[dict[str, float]], faces: dict[str, Any],
                     precision: str, sampling: dict[str, int] | None = None) -> DetectorCheckpoint:
    """Everything an epoch's checkpoint holds: enough to resume exactly, rebuild the model alone and report.

    `sampling` is how the training set's videos were sampled (num_frames, every): recorded under `video`, so
    every door that scores a video samples it as the model was trained and validated."""
    video = dict(sampling or {})
    if "val_video_auc" in metrics:
        video.update(val_auc=float(metrics["val_video_auc"]), threshold=float(metrics["val_video_threshold"]))
    return DetectorCheckpoint(
        detector=config.model.name,
        detector_kwargs=dict(model.detector_kwargs),
        model_state_dict=model.state_dict(),
        optimizer_state_dict=optimizer.state_dict(),
        epoch=epoch,
        val_auc=float(metrics["val_auc"]),
        val_threshold=float(metrics["val_threshold"]),
        config=config.to_dict(),
        history=[dict(row) for row in history],
        pretrained_status=dict(getattr(model, "pretrained_status", {})),
        parameters=parameter_table(model),
        val_scores=metrics["scores"],
        faces=dict(faces),
        precision=precision,
        video=video,
    )


def latest_state(restored_file: Path | None, resume_from: str | None, checkpoints_dir: Path,
                 detector: str) -> DetectorCheckpoint | None:
    """The newest of: the orchestrator's restored checkpoint, an explicit --resume file, the run's latest epoch file.

    Without --resume the run's folder counts too, because a worker killed between writing its epoch file and
    reporting it leaves Ray one epoch behind; and it makes rerunning a stopped run under its name continue it.
    """
    candidates = []
    if restored_file is not None:
        candidates.append(read_checkpoint(restored_file, DetectorCheckpoint))
    if resume_from:
        candidates.append(read_checkpoint(resume_from, DetectorCheckpoint))
    else:
        # An explicit --resume file wins over later epochs left in the folder (as in the reference's train.py).
        own = epoch_checkpoints(checkpoints_dir)
        if own:
            candidates.append(read_checkpoint(own[-1], DetectorCheckpoint))
    for record in candidates:
        if record.detector != detector:
            raise CheckpointError(
                f"the checkpoint to continue from holds a {record.detector} detector, not {detector}; choose a new "
                f"--name (the run folder {checkpoints_dir} belongs to another experiment)."
            )
    return max(candidates, key=lambda record: record.epoch) if candidates else None


def start_from(model: nn.Module, optimizer: torch.optim.Optimizer, state: DetectorCheckpoint | None,
               init_from: str | None, detector: str, *, announce: bool) -> tuple[list[dict[str, float]], int]:
    """Load where the run continues from (a resumed state, or a fine-tune's starting weights); its history and
    first epoch. Call with the model on its device before wrapping it, so the optimizer state lands beside it."""
    if state is not None:
        model.load_state_dict(state.model_state_dict)
        optimizer.load_state_dict(state.optimizer_state_dict)
        if announce:
            print(f"Resuming after epoch {state.epoch} (val AUC {state.val_auc:.4f}).", flush=True)
        return [row for row in state.history if row["epoch"] <= state.epoch], state.epoch + 1
    if init_from:
        # Fine-tuning: start from another run's weights, with a fresh optimizer and epoch count.
        start = read_checkpoint(init_from, DetectorCheckpoint)
        if start.detector != detector:
            raise CheckpointError(f"{init_from} holds a {start.detector} detector, not {detector}.")
        model.load_state_dict(start.model_state_dict)
    return [], 0


def run_epochs(config: ExperimentConfig, model: nn.Module, train_model: nn.Module, optimizer: torch.optim.Optimizer,
               loaders: tuple[DataLoader, DataLoader], device: torch.device, precision: str, *, paths: RunPaths,
               history: list[dict[str, float]], start_epoch: int, rank: int, world_size: int,
               faces: dict[str, Any], videos: list[str] | None, report: Report, writer: Any = None,
               show_progress: bool = False, progress_class: Any = None,
               sampling: dict[str, int] | None = None) -> None:
    """Train epochs `start_epoch`..`train.epochs - 1`; rank 0 writes each epoch's checkpoint and keeps best.pth.

    `model` is the plain module (validated and saved); `train_model` may wrap it (DDP, torch.compile).
    """
    train_loader, val_loader = loaders
    best_auc = max((auc_key(row["val_auc"]) for row in history), default=-math.inf)
    for epoch in range(start_epoch, config.train.epochs):
        train_loader.sampler.set_epoch(epoch)
        getattr(train_loader.dataset, "set_epoch", lambda _: None)(epoch)
        steps_per_epoch = len(train_loader)

        def log_batch(step: int, loss: float, epoch: int = epoch, steps: int = steps_per_epoch) -> None:
            if writer is not None:
                writer.add_scalar("train/batch_loss", loss, epoch * steps + step)

        epoch_start = time.perf_counter()
        train_stats = train_one_epoch(
            train_model, train_loader, optimizer, device, precision, epoch=epoch,
            max_steps=config.train.max_steps_per_epoch, on_batch=log_batch, show_progress=show_progress,
            progress_class=progress_class,
        )
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingDiverged(
                f"training diverged in epoch {epoch}: the weights are no longer finite numbers at learning rate "
                f"{config.train.lr:g}. Lower train.lr or train in fp32 (--set train.precision=fp32); the "
                "checkpoints of earlier epochs are kept."
            )
        # Validate the unwrapped model: DDP's forward is a collective, and shards differ in length.
        val_stats = validate(model, val_loader, device, precision, videos)
        scores = val_stats.pop("scores")
        metrics = {"epoch": epoch, **train_stats, **val_stats, "lr": optimizer.param_groups[0]["lr"],
                   "epoch_time_s": time.perf_counter() - epoch_start, "world_size": world_size,
                   "threads": torch.get_num_threads()}
        history.append({k: float(v) for k, v in metrics.items()})
        epoch_file = None
        if rank == 0:
            if writer is not None:
                log_epoch(writer, metrics)
            record = epoch_checkpoint(model, optimizer, config, epoch, {**metrics, "scores": scores}, history, faces,
                                      precision, sampling)
            epoch_file = write_checkpoint(record, paths.checkpoints / checkpoint_filename(epoch, metrics["val_auc"]))
            # An attempt killed after writing this epoch's file leaves one with another AUC: one file per epoch.
            for stale in epoch_checkpoints(paths.checkpoints, epoch=epoch):
                if stale != epoch_file:
                    stale.unlink(missing_ok=True)
            if auc_key(metrics["val_auc"]) > best_auc:
                best_auc = auc_key(metrics["val_auc"])
                link_checkpoint(epoch_file, paths.checkpoints / "best.pth")
            print(
                f"epoch {epoch}: train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}, "
                f"val AUC {metrics['val_auc']:.4f}, {metrics['images_per_s']:.2f} img/s, "
                f"{metrics['epoch_time_s']:.0f} s -> {epoch_file.name}",
                flush=True,
            )
        report(metrics, epoch_file)


def log_epoch(writer: Any, metrics: dict[str, float]) -> None:
    """An epoch's metrics as TensorBoard scalars."""
    writer.add_scalar("train/epoch_loss", metrics["train_loss"], metrics["epoch"])
    writer.add_scalar("val/loss", metrics["val_loss"], metrics["epoch"])
    writer.add_scalar("val/auc", metrics["val_auc"], metrics["epoch"])
    writer.add_scalar("train/lr", metrics["lr"], metrics["epoch"])
    writer.add_scalar("train/images_per_s", metrics["images_per_s"], metrics["epoch"])
    writer.flush()
