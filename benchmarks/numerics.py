"""Numerics: the tiny hybrid trained in fp32 and in bf16 on a generated set, and whether bf16 costs AUC."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.settings import Settings
from benchmarks.workspace import benchmark_config
from deepfake_platform.checkpoints import input_size
from deepfake_platform.config import ExperimentConfig, with_changes
from deepfake_platform.data import build_dataset
from deepfake_platform.training import (
    build_optimizer,
    make_loaders,
    prepare_detector,
    train_one_epoch,
    validate,
)


def precision_parity(config: ExperimentConfig, data_root: Path,
                     seeds: Sequence[int]) -> dict[str, dict[str, list[float]]]:
    """Train `config` in fp32 and in bf16 once per seed (same init, same data order): val AUC and final train loss."""
    device = torch.device("cpu")
    runs: dict[str, dict[str, list[float]]] = {p: {"val_auc": [], "train_loss": []} for p in ("fp32", "bf16")}
    for precision, seed in itertools.product(runs, seeds):
        run_config = with_changes(config, train={"precision": precision, "seed": seed})
        torch.manual_seed(seed)
        model = prepare_detector(run_config, device)
        optimizer = build_optimizer(model, run_config)
        train_loader, val_loader = make_loaders(run_config, data_root, input_size(run_config, model), 0, 1)
        for epoch in range(run_config.train.epochs):
            train_loader.sampler.set_epoch(epoch)
            stats = train_one_epoch(model, train_loader, optimizer, device, precision, epoch=epoch)
        runs[precision]["train_loss"].append(float(stats["train_loss"]))
        runs[precision]["val_auc"].append(float(validate(model, val_loader, device, precision)["val_auc"]))
    return runs


def parity_summary(runs: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Mean and spread of each precision's val AUC and final train loss, the paired AUC difference, and
    whether it is within noise: |mean(bf16 - fp32)| at most twice the standard error of the paired
    differences (the seed-to-seed variation of training itself), or at most 0.01 AUC."""
    summary: dict[str, float] = {}
    for precision in ("fp32", "bf16"):
        for figure in ("val_auc", "train_loss"):
            values = np.asarray(runs[precision][figure], dtype=np.float64)
            summary[f"{precision}_{figure}_mean"] = float(values.mean())
            summary[f"{precision}_{figure}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    differences = np.asarray(runs["bf16"]["val_auc"]) - np.asarray(runs["fp32"]["val_auc"])
    standard_error = float(differences.std(ddof=1) / math.sqrt(len(differences))) if len(differences) > 1 else 0.0
    mean_difference = float(differences.mean())
    summary["bf16_minus_fp32_val_auc"] = mean_difference
    summary["bf16_auc_within_noise"] = float(abs(mean_difference) <= max(0.01, 2.0 * standard_error))
    return summary


def measure_parity(workdir: Path, s: Settings) -> dict[str, dict[str, Any]]:
    """The tiny hybrid trained in fp32 and bf16 on a generated 64 px set: val AUC per seed."""
    data_root = workdir / "parity_data"
    build_dataset(data_root, counts={"train": 256, "val": 128, "test": 2}, size=64)
    config = benchmark_config(workdir, data_root, "hybrid_tiny", 16, lr=1e-3, epochs=s.parity_epochs)
    runs = precision_parity(config, data_root, seeds=range(s.parity_seeds))
    print(f"[benchmark] per seed: {runs}", flush=True)
    return {"parity": parity_summary(runs)}
