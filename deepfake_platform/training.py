"""Training, one step at a time: plain PyTorch, no Ray.

Read top to bottom: the building blocks (`build_detector`, `make_loaders`, `build_optimizer`), one
epoch (`train_one_epoch`), validation (`validate`). The run of epochs that checkpoints and keeps the
best is `deepfake_platform.epoch_loop`; the Ray Train worker that runs it on every node is
`deepfake_platform.orchestration.worker`. The same loop serves the main job, every Ray Tune trial,
fine-tuning and the benchmark.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from deepfake_platform.config import ExperimentConfig
from deepfake_platform.metrics import choose_threshold, roc_auc, video_scores
from deepfake_platform.predict import autocast, forward_logits


class TrainingDiverged(RuntimeError):
    """The loss, the weights or the validation scores stopped being finite numbers."""


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


def threads_for(cpus: float) -> int:
    """The torch and OpenMP threads of a process holding `cpus` CPUs: its whole cores, at least one."""
    return max(1, int(cpus))


def set_threads(cpus: float) -> int:
    """Use `cpus` cores for torch's intra-op threads (at least one); the count set."""
    # Ray sets OMP_NUM_THREADS to the worker's CPU count; set torch's too, so each worker uses its share.
    threads = threads_for(cpus)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads


def train_one_epoch(
    model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, device: torch.device, precision: str, *,
    epoch: int, max_steps: int = 0, on_batch: Callable[[int, float], None] | None = None, show_progress: bool = False,
    progress_class: Any = None,
) -> dict[str, float]:
    """One pass over the training data; mean loss, image count, throughput and data-wait share.

    `progress_class` draws the bar when `show_progress` (default tqdm; under Ray, the orchestrator passes
    Ray's tqdm, whose updates travel to the driver).

    A loss that is not a finite number on any rank raises TrainingDiverged at that step, on every rank.
    """
    model.train()
    criterion = nn.BCEWithLogitsLoss()
    total_loss, seen, data_wait = 0.0, 0, 0.0
    steps = len(loader) if not max_steps else min(max_steps, len(loader))
    bar = (progress_class or tqdm)(loader, total=steps, desc=f"epoch {epoch}", unit="batch") if show_progress \
        else tqdm(loader, total=steps, disable=True)
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


