"""int8 agreement on a model that separates its classes: the tiny hybrid trained on a generated task where a
bright square marks the fakes, so its scores spread away from the threshold and a changed label means the
quantisation moved a score that mattered (a random model's scores all sit within hundredths of 0.5)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.workspace import benchmark_config, save_random_checkpoint
from deepfake_platform.checkpoints import input_size
from deepfake_platform.config import with_changes
from deepfake_platform.training import build_optimizer, make_loaders, prepare_detector, train_one_epoch

TINY = "hybrid_tiny"


def square_picture(rng: np.random.Generator, size: int, fake: bool) -> Image.Image:
    """A noisy gradient; a fake has a bright square of random size and place pasted on it."""
    gradient = np.linspace(0, 180, size)[None, :, None] * np.ones((size, 1, 3)) * rng.uniform(0.3, 1.0)
    pixels = gradient + rng.normal(0, 25, (size, size, 3))
    if fake:
        side = int(rng.integers(size // 4, size // 2))
        left, top = (int(v) for v in rng.integers(0, size - side, 2))
        pixels[top:top + side, left:left + side] = 235 + rng.normal(0, 10, (side, side, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def build_square_task(root: Path, counts: dict[str, int], size: int = 64, seed: int = 0) -> Path:
    """train/val/test folders of real and fake JPEGs, as the platform's data layout wants them, under `root`."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for label, name in enumerate(("real", "fake")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count // 2):
                square_picture(rng, size, fake=bool(label)).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def train_square_detector(workdir: Path, counts: dict[str, int] | None = None, epochs: int = 3,
                          seed: int = 0) -> tuple[Path, Path]:
    """The tiny hybrid trained in fp32 on the square task: (checkpoint, data root). The record's data root is
    the task's, so the int8 path calibrates on its validation images."""
    data_root = build_square_task(workdir / "square_task", counts or {"train": 192, "val": 64, "test": 128},
                                  seed=seed)
    config = benchmark_config(workdir, data_root, TINY, 16, lr=1e-3, epochs=epochs, precision="fp32", seed=seed)
    config = with_changes(config, data={"image_size": 0})
    device = torch.device("cpu")
    torch.manual_seed(seed)
    model = prepare_detector(config, device)
    optimizer = build_optimizer(model, config)
    train_loader, _ = make_loaders(config, data_root, input_size(config, model), 0, 1)
    for epoch in range(epochs):
        train_loader.sampler.set_epoch(epoch)
        train_one_epoch(model, train_loader, optimizer, device, "fp32", epoch=epoch)
    model.eval()
    return save_random_checkpoint(model, config, workdir / "square_tiny.pth"), data_root


def scores_spread(probabilities: np.ndarray, threshold: float, margin: float = 0.05) -> float:
    """The share of scores at least `margin` away from `threshold`: how much of the judgement is not a coin toss."""
    return float(np.mean(np.abs(np.asarray(probabilities) - threshold) >= margin))


def measure_int8_on_square_task(workdir: Path, test_images: int, epochs: int) -> dict[str, dict[str, Any]]:
    """int8 (the platform's one int8 path, calibrated on the task's validation images) against the predict path
    on the held-out test images of the tiny hybrid trained on the square task."""
    from benchmarks.in_process import int8_agreement

    counts = {"train": 192, "val": 64, "test": 2 * math.ceil(test_images / 2)}
    checkpoint, data_root = train_square_detector(workdir, counts, epochs=epochs)
    return {"int8_accuracy": int8_agreement(checkpoint, data_root, "test")}
