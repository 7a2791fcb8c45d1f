"""The one predict path: images in, fake probabilities out, for validation, evaluation, ensembles, Serve,
batch scoring and the benchmark.

`forward_logits` is the single forward pass every score goes through (precision, channels_last,
inference mode). `Predictor` wraps a detector checkpoint with its preprocessing, its calibration (the
probabilities it returns are calibrated: deepfake_platform.calibration) and threshold;
`FrequencyPredictor` does the same for the frequency-domain detector. Both score lists of RGB PIL
images with `predict_images`; an ensemble (deepfake_platform.ensemble) combines them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepfake_platform.calibration import Calibration
from deepfake_platform.checkpoints import (
    DetectorCheckpoint,
    FrequencyCheckpoint,
    build_model,
    file_sha256,
    input_size,
    read_checkpoint,
)
from deepfake_platform.errors import InvalidInput

# What `precision` is when nobody chose one: bf16 where the hardware runs it natively, else fp32.
DEFAULT_PRECISION = "auto"


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(check is not None and check() for check in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` becomes bf16 where the hardware runs it natively, else fp32 (int8 is asked for, never chosen)."""
    if precision == "int8" and device.type != "cpu":
        raise InvalidInput("precision int8 runs on the CPU (ONNX Runtime); on a GPU use bf16.")
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


@torch.inference_mode()
def forward_logits(model: torch.nn.Module, images: torch.Tensor, device: torch.device, precision: str) -> np.ndarray:
    """The fake logits of a preprocessed batch (B, 3, H, W), as float32 on the CPU; the model in eval mode."""
    model.eval()
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        logits = model(images)
    return logits.float().cpu().numpy()


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


class Predictor:
    """A detector loaded from a checkpoint, ready to score images in batches."""

    def __init__(self, checkpoint: str | Path | DetectorCheckpoint, device: str = "cpu",
                 precision: str = DEFAULT_PRECISION, *,
                 compile: bool = False, path: str | Path | None = None):
        from deepfake_platform.data import build_transform

        if isinstance(checkpoint, DetectorCheckpoint):
            record, path = checkpoint, Path(path) if path is not None else None
        else:
            path = Path(checkpoint)
            record = read_checkpoint(path, DetectorCheckpoint)
        self.record = record
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        model = build_model(record).eval().to(self.device)
        model = model.to(memory_format=torch.channels_last)
        self.module = model
        # compile: fused kernels for a long-running server (each new batch size compiles once, on first use).
        self.model = torch.compile(model) if compile else model
        image_size = input_size(record.experiment_config, model)
        self.transform = build_transform("eval", image_size)
        self.faces = dict(record.faces)
        # Old records have none: the identity, so they score exactly as before.
        self.calibration = Calibration.from_dict(record.calibration)
        sha256 = file_sha256(path) if path is not None else ""
        self.info = ModelInfo(
            name=record.detector,
            checkpoint=path.name if path is not None else "",
            sha256=sha256,
            threshold=record.decision_threshold,
            image_size=image_size,
            val_auc=float(record.val_auc),
            epoch=int(record.epoch),
        )
        # int8: the same model quantised (calibrated on the checkpoint's validation images) and run by ONNX
        # Runtime; explanations still use the fp32 module.
        self.int8 = None
        if self.precision == "int8":
            from deepfake_platform.export import int8_model

            self.int8 = int8_model(self)

    def predict_logits(self, images: torch.Tensor) -> np.ndarray:
        """The detector's raw (uncalibrated) logits for a preprocessed batch (B, 3, H, W)."""
        if self.int8 is not None:
            return self.int8(images)
        return forward_logits(self.model, images, self.device, self.precision)

    def predict_tensor(self, images: torch.Tensor) -> np.ndarray:
        """Calibrated fake probabilities for a preprocessed batch (B, 3, H, W)."""
        return self.calibration.apply(self.predict_logits(images)).astype(np.float32)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The eval preset applied to RGB PIL images, stacked into a batch."""
        return torch.stack([self.transform(image) for image in images])

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Fake probabilities for RGB PIL images."""
        if not images:
            return np.zeros(0, dtype=np.float32)
        return self.predict_tensor(self.preprocess(images))

    def predict_prepared(self, pictures: Sequence[np.ndarray]) -> np.ndarray:
        """Fake probabilities for pictures already through the eval geometry (uint8 HWC arrays of the model's
        input size, as `self.transform.geometry` makes them elsewhere, e.g. in Ray Data's CPU tasks)."""
        if not len(pictures):
            return np.zeros(0, dtype=np.float32)
        return self.predict_tensor(torch.stack([self.transform.to_tensor(Image.fromarray(p)) for p in pictures]))


class FrequencyPredictor:
    """A fitted frequency-domain detector scoring PIL images like Predictor does."""

    def __init__(self, checkpoint: str | Path | FrequencyCheckpoint, *, path: str | Path | None = None):
        from models import FrequencyDetector

        if isinstance(checkpoint, FrequencyCheckpoint):
            record, path = checkpoint, Path(path or "frequency.pth")
        else:
            path = Path(checkpoint)
            record = read_checkpoint(path, FrequencyCheckpoint)
        self.record = record
        self.detector = FrequencyDetector.from_state(record.state)
        self.faces: dict[str, Any] = {}
        self.calibration = Calibration()  # its logistic regression's probabilities are its own
        # image_size 0: the spectrum is taken over the whole decoded image, at its own size.
        self.info = ModelInfo(name="frequency", checkpoint=path.name, sha256=file_sha256(path) if path.is_file() else "",
                              threshold=record.decision_threshold, image_size=0, val_auc=float(record.val_auc),
                              epoch=0)

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Fake probabilities for RGB PIL images."""
        if not images:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self.detector.predict_proba(list(images)), dtype=np.float32).reshape(-1)
