"""Runners: a loop that, given a step count, runs that many steps and returns its images per second.

The naive ones are plain PyTorch (fp32, default threads, plain Adam); the platform's ones run its own
set-up and `train_one_epoch` or `Predictor.predict_tensor`, so the two compare what the platform adds.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from benchmarks.timing import Runner, images_per_s
from deepfake_platform.config import ExperimentConfig
from deepfake_platform.predict import Predictor, resolve_precision
from deepfake_platform.training import (
    build_optimizer,
    compile_if_configured,
    prepare_detector,
    train_one_epoch,
)


def endless(batches: Iterable) -> Iterator:
    """Cycle through a loader forever, re-iterating it (a new shuffle) each pass."""
    while True:
        yield from batches


def synthetic_batches(
    count: int, batch_size: int, image_size: int, device: torch.device, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` references to one random (images, labels) batch on `device`, channels_last: a loader without I/O."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, 2, (batch_size,), generator=generator).float()
    batch = (images.to(device).contiguous(memory_format=torch.channels_last), labels.to(device))
    return [batch] * count


def naive_fp32_train_runner(model: nn.Module, loader: Iterable, lr: float = 1e-4) -> Runner:
    """The plain PyTorch loop: fp32, contiguous inputs, torch's default threads, Adam with default options."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = nn.BCEWithLogitsLoss()
    batches = endless(loader)
    device = next(model.parameters()).device

    def step() -> int:
        images, labels = next(batches)
        loss = criterion(model(images.to(device)), labels.to(device).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(labels)

    return lambda steps: images_per_s(step, steps, device)


def platform_train_runner(config: ExperimentConfig, loader: Sequence | torch.utils.data.DataLoader,
                          device: torch.device) -> Runner:
    """The platform's training step without Ray: its model set-up and `train_one_epoch` over `loader`."""
    model = prepare_detector(config, device)
    optimizer = build_optimizer(model, config)
    train_model = compile_if_configured(model, config)
    precision = resolve_precision(config.train.precision, device)
    epochs = itertools.count()
    return lambda steps: train_one_epoch(train_model, loader, optimizer, device, precision,
                                         epoch=next(epochs), max_steps=steps)


def naive_fp32_infer_runner(model: nn.Module, batch: torch.Tensor) -> Runner:
    """Plain fp32 inference: eval mode, no_grad, contiguous inputs, torch's default threads."""
    model.eval()
    device = next(model.parameters()).device
    batch = batch.to(device)

    @torch.no_grad()
    def step() -> int:
        model(batch)
        return len(batch)

    return lambda steps: images_per_s(step, steps, device)


def predictor_runner(predictor: Predictor, batch: torch.Tensor) -> Runner:
    """The platform's predict path: `Predictor.predict_tensor` on a preprocessed batch."""

    def step() -> int:
        return len(predictor.predict_tensor(batch))

    return lambda steps: images_per_s(step, steps, predictor.device)
