"""Metrics on arrays whose answers were worked out by hand, and the thresholds chosen on validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepfake_platform.metrics import (
    choose_threshold,
    classification_report,
    equal_error_rate,
    label_of,
    predicted_fake,
    roc_auc,
    threshold_metrics,
)

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.2, 0.65, 0.05, 0.55])


def test_auc_and_average_precision_on_a_case_worked_by_hand():
    report = classification_report(LABELS, SCORES, threshold=0.5)
    # 19 of the 25 (fake, real) pairs rank the fake higher.
    assert report["auc"] == pytest.approx(19 / 25)
    # Precision at each fake, best score first: 1/1, 2/3, 3/4, 4/5, 5/8.
    assert report["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 5 + 5 / 8) / 5)
    assert (report["n"], report["n_fake"], report["n_real"]) == (10, 5, 5)


@pytest.mark.parametrize(("threshold", "expected"), [
    (0.5, {"accuracy": 0.8, "precision": 0.8, "recall": 0.8, "f1": 0.8,
           "confusion_matrix": {"tn": 4, "fp": 1, "fn": 1, "tp": 4}}),
    (0.6, {"accuracy": 0.7, "precision": 0.75, "recall": 0.6, "f1": 2 * 0.75 * 0.6 / 1.35,
           "confusion_matrix": {"tn": 4, "fp": 1, "fn": 2, "tp": 3}}),
])
def test_threshold_metrics_on_a_case_worked_by_hand(threshold, expected):
    got = threshold_metrics(LABELS, SCORES, threshold)
    assert got["confusion_matrix"] == expected["confusion_matrix"]
    for key in ("accuracy", "precision", "recall", "f1"):
        assert got[key] == pytest.approx(expected[key]), key


def test_equal_error_rate_on_a_known_case():
    # One real scored above one fake out of 4 each: FPR = FNR = 0.25 at the crossing.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.75, 0.6, 0.8, 0.9, 0.95])
    eer, threshold = equal_error_rate(labels, scores)
    assert eer == pytest.approx(0.25)
    assert 0.0 <= threshold <= 1.0


def test_perfect_separation():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    assert roc_auc(labels, scores) == 1.0
    threshold = choose_threshold(labels, scores)
    assert 0.2 < threshold <= 0.8
    assert threshold_metrics(labels, scores, threshold)["accuracy"] == 1.0
    assert equal_error_rate(labels, scores)[0] == 0.0


def test_single_class_gives_nan_auc_not_a_crash():
    assert math.isnan(roc_auc(np.ones(4), np.linspace(0, 1, 4)))
    assert choose_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3])) == 0.5


def test_mismatched_or_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc(np.array([0, 1]), np.array([0.5]))
    with pytest.raises(ValueError, match="empty"):
        roc_auc(np.array([]), np.array([]))


def test_video_auc_is_the_auc_of_each_videos_mean_frame_score():
    from sklearn.metrics import roc_auc_score

    from deepfake_platform.metrics import video_auc, video_scores

    # Three real and three fake videos, 1-3 frames each, frames listed out of order.
    videos = ["r1", "f1", "r2", "f2", "r1", "f3", "r3", "f2", "f1", "r2"]
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1, 0])
    scores = np.array([0.2, 0.9, 0.6, 0.4, 0.4, 0.7, 0.1, 0.8, 0.5, 0.2])
    per_video, video_labels, names = video_scores(scores, labels, videos)
    assert names == ["f1", "f2", "f3", "r1", "r2", "r3"]
    np.testing.assert_allclose(per_video, [0.7, 0.6, 0.7, 0.3, 0.4, 0.1])
    assert video_labels.tolist() == [1, 1, 1, 0, 0, 0]
    assert video_auc(scores, labels, videos) == pytest.approx(roc_auc_score(video_labels, per_video)) == 1.0
    # Per frame the same scores rank worse: a real frame (0.6) beats two fake ones.
    assert roc_auc(labels, scores) < 1.0
    with pytest.raises(ValueError, match="carry both labels"):
        video_scores(np.array([0.1, 0.2]), np.array([0, 1]), ["v", "v"])


def test_the_label_rule_calls_a_probability_at_or_above_the_threshold_fake():
    assert predicted_fake(SCORES, 0.55).tolist() == [score >= 0.55 for score in SCORES.tolist()]
    assert predicted_fake(SCORES, 0.55).sum() == 5  # 0.8, 0.7, 0.9 and 0.65 above it, 0.55 exactly at it
    assert label_of(0.55, 0.55) == "fake" and label_of(0.5499, 0.55) == "real"
    assert [label_of(score, 0.5) for score in (0.0, 0.49, 0.5, 1.0)] == ["real", "real", "fake", "fake"]
    assert bool(predicted_fake(0.3, 0.3)) and not bool(predicted_fake(0.3, 0.31))
