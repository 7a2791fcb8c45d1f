"""How a model answers, before and after fine-tuning: the held-back feedback the way the server answers it
(each image through the face cropping and predict path; its verdict is its most suspicious face), and the
original validation and test splits through `evaluation.evaluate_record`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import log_loss

from deepfake_platform.checkpoints import DetectorCheckpoint
from deepfake_platform.data import load_image
from deepfake_platform.data.scan import CLASSES
from deepfake_platform.evaluation import evaluate_record
from deepfake_platform.fine_tuning.feedback_split import FeedbackItem
from deepfake_platform.media import MediaScorer
from deepfake_platform.metrics import classification_report, predicted_fake


def judge_on_feedback(scorer: MediaScorer, items: list[FeedbackItem]) -> dict[str, Any]:
    """How a model answers held-back feedback, as the server would: accuracy at its threshold, log loss, AUC.

    An image the model cannot judge (a face model and no face large enough) has no probability: it is counted
    as `not_applicable` and left out of the marks, as the server gives it no label."""
    answers = [scorer.score_image(load_image(item.image_path)).fake_probability for item in items]
    judged = [(item, p) for item, p in zip(items, answers, strict=True) if p is not None]
    probabilities = np.array([p for _, p in judged], dtype=np.float64)
    labels = np.array([item.label for item, _ in judged], dtype=np.int64)
    right = predicted_fake(probabilities, scorer.threshold) == labels.astype(bool)
    both_labels = len(set(labels.tolist())) == 2
    return {
        "images": len(judged),
        "not_applicable": len(items) - len(judged),
        "correct": int(right.sum()),
        "accuracy": float(right.mean()) if judged else None,
        "log_loss": float(log_loss(labels, probabilities, labels=[0, 1])) if judged else None,
        "threshold": float(scorer.threshold),
        "auc": float(classification_report(labels, probabilities, scorer.threshold)["auc"]) if both_labels else None,
        "answers": [{"image": str(item.image_path), "label": CLASSES[item.label],
                     "fake_probability": None if p is None else float(p)}
                    for item, p in zip(items, answers, strict=True)],
    }


def judge(scorer: MediaScorer, record: DetectorCheckpoint, path: Path, held_back: list[FeedbackItem],
          data_root: Path) -> dict[str, Any]:
    """One model's marks for the promotion rule: the held-back feedback, and its validation and test AUC."""
    return {"feedback": judge_on_feedback(scorer, held_back),
            "val_auc": evaluate_record(record, path, data_root, "val")["metrics"]["auc"],
            "test_auc": evaluate_record(record, path, data_root, "test")["metrics"]["auc"]}
