"""Evaluate any model file on a data split through the one predict path, with the threshold chosen on
validation (never on test); frame and, when the data set knows each crop's video, video-level metrics.
`calibrate_record` fits a detector's calibration and operating points on the validation split."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepfake_platform import calibration
from deepfake_platform.checkpoints import DetectorCheckpoint, read_checkpoint, write_checkpoint
from deepfake_platform.config import CalibrationConfig
from deepfake_platform.ensemble import Member, load_predictor
from deepfake_platform.media import ScoringChoices, file_choices, predictor_choices, scoring_choices
from deepfake_platform.metrics import class_scores, classification_report, error_rates, video_scores
from deepfake_platform.predict import Predictor

# What is done to each decoded picture before it is scored (the robustness report's perturbations); None: nothing.
Perturb = Callable[[Image.Image, int], Image.Image] | None


def _batches(samples: list[tuple[str, int]], batch_size: int, perturb: Perturb):
    from deepfake_platform.data import load_image

    for start in range(0, len(samples), batch_size):
        images = [load_image(path) for path, _ in samples[start:start + batch_size]]
        yield images if perturb is None else [perturb(image, start + i) for i, image in enumerate(images)]


def score_samples(predictor: Member, samples: list[tuple[str, int]], batch_size: int = 32, *,
                  perturb: Perturb = None) -> np.ndarray:
    """Fake probabilities of (path, label) samples, decoded (and perturbed, sample index as its seed) and scored
    batch by batch."""
    scores = [predictor.predict_images(images) for images in _batches(samples, batch_size, perturb)]
    return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)


def sample_logits(predictor: Predictor, samples: list[tuple[str, int]], batch_size: int = 32, *,
                  perturb: Perturb = None) -> np.ndarray:
    """A detector's raw logits for (path, label) samples; its probabilities are `predictor.calibration.apply`
    of them, exactly what `score_samples` returns."""
    logits = [predictor.predict_logits(predictor.preprocess(images))
              for images in _batches(samples, batch_size, perturb)]
    return np.concatenate(logits) if logits else np.zeros(0, dtype=np.float32)


def evaluate(predictor: Member, data_root: str | Path, split: str = "test", *, batch_size: int = 32,
             choices: ScoringChoices | None = None) -> dict[str, Any]:
    """Metrics of `predictor` on `split`: AUC, AP, EER, accuracy/F1/precision/recall at 0.5 and at the
    validation threshold; per video too when the data set's manifest names each crop's source video. The
    thresholds are the model's `choices` (default: its own), as every other door labels with."""
    from deepfake_platform.data import load_split, source_videos

    choices = choices or predictor_choices(predictor)
    samples = load_split(Path(data_root), split)
    logits = None
    if isinstance(predictor, Predictor):  # one pass gives the raw logits (the report's "before") and the scores
        logits = sample_logits(predictor, samples, batch_size)
        scores = predictor.calibration.apply(logits).astype(np.float32)
    else:
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
        "operating_point": choices.operating_point,
    }
    if logits is not None:
        result["logits"] = logits.tolist()
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
                        precision: str | None = None, operating_point: str | None = None,
                        batch_size: int = 32) -> dict[str, Any]:
    """Any model file (a checkpoint, a frequency detector, an ensemble spec) on `split`, at `precision`
    (default: the model's scoring choice), labelled at `operating_point`'s thresholds (default: balanced)."""
    choices = file_choices(path, precision=precision, operating_point=operating_point)
    return evaluate(load_predictor(path, choices.precision), data_root, split, batch_size=batch_size,
                    choices=choices)


def calibrate_record(record: DetectorCheckpoint, path: str | Path, data_root: str | Path,
                     settings: CalibrationConfig | None = None, *, batch_size: int = 32) -> DetectorCheckpoint:
    """`record` with a calibration and its operating points fitted on `data_root`'s validation split (settings:
    the record's config's `calibration` section unless given). The balanced threshold, the video threshold and
    the validation scores (the drift reference) move to the calibrated scale with it."""
    from deepfake_platform.data import load_split, source_videos

    settings = settings or record.experiment_config.calibration
    raw = dataclasses.replace(record, calibration={})  # always fitted on the raw logits, even when re-calibrating
    predictor = Predictor(raw, precision=record.trained_precision, path=path)
    samples = load_split(Path(data_root), "val")
    labels = np.array([label for _, label in samples], dtype=np.int64)
    logits = sample_logits(predictor, samples, batch_size)
    fitted = calibration.fit_calibration(labels, logits, settings.method)
    probabilities = fitted.apply(logits)
    points = calibration.choose_operating_points(labels, probabilities, target_fpr=settings.target_fpr,
                                                 target_fnr=settings.target_fnr)
    video = dict(record.video)
    videos = source_videos(Path(data_root), [p for p, _ in samples]) if points else None
    if videos is not None:
        per_video, video_labels, _ = video_scores(probabilities, labels, videos)
        for name, threshold in calibration.video_thresholds(video_labels, per_video, points).items():
            points[name]["video_threshold"] = threshold
        video["threshold"] = points["balanced"].get("video_threshold", video.get("threshold"))
    fit = calibration.summary(labels, logits, fitted)
    return dataclasses.replace(
        record, calibration={**fitted.to_dict(), "val_images": fit["n"], "val_ece_before": fit["ece_before"],
                             "val_ece_after": fit["ece_after"]},
        operating_points=points, val_threshold=points["balanced"]["threshold"] if points else record.val_threshold,
        val_scores=class_scores(labels, probabilities), video=video)


def calibrate_checkpoint(path: str | Path, data_root: str | Path, settings: CalibrationConfig | None = None,
                         *, out: str | Path | None = None) -> DetectorCheckpoint:
    """Calibrate the checkpoint at `path` on `data_root`'s validation split and write it to `out` (default:
    over `path`, atomically); the calibrated record."""
    record = calibrate_record(read_checkpoint(path, DetectorCheckpoint), path, data_root, settings)
    write_checkpoint(record, out or path)
    return record


def calibration_results(record: DetectorCheckpoint, test: dict[str, Any]) -> dict[str, Any]:
    """What RESULTS.md shows of the calibration: the method, ECE before and after on validation (where it was
    fitted) and on test with the reliability bins, and each operating point's rates on test."""
    labels, scores = np.asarray(test["labels"]), np.asarray(test["scores"])
    fitted = calibration.Calibration.from_dict(record.calibration)
    result: dict[str, Any] = {"method": fitted.method, "temperature": fitted.temperature,
                              "val": {key.removeprefix("val_"): value for key, value in record.calibration.items()
                                      if key.startswith("val_")}}
    if "logits" in test:
        result["test"] = calibration.summary(labels, test["logits"], fitted)
    points = {}
    for name, point in record.operating_points.items():
        fpr, fnr = error_rates(labels, scores, point["threshold"])
        accuracy = classification_report(labels, scores, point["threshold"])["at_val_threshold"]["accuracy"]
        points[name] = {**point, "test_fpr": fpr, "test_fnr": fnr, "test_accuracy": accuracy}
    result["operating_points"] = points
    return result
