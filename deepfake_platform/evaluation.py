"""Evaluate any model file on a data split through the one predict path, with the threshold chosen on
validation (never on test); frame and, when the data set knows each crop's video, video-level metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepfake_platform.checkpoints import DetectorCheckpoint
from deepfake_platform.ensemble import Member, load_predictor
from deepfake_platform.media import ScoringChoices, file_choices, predictor_choices, scoring_choices
from deepfake_platform.metrics import classification_report, video_scores
from deepfake_platform.predict import Predictor


def score_samples(predictor: Member, samples: list[tuple[str, int]], batch_size: int = 32) -> np.ndarray:
    """Fake probabilities of (path, label) samples, decoded and scored batch by batch."""
    from deepfake_platform.data import load_image

    scores = [predictor.predict_images([load_image(path) for path, _ in samples[start:start + batch_size]])
              for start in range(0, len(samples), batch_size)]
    return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)


def evaluate(predictor: Member, data_root: str | Path, split: str = "test", *, batch_size: int = 32,
             choices: ScoringChoices | None = None) -> dict[str, Any]:
    """Metrics of `predictor` on `split`: AUC, AP, EER, accuracy/F1/precision/recall at 0.5 and at the
    validation threshold; per video too when the data set's manifest names each crop's source video. The
    thresholds are the model's `choices` (default: its own), as every other door labels with."""
    from deepfake_platform.data import load_split, source_videos

    choices = choices or predictor_choices(predictor)
    samples = load_split(Path(data_root), split)
    scores = score_samples(predictor, samples, batch_size)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    result: dict[str, Any] = {
        "checkpoint": predictor.info.checkpoint,
        "split": split,
        "model": predictor.info.to_dict(),
        "precision": getattr(predictor, "precision", "n/a"),
        "metrics": classification_report(labels, scores, choices.threshold),
        "scores": scores.tolist(),
        "labels": labels.tolist(),
    }
    videos = source_videos(Path(data_root), [path for path, _ in samples])
    if videos is not None:
        per_video, video_labels, names = video_scores(scores, labels, videos)
        result["video"] = {"metrics": classification_report(video_labels, per_video, choices.video_threshold),
                           "scores": per_video.tolist(), "labels": video_labels.tolist(), "videos": names}
    return result


def evaluate_record(record: DetectorCheckpoint, path: str | Path, data_root: str | Path, split: str = "test",
                    *, batch_size: int = 32) -> dict[str, Any]:
    """A training checkpoint on `split`, at the precision it was trained with (so its AUCs match training's)."""
    choices = scoring_choices(record, precision=record.trained_precision)
    predictor = Predictor(record, precision=choices.precision, path=path)
    return evaluate(predictor, data_root, split, batch_size=batch_size, choices=choices)


def evaluate_checkpoint(path: str | Path, data_root: str | Path, split: str = "test", *,
                        precision: str | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Any model file (a checkpoint, a frequency detector, an ensemble spec) on `split`, at `precision`
    (default: the model's scoring choice)."""
    choices = file_choices(path, precision=precision)
    return evaluate(load_predictor(path, choices.precision), data_root, split, batch_size=batch_size,
                    choices=choices)
