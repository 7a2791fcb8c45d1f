"""The predict path shared by evaluation, the benchmark and Ray Serve: checkpoint in, fake probabilities out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfake_platform.checkpoints import build_model_from_checkpoint, file_sha256, load_checkpoint


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(check is not None and check() for check in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` becomes bf16 where the hardware runs it natively, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when `precision` is bf16, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class ModelInfo:
    """What is deployed: shown by the API and written into reports."""

    name: str
    checkpoint: str
    sha256: str
    threshold: float
    image_size: int
    val_auc: float
    epoch: int


class Predictor:
    """A detector loaded from a checkpoint, ready to score images in batches."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", precision: str = "auto", *, compile: bool = False):
        from deepfake_platform.data import build_transform

        payload = load_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        model = build_model_from_checkpoint(payload).eval().to(self.device)
        if self.device.type == "cpu" or self.precision == "bf16":
            model = model.to(memory_format=torch.channels_last)
        # compile: fused kernels for a long-running server (each new batch size compiles once, on first use).
        self.model = torch.compile(model) if compile else model
        image_size = int(payload["config"].get("data", {}).get("image_size") or model.default_image_size)
        self.transform = build_transform("eval", image_size)
        self.info = ModelInfo(
            name=payload["detector"]["name"],
            checkpoint=Path(checkpoint).name,
            sha256=file_sha256(checkpoint),
            threshold=float(payload.get("val_threshold", 0.5)),
            image_size=image_size,
            val_auc=float(payload["val_auc"]),
            epoch=int(payload["epoch"]),
        )

    @torch.inference_mode()
    def predict_tensor(self, images: torch.Tensor) -> np.ndarray:
        """Fake probabilities for a preprocessed batch (B, 3, H, W)."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            logits = self.model(images)
        return torch.sigmoid(logits.float()).cpu().numpy()

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The eval preset applied to RGB PIL images, stacked into a batch."""
        return torch.stack([self.transform(image) for image in images])

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Fake probabilities for RGB PIL images."""
        if not images:
            return np.zeros(0, dtype=np.float32)
        return self.predict_tensor(self.preprocess(images))

    def predict_loader(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        """Scores and labels over a loader of (images, labels) batches."""
        scores, labels = [], []
        for images, batch_labels in batches:
            scores.append(self.predict_tensor(images))
            labels.append(batch_labels.numpy())
        if not scores:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        return np.concatenate(scores), np.concatenate(labels).astype(np.int64)
