"""Real objects the tests share: tiny detector checkpoints, a tiny ensemble, photographs with texture, free ports."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfake_platform.checkpoints import DetectorCheckpoint, file_sha256, write_checkpoint
from deepfake_platform.config import ExperimentConfig, with_changes
from deepfake_platform.ensemble import (
    Combiner,
    EnsembleSpec,
    MemberSpec,
    save_ensemble,
    save_frequency_member,
)
from models import FrequencyDetector, create_detector, parameter_table


def tiny_record(*, epoch: int = 2, val_auc: float = 0.75, val_threshold: float = 0.5, seed: int = 0,
                detector: str = "hybrid_tiny", **fields) -> DetectorCheckpoint:
    """A real detector checkpoint record of a tiny detector with random weights."""
    torch.manual_seed(seed)
    model = create_detector(detector, pretrained_policy="off")
    config = with_changes(ExperimentConfig(), model={"name": detector, "pretrained": "off"}, data={"image_size": 0})
    return DetectorCheckpoint(
        detector=detector, detector_kwargs=dict(model.detector_kwargs), model_state_dict=model.state_dict(),
        epoch=epoch, val_auc=val_auc, val_threshold=val_threshold, config=config.to_dict(),
        parameters=parameter_table(model), **fields,
    )


def tiny_checkpoint(path: Path, val_threshold: float = 0.5, **fields) -> Path:
    """A tiny detector checkpoint written to `path`."""
    return write_checkpoint(tiny_record(val_threshold=val_threshold, **fields), path)


def frequency_member(path: Path, seed: int = 0) -> Path:
    """A frequency detector written to `path`, fitted on eight photographs: the odd ones sharp (fake), the even
    ones blurred (real)."""
    images = [photo(seed + i, 64) for i in range(8)]
    detector = FrequencyDetector().fit(
        [image if i % 2 else image.resize((16, 16)).resize((64, 64)) for i, image in enumerate(images)],
        [i % 2 for i in range(8)])
    return save_frequency_member(detector, path, val_threshold=0.5, val_auc=0.8)


def tiny_ensemble(path: Path, checkpoint: Path, combiner: Combiner, *, name: str, threshold: float,
                  seed: int = 0) -> Path:
    """An ensemble spec written to `path`: the tiny `checkpoint` ("hybrid") and a `frequency_member` beside
    it ("frequency"), combined by `combiner`."""
    frequency = frequency_member(path.parent / "frequency.pth", seed)
    spec = EnsembleSpec(name, [MemberSpec("hybrid", str(checkpoint), file_sha256(checkpoint)),
                               MemberSpec("frequency", str(frequency), file_sha256(frequency))],
                        combiner, threshold=threshold, val_auc=0.8)
    return save_ensemble(spec, path)


def encoded(image: Image.Image, fmt: str) -> bytes:
    """`image` encoded as `fmt` (JPEG, PNG, ...)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def photo(seed: int, size: int = 96) -> Image.Image:
    """A textured RGB picture: a gradient with noise."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, size)[None, :, None] * np.ones((size, 1, 3))
    return Image.fromarray(np.clip(gradient + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
