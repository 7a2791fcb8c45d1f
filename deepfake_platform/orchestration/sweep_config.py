"""The sweep file: a base experiment, the search space (learning rate, epochs, freezing) and Tune's settings.

    name: sweep
    experiment: baseline.yaml     # a config file (next to the sweep file, or from the repo root), or a mapping
    search: {lr_min: 1.0e-5, lr_max: 1.0e-3, epochs: [3, 5], freeze: [none, cnn, vit, backbones, last2]}
    tune: {num_samples: 12, grace_period: 1, reduction_factor: 2, max_concurrent_trials: 0, seed: 0}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from deepfake_platform.config import (
    REPO_ROOT,
    ConfigError,
    ExperimentConfig,
    Section,
    config_from_dict,
    load,
    load_config,
)


def check_freeze_mode(mode: str) -> str:
    """`mode` when it is a freeze mode of the grammar in models/freezing.py, else a ValueError sentence."""
    from models.freezing import FREEZE_MODE_HELP, is_freeze_mode

    if not is_freeze_mode(mode):
        raise ValueError(f"{mode!r} is not a freeze mode; use {FREEZE_MODE_HELP}")
    return mode


class SearchSpace(Section):
    """What the sweep varies: learning rate (log-uniform between two bounds, or a grid of values), epochs
    and freezing (choices)."""

    lr_min: float = Field(1e-5, gt=0)
    lr_max: float = Field(1e-3, gt=0)
    # A grid instead of the log-uniform range: every value is tried (num_samples times each).
    lr: list[float] = Field(default_factory=list)
    epochs: list[int] = Field(default_factory=lambda: [3, 5], min_length=1)
    freeze: list[str] = Field(default_factory=lambda: ["none", "cnn", "vit", "backbones", "last2"], min_length=1)

    @field_validator("epochs")
    @classmethod
    def _positive_epochs(cls, epochs: list[int]) -> list[int]:
        if any(epoch < 1 for epoch in epochs):
            raise ValueError("every epochs choice must be at least 1")
        return epochs

    @field_validator("lr")
    @classmethod
    def _positive_lrs(cls, values: list[float]) -> list[float]:
        if any(value <= 0 for value in values):
            raise ValueError("every learning rate must be positive")
        return values

    @field_validator("freeze")
    @classmethod
    def _freeze_modes(cls, modes: list[str]) -> list[str]:
        return [check_freeze_mode(mode) for mode in modes]

    @model_validator(mode="after")
    def _ordered(self) -> SearchSpace:
        if self.lr_min > self.lr_max:
            raise ValueError(f"lr_min ({self.lr_min:g}) must not be above lr_max ({self.lr_max:g})")
        return self


class TuneSettings(Section):
    """How Tune runs the search."""

    num_samples: int = Field(8, ge=1)
    # Validation AUC, maximised: what each trial's best.pth and the promotion are chosen on.
    metric: Literal["val_auc"] = "val_auc"
    mode: Literal["max"] = "max"
    # ASHA compares trials from this epoch index on (epochs count from 0, as in epoch_001_auc_...pth).
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(2, ge=2)
    # 0: as many trials at once as the cluster's CPUs (and GPUs) hold.
    max_concurrent_trials: int = Field(0, ge=0)
    seed: int = 0


class SweepConfig(Section):
    """A sweep: a base experiment (a config file path, relative to the sweep file, or a mapping), the search
    space and the Tune settings."""

    name: str = Field("sweep", pattern=r"^[A-Za-z0-9._-]+$")
    experiment: str | dict[str, Any] = "baseline.yaml"
    search: SearchSpace = Field(default_factory=SearchSpace)
    tune: TuneSettings = Field(default_factory=TuneSettings)


def load_sweep_config(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """A sweep YAML file with `key=value` overrides (e.g. tune.num_samples=4)."""
    return load(SweepConfig, path, overrides, what="sweep file", example="experiments/configs/sweep.yaml")


def experiment_config(sweep: SweepConfig, sweep_file: str | Path) -> ExperimentConfig:
    """The base experiment of a sweep: its config file (found next to the sweep file first) or its mapping."""
    if isinstance(sweep.experiment, dict):
        return config_from_dict(sweep.experiment, f"{sweep_file}: experiment")
    for folder in (Path(sweep_file).resolve().parent, REPO_ROOT):
        candidate = folder / sweep.experiment
        if candidate.is_file():
            return load_config(candidate)
    raise ConfigError(
        f"{sweep_file}: experiment {sweep.experiment!r} was found neither next to the sweep file nor under "
        f"{REPO_ROOT}; give a path to an experiment config or write the experiment as a mapping."
    )
