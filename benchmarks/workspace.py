"""What the benchmark measures on: the platform's recipe writing only under a work folder, and a random checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from deepfake_platform.checkpoints import DetectorCheckpoint, write_checkpoint
from deepfake_platform.config import ExperimentConfig, with_changes
from models import parameter_table

MODEL = "hybrid_resnet18_vit_b16"


def benchmark_config(workdir: Path, data_root: Path, model: str, batch_size: int, **train: Any) -> ExperimentConfig:
    """The platform's default recipe on `model`, random weights, writing only under `workdir`."""
    output = {"checkpoints_dir": str(workdir / "checkpoints"), "runs_dir": str(workdir / "runs"),
              "artifacts_dir": str(workdir / "artifacts"), "storage_path": str(workdir / "ray_results"),
              "promote": False}
    return with_changes(
        ExperimentConfig(name="benchmark"), model={"name": model, "pretrained": "off"},
        data={"root": str(data_root)}, train={"batch_size": batch_size, **train}, output=output,
    )


def save_random_checkpoint(model: torch.nn.Module, config: ExperimentConfig, path: Path) -> Path:
    """A platform checkpoint of `model`, built by `config` and never trained (speed does not depend on weights)."""
    return write_checkpoint(DetectorCheckpoint(
        detector=config.model.name, detector_kwargs=dict(model.detector_kwargs), model_state_dict=model.state_dict(),
        epoch=0, val_auc=math.nan, val_threshold=0.5, config=config.to_dict(), parameters=parameter_table(model),
    ), path)
