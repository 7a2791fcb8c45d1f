"""Detection metrics as pure functions over numpy arrays (label 1 = fake, score = fake probability)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels ({labels.size}) and scores ({scores.size}) differ in length.")
    if labels.size == 0:
        raise ValueError("no predictions to score: the split is empty.")
    return labels, scores


def auc_key(value: float) -> float:
    """An AUC as a sort key: NaN (undefined) ranks below every real AUC."""
    return -1.0 if math.isnan(value) else value


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present (AUC is undefined there)."""
    labels, scores = _check(labels, scores)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(skm.roc_auc_score(labels, scores))


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """EER and the threshold where the false-positive and false-negative rates meet."""
    labels, scores = _check(labels, scores)
    fpr, tpr, thresholds = skm.roc_curve(labels, scores)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    threshold = float(min(thresholds[i], 1.0))
    return float((fpr[i] + fnr[i]) / 2.0), threshold


def predicted_fake(scores: np.ndarray | float, threshold: float) -> np.ndarray | bool:
    """The label rule, everywhere: a fake probability at or above the threshold means fake."""
    return np.asarray(scores) >= threshold


def label_of(probability: float, threshold: float) -> str:
    """"fake" or "real": the label rule for one probability."""
    return "fake" if bool(predicted_fake(probability, threshold)) else "real"


def choose_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The decision threshold maximising Youden's J (TPR - FPR) on these (validation) predictions."""
    labels, scores = _check(labels, scores)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(labels, scores)
    i = int(np.argmax(tpr - fpr))
    # roc_curve's first threshold is +inf (nothing predicted fake); keep thresholds in [0, 1].
    return float(np.clip(thresholds[i], 0.0, 1.0))


def error_rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """(false-positive rate, false-negative rate) at `threshold` under the label rule; NaN for an absent class."""
    labels, scores = _check(labels, scores)
    fake = np.asarray(predicted_fake(scores, threshold))
    real_count, fake_count = int((labels == 0).sum()), int((labels == 1).sum())
    fpr = float(fake[labels == 0].sum() / real_count) if real_count else float("nan")
    fnr = float((~fake[labels == 1]).sum() / fake_count) if fake_count else float("nan")
    return fpr, fnr


def _between(low: float, high: float) -> float:
    """A threshold strictly above `low` and at most `high` (their midpoint, or `high` when they touch)."""
    middle = (low + high) / 2.0
    return middle if low < middle <= high else high


def threshold_for_fpr(labels: np.ndarray, scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on these (validation) predictions is at most `target_fpr`:
    it catches as many fakes as that rate allows. Placed halfway to the next score, not on one."""
    labels, scores = _check(labels, scores)
    real = np.sort(scores[labels == 0])[::-1]
    allowed = int(np.floor(target_fpr * real.size + 1e-9))  # reals that may score at or above the threshold
    if allowed >= real.size:
        return 0.0
    ceiling = real[allowed]  # the threshold must be above this real's score
    above = scores[scores > ceiling]
    return float(_between(ceiling, above.min() if above.size else min(1.0, np.nextafter(ceiling, np.inf))))


def threshold_for_fnr(labels: np.ndarray, scores: np.ndarray, target_fnr: float) -> float:
    """The highest threshold whose false-negative rate on these (validation) predictions is at most `target_fnr`:
    it flags as few reals as that rate allows. Placed halfway to the next lower score, not on one."""
    labels, scores = _check(labels, scores)
    fake = np.sort(scores[labels == 1])
    allowed = int(np.floor(target_fnr * fake.size + 1e-9))  # fakes that may score below the threshold
    if allowed >= fake.size:
        return 1.0
    floor = fake[allowed]  # the threshold must be at or below this fake's score
    below = scores[scores < floor]
    return float(_between(below.max(), floor)) if below.size else float(floor)


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Accuracy, precision, recall, F1 and the confusion matrix at one threshold."""
    labels, scores = _check(labels, scores)
    predicted = predicted_fake(scores, threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return {
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def classification_report(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Every metric the reports show: AUC, AP, EER, and threshold metrics at 0.5 and at `threshold`."""
    labels, scores = _check(labels, scores)
    both = len(np.unique(labels)) == 2
    eer, eer_threshold = equal_error_rate(labels, scores) if both else (float("nan"), float("nan"))
    return {
        "n": int(labels.size),
        "n_fake": int(labels.sum()),
        "n_real": int((labels == 0).sum()),
        "auc": roc_auc(labels, scores),
        "average_precision": float(skm.average_precision_score(labels, scores)) if both else float("nan"),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "at_0.5": threshold_metrics(labels, scores, 0.5),
        "at_val_threshold": threshold_metrics(labels, scores, threshold),
    }


def class_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """Scores split by class, as checkpoints record them for drift monitoring."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    return {"real": scores[labels == 0].tolist(), "fake": scores[labels == 1].tolist()}


def video_scores(frame_scores: np.ndarray, frame_labels: np.ndarray,
                 videos: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-video fake probability (the mean of its frames' scores, DeepfakeBench's definition) and label.

    `videos` names each frame's source video; a video whose frames disagree on the label is an error.
    """
    frame_labels, frame_scores = _check(frame_labels, frame_scores)
    if len(videos) != frame_scores.size:
        raise ValueError(f"{len(videos)} video names for {frame_scores.size} frame scores.")
    order = sorted(set(videos))
    index = {name: i for i, name in enumerate(order)}
    ids = np.array([index[name] for name in videos])
    sums = np.bincount(ids, weights=frame_scores, minlength=len(order))
    counts = np.bincount(ids, minlength=len(order))
    labels = np.full(len(order), -1)
    for video, label in zip(ids, frame_labels, strict=True):
        if labels[video] not in (-1, label):
            raise ValueError(f"the frames of {order[video]} carry both labels; a video is real or fake.")
        labels[video] = label
    return sums / counts, labels, order


def video_auc(frame_scores: np.ndarray, frame_labels: np.ndarray, videos: Sequence[str]) -> float:
    """ROC AUC over videos, each scored by the mean of its frames' fake probabilities."""
    scores, labels, _ = video_scores(frame_scores, frame_labels, videos)
    return roc_auc(labels, scores)
