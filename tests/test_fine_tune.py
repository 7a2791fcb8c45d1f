"""Fine-tuning's rules without Ray: which feedback trains and which judges, when the new model is promoted,
and the sentence a folder of corrections that cannot train gets. The round trip from a real server's
feedback through fine_tune.py is in test_serve_monitoring.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_platform.feedback import FeedbackStore
from deepfake_platform.orchestration.fine_tune import (
    FeedbackError,
    collect_feedback,
    decide,
    repeat_count,
    split_feedback,
)
from tests.factories import encoded, photo, tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


def store_with(directory: Path, labels: list[str], keep_images: bool = True) -> FeedbackStore:
    store = FeedbackStore(directory, keep_images=keep_images)
    for i, label in enumerate(labels):
        store.add(f"req-{i}", label, {"label": "real" if label == "fake" else "fake"}, encoded(photo(i), "PNG"), ".png")
    return store


def judged(correct: int, images: int, log_loss: float, val_auc: float) -> dict:
    return {"feedback": {"correct": correct, "images": images, "log_loss": log_loss}, "val_auc": val_auc}


def test_the_split_holds_back_a_share_of_each_label_the_same_way_every_time(tmp_path):
    store_with(tmp_path, ["fake"] * 7 + ["real"] * 3)
    items, skipped = collect_feedback(tmp_path)
    assert len(items) == 10 and not any(skipped.values())
    train, held = split_feedback(items, 0.3)
    assert len(held) == 3 and len(train) == 7  # round(7 * 0.3) fakes + round(3 * 0.3) reals
    assert sorted(item.label for item in held) == [0, 1, 1]
    assert {item.sha256 for item in train}.isdisjoint(item.sha256 for item in held)
    again_train, again_held = split_feedback(list(reversed(items)), 0.3)
    assert [item.sha256 for item in again_held] == [item.sha256 for item in held]


def test_two_images_are_enough_and_one_is_not(tmp_path):
    store_with(tmp_path / "two", ["fake", "fake"])
    train, held = split_feedback(collect_feedback(tmp_path / "two")[0], 0.3)
    assert len(train) == 1 and len(held) == 1
    store_with(tmp_path / "one", ["fake"])
    with pytest.raises(FeedbackError, match="at least 2 labelled images"):
        split_feedback(collect_feedback(tmp_path / "one")[0], 0.3)
    with pytest.raises(FeedbackError, match="between 0 and 1"):
        split_feedback(collect_feedback(tmp_path / "two")[0], 1.5)


def test_a_relabelled_image_counts_once_with_its_latest_label(tmp_path):
    store = store_with(tmp_path, ["fake", "real"])
    image = encoded(photo(0), "PNG")
    store.add("req-again", "real", {}, image, ".png")  # the first image, corrected again
    items, _ = collect_feedback(tmp_path)
    assert len(items) == 2 and sorted(item.label for item in items) == [0, 0]


def test_promotion_needs_better_feedback_answers_and_a_validation_auc_within_the_margin():
    before = judged(1, 4, 0.9, 0.95)
    promote, why = decide(before, judged(3, 4, 0.5, 0.945), margin=0.01)
    assert promote and "3/4" in why and "1/4" in why and "within the margin" in why
    promote, why = decide(before, judged(4, 4, 0.2, 0.90), margin=0.01)
    assert not promote and "fell by 0.0500" in why and "more than the margin" in why
    promote, why = decide(before, judged(1, 4, 0.7, 0.96), margin=0.01)  # as many right, lower loss
    assert promote and "lower log loss" in why and "rose" in why
    promote, why = decide(before, judged(1, 4, 0.95, 0.99), margin=0.01)  # as many right, higher loss
    assert not promote and "not better on the held-back feedback" in why
    promote, why = decide(before, judged(0, 4, 0.1, 0.99), margin=0.01)  # fewer right, whatever the loss
    assert not promote


def test_feedback_is_repeated_to_about_a_quarter_of_an_epoch_within_bounds():
    assert repeat_count(2, 60, None) == 10  # 0.25 * 60 / (0.75 * 2)
    assert repeat_count(1, 10_000, None) == 20
    assert repeat_count(50, 10, None) == 1
    assert repeat_count(3, 60, 2) == 2
    with pytest.raises(FeedbackError):
        repeat_count(3, 60, 0)


def test_labels_without_images_get_a_sentence_not_a_run(tmp_path):
    store_with(tmp_path / "feedback", ["fake", "real", "fake"], keep_images=False)
    checkpoint = tiny_checkpoint(tmp_path / "best.pth")
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "fine_tune.py"), "--from", str(checkpoint),
         "--feedback", str(tmp_path / "feedback")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "no labelled image to fine-tune on" in result.stderr and "3 correction(s) skipped (no image kept)" in result.stderr
    assert "Traceback" not in result.stderr
    missing = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "fine_tune.py"), "--from", str(checkpoint),
         "--feedback", str(tmp_path / "nowhere")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no feedback was recorded" in missing.stderr, missing.stderr
