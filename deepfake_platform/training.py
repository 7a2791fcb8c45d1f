"""The training loop: plain PyTorch, run on each Ray Train worker.

Read top to bottom: the building blocks (`build_detector`, `make_loaders`, `build_optimizer`), one
epoch (`train_one_epoch`), validation (`validate`), what a checkpoint holds (`epoch_checkpoint`), where
a run continues from (`latest_state`), then `train_loop_per_worker`, whose Ray lines are marked
`# ray:`. The same loop serves the main job, every Ray Tune trial, fine-tuning and the benchmark;
the launcher that starts it on Ray lives in `deepfake_platform.orchestration.train`.

Deterministic failures (a diverging loss, a broken data set or config) end the loop with a status
the launcher turns into one sentence; they are never retried. Only a lost worker or node is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from deepfake_platform.checkpoints import (
    CheckpointError,
    DetectorCheckpoint,
    checkpoint_filename,
    link_checkpoint,
    read_checkpoint,
    remove_partial_writes,
    write_checkpoint,
)
from deepfake_platform.config import ConfigError, ExperimentConfig, config_from_dict
from deepfake_platform.metrics import auc_key, choose_threshold, roc_auc, video_scores
from deepfake_platform.outputs import RunPaths, clear_status, write_status
from deepfake_platform.predict import autocast, forward_logits, resolve_precision
from models import parameter_table

RAY_CHECKPOINT_FILE = "checkpoint.pth"


class TrainingDiverged(RuntimeError):
    """The loss, the weights or the validation scores stopped being finite numbers."""


# Mistakes that repeat on every attempt: shown as a sentence, never retried.
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (TrainingDiverged, ConfigError, CheckpointError, ValueError,
                                                         FileNotFoundError)


# ---- building blocks (plain PyTorch: unit-testable without Ray) ---------------------------------------


def build_detector(config: ExperimentConfig) -> nn.Module:
    """The detector a config names, with its pretrained policy and freezing applied."""
    from models import create_detector

    kwargs = dict(config.model.kwargs)
    kwargs.setdefault("pretrained_policy", config.model.pretrained)
    kwargs.setdefault("freeze", config.model.freeze)
    return create_detector(config.model.name, **kwargs)


def prepare_detector(config: ExperimentConfig, device: torch.device) -> nn.Module:
    """The configured detector on `device`, channels_last when configured, attention tuned for the device."""
    model = build_detector(config).to(device)
    if config.train.channels_last:
        # oneDNN and cuDNN convolutions run fastest on NHWC tensors.
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        # On CPU the flash-attention backward kernel costs ~10% of a ViT-B/16 training step at 197 tokens;
        # timm's plain q @ k -> softmax -> @ v path (bf16 GEMMs) does the same work in a third of the time.
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
    return model


def image_size_for(config: ExperimentConfig, model: nn.Module) -> int:
    """The configured input size, or the detector's own default."""
    return config.data.image_size or int(model.default_image_size)


def build_optimizer(model: nn.Module, config: ExperimentConfig) -> torch.optim.Optimizer:
    """Adam over the trainable parameters; the fused kernel (one pass over the weights per step) on CPU and CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=config.train.lr, weight_decay=config.train.weight_decay, fused=fused or None)


def compile_if_configured(model: nn.Module, config: ExperimentConfig) -> nn.Module:
    """`torch.compile(model)` when train.compile is set (parameters shared with `model`), else `model`."""
    return torch.compile(model) if config.train.compile else model


class ShardSampler(torch.utils.data.Sampler):
    """Every index exactly once across ranks (no padding), so validation metrics count each image once."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def loader_workers(config: ExperimentConfig, cpus: float) -> int:
    """DataLoader worker processes: data.loader_workers, or on a GPU when that is 0, the CPUs less one (up to 8)."""
    if config.data.loader_workers or not config.scaling.use_gpu:
        return config.data.loader_workers
    # A GPU step outruns one process decoding JPEGs: keep one CPU for the training process, decode on the rest.
    return int(min(8, max(1, cpus - 1)))


def make_loaders(config: ExperimentConfig, data_root: Path, image_size: int, rank: int, world_size: int, *,
                 cpus: float = 1.0) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders for this rank (distributed sampler for train, exact shards for val)."""
    from deepfake_platform.data import build_training_set, build_validation_set

    train_set = build_training_set(data_root, image_size, self_blend=config.data.self_blend, seed=config.train.seed)
    val_set = build_validation_set(data_root, image_size, self_blend=config.data.self_blend, seed=config.train.seed)
    train_sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True,
                                       seed=config.train.seed)
    workers = loader_workers(config, cpus)
    common = {
        "batch_size": config.train.batch_size,
        "num_workers": workers,
        # Ray workers are threaded processes: fork would copy their locks.
        "multiprocessing_context": "forkserver" if workers > 0 else None,
        # Not persistent: each epoch's workers see the dataset's epoch (fresh self-blends).
        "persistent_workers": False,
        # Page-locked batches copy to the GPU asynchronously (the `non_blocking=True` in the loops).
        "pin_memory": config.scaling.use_gpu,
    }
    # A compiled model recompiles for a short last batch: drop it (a different few images each epoch).
    train_loader = DataLoader(train_set, sampler=train_sampler, drop_last=config.train.compile, **common)
    val_loader = DataLoader(val_set, sampler=ShardSampler(len(val_set), rank, world_size), **common)
    return train_loader, val_loader


def _all_ranks_agree(ok: bool, device: torch.device) -> bool:
    """True when `ok` holds on every rank: a divergence stops every worker at the same step."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ok
    flag = torch.tensor([1.0 if ok else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _progress(iterable: Iterable, total: int, description: str, enabled: bool):
    if not enabled:
        return iterable
    # Under Ray, tqdm_ray's updates travel to the driver, which draws one bar; plain tqdm elsewhere.
    if os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH") == "0":
        from ray.experimental.tqdm_ray import tqdm  # ray:
    else:
        from tqdm import tqdm
    return tqdm(iterable, total=total, desc=description, unit="batch")


def train_one_epoch(
    model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, device: torch.device, precision: str, *,
    epoch: int, max_steps: int = 0, on_batch: Callable[[int, float], None] | None = None, show_progress: bool = False,
) -> dict[str, float]:
    """One pass over the training data; mean loss, image count, throughput and data-wait share.

    A loss that is not a finite number on any rank raises TrainingDiverged at that step, on every rank.
    """
    model.train()
    criterion = nn.BCEWithLogitsLoss()
    total_loss, seen, data_wait = 0.0, 0, 0.0
    steps = len(loader) if not max_steps else min(max_steps, len(loader))
    bar = _progress(loader, steps, f"epoch {epoch}", show_progress)
    start = tick = time.perf_counter()
    try:
        for step, (images, labels) in enumerate(bar):
            if max_steps and step >= max_steps:
                break
            data_wait += time.perf_counter() - tick
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True).float()
            with autocast(device, precision):
                logits = model(images)
            loss = criterion(logits.float(), labels)
            batch_loss = float(loss.detach())
            if not _all_ranks_agree(math.isfinite(batch_loss), device):
                lr = optimizer.param_groups[0]["lr"]
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch}, step {step}: the loss became {batch_loss} at learning "
                    f"rate {lr:g}. Lower train.lr (--set train.lr=..., the reference recipe uses 1e-4) or train in "
                    "fp32 (--set train.precision=fp32). Nothing from this epoch was saved; earlier epochs' "
                    "checkpoints are kept."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += batch_loss * labels.numel()
            seen += labels.numel()
            if on_batch is not None:
                on_batch(step, batch_loss)
            if show_progress:
                bar.set_description(f"epoch {epoch} | loss {total_loss / seen:.4f} | "
                                    f"{seen / (time.perf_counter() - start):.2f} img/s")
            tick = time.perf_counter()
    finally:
        if show_progress:
            bar.close()
    elapsed = time.perf_counter() - start
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_images": seen,
        "train_time_s": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
        "data_wait_fraction": data_wait / elapsed if elapsed > 0 else 0.0,
    }


def gather(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every rank's share concatenated (each image once), so every rank computes the same metrics."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return arrays
    shares: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, arrays)
    return tuple(np.concatenate([share[i] for share in shares]) for i in range(len(arrays)))


def validate(model: nn.Module, loader: DataLoader, device: torch.device, precision: str,
             videos: list[str] | None = None) -> dict[str, Any]:
    """Validation loss, AUC, the decision threshold and the scores of each class, over every image once;
    with `videos` (each validation sample's source video), the video AUC and the video threshold too."""
    logits, labels = [], []
    for images, batch_labels in loader:
        logits.append(forward_logits(model, images, device, precision))
        labels.append(batch_labels.numpy())
    logits_all = np.concatenate(logits) if logits else np.zeros(0, np.float32)
    labels_all = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
    indices = np.asarray(getattr(loader.sampler, "indices", range(len(labels_all))), dtype=np.int64)
    logits_all, labels_all, indices = gather(logits_all, labels_all, indices)
    if not np.isfinite(logits_all).all():
        raise TrainingDiverged(
            "training diverged: the model's validation outputs are not finite numbers. Lower train.lr or train "
            "in fp32 (--set train.precision=fp32); the checkpoints of earlier epochs are kept."
        )
    loss = nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(logits_all), torch.from_numpy(labels_all).float(), reduction="sum")
    scores = 1.0 / (1.0 + np.exp(-logits_all.astype(np.float64)))
    metrics = {
        "val_loss": float(loss) / max(len(labels_all), 1),
        "val_auc": roc_auc(labels_all, scores),
        "val_threshold": choose_threshold(labels_all, scores),
        "val_images": int(len(labels_all)),
        "scores": {"real": scores[labels_all == 0].tolist(), "fake": scores[labels_all == 1].tolist()},
    }
    if videos is not None:
        # A video's score is the mean of its frames' (DeepfakeBench); its threshold is chosen on videos.
        per_video, video_labels, _ = video_scores(scores, labels_all, [videos[i] for i in indices])
        metrics["val_video_auc"] = roc_auc(video_labels, per_video)
        metrics["val_video_threshold"] = choose_threshold(video_labels, per_video)
    return metrics


def epoch_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, config: ExperimentConfig, epoch: int,
                     metrics: dict[str, Any], history: list[dict[str, float]], faces: dict[str, Any],
                     precision: str) -> DetectorCheckpoint:
    """Everything an epoch's checkpoint holds: enough to resume exactly, rebuild the model alone and report."""
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
        video=({"val_auc": float(metrics["val_video_auc"]), "threshold": float(metrics["val_video_threshold"])}
               if "val_video_auc" in metrics else {}),
    )


def latest_state(restored_dir: str | None, resume_from: str | None, checkpoints_dir: Path,
                 detector: str) -> DetectorCheckpoint | None:
    """The newest of: Ray's restored checkpoint, an explicit --resume file, and the run's own latest epoch file.

    Without --resume the run's folder counts too, because a worker killed between writing its epoch file and
    reporting it leaves Ray one epoch behind; and it makes rerunning a stopped run under its name continue it.
    """
    candidates = []
    if restored_dir is not None:
        candidates.append(read_checkpoint(Path(restored_dir) / RAY_CHECKPOINT_FILE, DetectorCheckpoint))
    if resume_from:
        candidates.append(read_checkpoint(resume_from, DetectorCheckpoint))
    else:
        # An explicit --resume file wins over later epochs left in the folder (as in the reference's train.py).
        own = sorted(checkpoints_dir.glob("epoch_*_auc_*.pth"))
        if own:
            candidates.append(read_checkpoint(own[-1], DetectorCheckpoint))
    for record in candidates:
        if record.detector != detector:
            raise CheckpointError(
                f"the checkpoint to continue from holds a {record.detector} detector, not {detector}; choose a new "
                f"--name (the run folder {checkpoints_dir} belongs to another experiment)."
            )
    return max(candidates, key=lambda record: record.epoch) if candidates else None


def _quiet_ray_train_logs() -> None:
    # Ray Train logs every report and checkpoint at INFO from the worker; warnings and errors still show.
    from ray.train.v2._internal.execution import context, storage  # ray:

    for logger in (context.logger, storage.logger):
        logger.setLevel(logging.WARNING)


def _set_threads(cpus: float) -> None:
    # Ray sets OMP_NUM_THREADS to the worker's CPU count; set torch's too, so each worker uses its share.
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


# ---- the per-worker loop (runs inside each Ray Train worker) ----------------------------------------


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
    _set_threads(loop_config["cpus_per_worker"])
    torch.manual_seed(config.train.seed)
    np.random.seed(config.train.seed + rank)
    device = ray.train.torch.get_device() if config.scaling.use_gpu else torch.device("cpu")  # ray:
    precision = resolve_precision(config.train.precision, device)

    # On the device before the optimizer exists, so a resumed optimizer state lands next to its parameters.
    model = prepare_detector(config, device)
    optimizer = build_optimizer(model, config)
    restored = ray.train.get_checkpoint()  # ray: set after a worker-group restart or a same-name rerun
    with (restored.as_directory() if restored is not None else contextlib.nullcontext()) as restored_dir:
        state = latest_state(restored_dir, loop_config.get("resume_from"), paths.checkpoints, config.model.name)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state.model_state_dict)
        optimizer.load_state_dict(state.optimizer_state_dict)
        history = [row for row in state.history if row["epoch"] <= state.epoch]
        start_epoch = state.epoch + 1
        if rank == 0:
            print(f"Resuming after epoch {state.epoch} (val AUC {state.val_auc:.4f}).", flush=True)
    elif loop_config.get("init_from"):
        # Fine-tuning: start from another run's weights, with a fresh optimizer and epoch count.
        start = read_checkpoint(loop_config["init_from"], DetectorCheckpoint)
        if start.detector != config.model.name:
            raise CheckpointError(f"{loop_config['init_from']} holds a {start.detector} detector, not {config.model.name}.")
        model.load_state_dict(start.model_state_dict)
    train_model = ray.train.torch.prepare_model(model, move_to_device=False)  # ray: DDP when world > 1
    train_model = compile_if_configured(train_model, config)
    data_root = Path(loop_config["data_root"])
    train_loader, val_loader = make_loaders(config, data_root, image_size_for(config, model), rank, world_size,
                                            cpus=loop_config["cpus_per_worker"])
    from deepfake_platform.data import face_preset_of, source_videos

    faces = face_preset_of(data_root)
    val_paths = [path for path, _ in getattr(val_loader.dataset, "samples", [])]
    videos = source_videos(data_root, val_paths) if val_paths else None

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(paths.checkpoints)  # a run stopped mid-write left a temporary file
        clear_status(paths)
        writer = SummaryWriter(log_dir=str(paths.run_dir / "tensorboard"))
    best_auc = max((auc_key(row["val_auc"]) for row in history), default=-math.inf)

    try:
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
                max_steps=config.train.max_steps_per_epoch, on_batch=log_batch,
                show_progress=rank == 0 and loop_config.get("progress", True),
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
                       "epoch_time_s": time.perf_counter() - epoch_start, "world_size": world_size}
            history.append({k: float(v) for k, v in metrics.items()})
            checkpoint = None
            if rank == 0:
                _log_epoch(writer, metrics)
                record = epoch_checkpoint(model, optimizer, config, epoch, {**metrics, "scores": scores}, history, faces,
                                          precision)
                epoch_file = write_checkpoint(record, paths.checkpoints / checkpoint_filename(epoch, metrics["val_auc"]))
                # An attempt killed after writing this epoch's file leaves one with another AUC: one file per epoch.
                for stale in paths.checkpoints.glob(f"epoch_{epoch:03d}_auc_*.pth"):
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
                staging = Path(tempfile.mkdtemp(prefix="ckpt_"))
                # A hard link: Ray copies the file into its storage without a second full write here.
                os.link(epoch_file, staging / RAY_CHECKPOINT_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(str(staging))  # ray:
            ray.train.report(metrics, checkpoint=checkpoint)  # ray: a barrier; rank 0 alone passes a checkpoint
            if checkpoint is not None:
                shutil.rmtree(checkpoint.path, ignore_errors=True)
    finally:
        if writer is not None:
            writer.close()


def _log_epoch(writer: Any, metrics: dict[str, float]) -> None:
    writer.add_scalar("train/epoch_loss", metrics["train_loss"], metrics["epoch"])
    writer.add_scalar("val/loss", metrics["val_loss"], metrics["epoch"])
    writer.add_scalar("val/auc", metrics["val_auc"], metrics["epoch"])
    writer.add_scalar("train/lr", metrics["lr"], metrics["epoch"])
    writer.add_scalar("train/images_per_s", metrics["images_per_s"], metrics["epoch"])
    writer.flush()

