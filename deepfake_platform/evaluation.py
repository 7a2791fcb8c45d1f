"""Evaluate any checkpoint on a data split, with the threshold chosen on validation (never on test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from deepfake_platform.inference import Predictor
from deepfake_platform.metrics import classification_report


def score_split(predictor: Predictor, data_root: str | Path, split: str, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Fake probabilities and labels for every readable image of one split."""
    from deepfake_platform.data import ImageDataset, load_split

    samples = load_split(Path(data_root), split)
    loader = DataLoader(ImageDataset(samples, predictor.transform), batch_size=batch_size, shuffle=False)
    return predictor.predict_loader(loader)


def evaluate_checkpoint(
    checkpoint: str | Path, data_root: str | Path, split: str = "test", *, precision: str = "auto",
    batch_size: int = 32,
) -> dict[str, Any]:
    """Metrics of `checkpoint` on `split`: AUC, AP, EER, and accuracy/F1/precision/recall at 0.5 and at
    the validation threshold saved in the checkpoint; plus the raw scores for plots."""
    predictor = Predictor(checkpoint, precision=precision)
    scores, labels = score_split(predictor, data_root, split, batch_size)
    return {
        "checkpoint": str(checkpoint),
        "split": split,
        "model": vars(predictor.info),
        "precision": predictor.precision,
        "metrics": classification_report(labels, scores, predictor.info.threshold),
        "scores": scores.tolist(),
        "labels": labels.tolist(),
    }
