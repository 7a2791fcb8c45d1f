"""Fine-tuning's parts without Ray (deepfake_platform/fine_tuning/): which feedback trains and which judges,
the data root it trains on, how a model is judged, when the new model is promoted, the report, and the
sentence a folder of corrections that cannot train gets. The round trip from a real server's feedback
through fine_tune.py is in test_serve_monitoring.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from deepfake_platform.data.scan import load_split
from deepfake_platform.ensemble import load_predictor
from deepfake_platform.feedback import FeedbackStore
from deepfake_platform.files import PARTIAL_SUFFIX, write_bytes_atomic
from deepfake_platform.fine_tuning.combined_data import build_combined_root, repeat_count
from deepfake_platform.fine_tuning.decision import decide
from deepfake_platform.fine_tuning.feedback_split import FeedbackError, collect_feedback, split_feedback
from deepfake_platform.fine_tuning.judging import judge_on_feedback
from deepfake_platform.fine_tuning.report import render_fine_tune_report, write_fine_tune_report
from deepfake_platform.media import MediaScorer
from deepfake_platform.orchestration.fine_tune import keep_previous
from tests.factories import encoded, photo, tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


def store_with(directory: Path, labels: list[str], keep_images: bool = True) -> FeedbackStore:
    store = FeedbackStore(directory, keep_images=keep_images)
    for i, label in enumerate(labels):
        store.add(f"req-{i}", label, {"label": "real" if label == "fake" else "fake"}, encoded(photo(i), "PNG"), ".png")
    return store


def judged(correct: int, images: int, log_loss: float, val_auc: float) -> dict:
    return {"feedback": {"correct": correct, "images": images, "log_loss": log_loss}, "val_auc": val_auc}


def fine_tune_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "experiments" / "fine_tune.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_split_holds_back_a_share_of_each_label_the_same_way_every_time(tmp_path):
    store_with(tmp_path, ["fake"] * 7 + ["real"] * 3)
    items, skipped = collect_feedback(tmp_path)
    assert len(items) == 10 and not any(skipped.values())
    train, held = split_feedback(items, 0.3)
    assert len(held) == 3 and len(train) == 7  # round(7 * 0.3) fakes + round(3 * 0.3) reals
    assert sorted(item.label for item in held) == [0, 1, 1]
    assert {item.sha256 for item in train}.isdisjoint(item.sha256 for item in held)
    # The images held back are those whose content hash sorts first within their label.
    fakes = sorted(item.sha256 for item in items if item.label == 1)
    assert sorted(item.sha256 for item in held if item.label == 1) == fakes[:2]
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


def test_corrections_whose_image_is_gone_are_counted_as_skipped(tmp_path):
    store_with(tmp_path, ["fake", "real", "fake"])
    removed = sorted((tmp_path / "images").iterdir())[0]
    removed.unlink()
    items, skipped = collect_feedback(tmp_path)
    assert len(items) == 2 and removed not in {item.image_path for item in items}
    assert skipped == {"no image kept": 0, "image file missing": 1}


def test_promotion_needs_better_feedback_answers_and_a_validation_auc_within_the_margin():
    before = judged(1, 4, 0.9, 0.95)
    promote, why = decide(before, judged(3, 4, 0.5, 0.945), margin=0.01)
    assert promote and why == ("Promoted the fine-tuned model: the fine-tuned model answers 3/4 held-back feedback "
                               "images right, against 1/4, and its validation AUC fell by 0.0050, within the "
                               "margin 0.01 (0.9500 to 0.9450).")
    promote, why = decide(before, judged(4, 4, 0.2, 0.90), margin=0.01)
    assert not promote and "fell by 0.0500" in why and "more than the margin" in why
    promote, why = decide(before, judged(1, 4, 0.7, 0.96), margin=0.01)  # as many right, lower loss
    assert promote and "lower log loss (0.7000 against 0.9000)" in why and "rose by 0.0100" in why
    promote, why = decide(before, judged(1, 4, 0.95, 0.99), margin=0.01)  # as many right, higher loss
    assert not promote and why.startswith("Kept the original: the fine-tuned model is not better")
    promote, why = decide(before, judged(0, 4, 0.1, 0.99), margin=0.01)  # fewer right, whatever the loss
    assert not promote and "(0/4 right" in why
    promote, why = decide(before, judged(2, 4, 0.5, 0.94), margin=0.01)  # exactly at the margin: allowed
    assert promote
    promote, why = decide(before, judged(2, 4, 0.5, 0.95), margin=0.0)
    assert promote and "validation AUC is unchanged" in why


def test_feedback_is_repeated_to_about_a_quarter_of_an_epoch_within_bounds():
    assert repeat_count(2, 60, None) == 10  # 0.25 * 60 / (0.75 * 2)
    assert repeat_count(1, 10_000, None) == 20
    assert repeat_count(50, 10, None) == 1
    assert repeat_count(3, 60, 2) == 2
    with pytest.raises(FeedbackError, match="--repeat must be at least 1, not 0"):
        repeat_count(3, 60, 0)


def test_the_combined_root_holds_the_original_splits_and_each_feedback_image_repeat_times(tmp_path, data_root):
    store_with(tmp_path / "feedback", ["fake", "real", "fake"])
    items, _ = collect_feedback(tmp_path / "feedback")
    scorer = MediaScorer(load_predictor(tiny_checkpoint(tmp_path / "best.pth")))  # a whole-image model
    target = tmp_path / "combined"
    contents = build_combined_root(data_root, target, items, scorer, repeat=3)
    original_train = len(load_split(data_root, "train"))
    assert contents == {"feedback_crops": {"real": 1, "fake": 2}, "no_face": 0, "repeat": 3,
                        "original_train_images": original_train}
    combined = load_split(target, "train")
    assert len(combined) == original_train + 3 * 3
    assert sorted(label for path, label in combined if "feedback_" in Path(path).name) == [0] * 3 + [1] * 6
    for split in ("val", "test"):
        assert len(load_split(target, split)) == len(load_split(data_root, split))
    copies = sorted((target / "train" / "fake").glob("feedback_*"))
    assert sum(not path.is_symlink() for path in copies) == 2  # each crop written once, then linked
    assert not list(target.rglob(f"*{PARTIAL_SUFFIX}"))  # no half-written file left behind


def test_held_back_feedback_is_judged_at_the_models_threshold(tmp_path):
    store_with(tmp_path / "feedback", ["fake", "real", "fake", "real"])
    items, _ = collect_feedback(tmp_path / "feedback")
    scorer = MediaScorer(load_predictor(tiny_checkpoint(tmp_path / "best.pth", val_threshold=0.5)))
    result = judge_on_feedback(scorer, items)
    probabilities = [answer["fake_probability"] for answer in result["answers"]]
    labels = [item.label for item in items]
    right = sum((p >= 0.5) == bool(label) for p, label in zip(probabilities, labels, strict=True))
    loss = -sum(math.log(p) if label else math.log(1 - p) for p, label in zip(probabilities, labels, strict=True)) / 4
    assert result["images"] == 4 and result["correct"] == right and result["accuracy"] == right / 4
    assert result["log_loss"] == pytest.approx(loss, rel=1e-9)
    assert result["threshold"] == 0.5 and result["auc"] is not None
    assert [answer["label"] for answer in result["answers"]] == [("real", "fake")[label] for label in labels]


def test_held_back_feedback_a_face_model_cannot_judge_is_counted_apart_not_scored(tmp_path):
    store = FeedbackStore(tmp_path / "feedback")
    astronaut = Image.fromarray(skimage.data.astronaut())
    coffee = Image.fromarray(skimage.data.coffee())  # a photograph without a face
    for i, (label, picture) in enumerate([("fake", astronaut), ("real", coffee), ("real", astronaut.rotate(3))]):
        store.add(f"req-{i}", label, {"label": "real"}, encoded(picture, "PNG"), ".png")
    items, _ = collect_feedback(tmp_path / "feedback")
    faces = {"mode": "largest", "detector": "haar", "margin": 1.3, "crop_size": 96}
    scorer = MediaScorer(load_predictor(tiny_checkpoint(tmp_path / "faces.pth", val_threshold=0.5, faces=faces)))
    result = judge_on_feedback(scorer, items)
    assert result["images"] == 2 and result["not_applicable"] == 1
    assert math.isfinite(result["log_loss"]) and 0.0 <= result["accuracy"] <= 1.0
    assert [answer["fake_probability"] is None for answer in result["answers"]] == [
        item.image_path.read_bytes() == encoded(coffee, "PNG") for item in items]
    # Nothing to judge: no marks rather than NaN, and the rule keeps the original with a sentence.
    (coffee_item,) = [item for item in items if item.image_path.read_bytes() == encoded(coffee, "PNG")]
    nothing = judge_on_feedback(scorer, [coffee_item])
    assert (nothing["images"], nothing["correct"], nothing["accuracy"], nothing["log_loss"]) == (0, 0, None, None)
    promoted, reason = decide({"feedback": nothing, "val_auc": 0.9}, {"feedback": nothing, "val_auc": 0.9}, 0.01)
    assert not promoted and "0/0 right, log loss n/a" in reason


def fine_tune_result(tmp_path: Path, promoted: bool) -> dict:
    before = {**judged(1, 4, 0.9, 0.95), "test_auc": 0.9}
    after = {**judged(3, 4, 0.5, 0.945), "test_auc": 0.91}
    for marks, accuracy in ((before, 0.25), (after, 0.75)):
        marks["feedback"].update(accuracy=accuracy, auc=None, threshold=0.5)
    return {
        "run": "ft", "reason": decide(before, after, 0.01)[1], "from": "/models/best.pth", "from_sha256": "ab" * 32,
        "feedback": {"directory": "/feedback", "train_images": 6, "held_back_images": 4,
                     "skipped": {"no image kept": 2, "image file missing": 0}, "crops": {"real": 3, "fake": 2},
                     "no_face": 1, "repeat": 5, "original_train_images": 40},
        "epochs": 2, "lr": 1e-5, "data_root": "/data", "new_checkpoint": "/ckpt/new.pth", "margin": 0.01,
        "before": before, "after": after, "promoted": str(tmp_path / "best.pth") if promoted else None,
        "previous": str(tmp_path / "previous_best.pth") if promoted else None,
    }


def test_the_report_says_what_was_trained_on_before_and_after_and_the_decision(tmp_path):
    result = fine_tune_result(tmp_path, promoted=True)
    path = write_fine_tune_report(result, tmp_path / "run")
    report = path.read_text()
    assert path == tmp_path / "run" / "FINE_TUNE.md" and report == render_fine_tune_report(result)
    assert report.startswith("# Fine-tuning ft\n\n**Promoted the fine-tuned model: ")
    assert ("6 image(s) trained on (3 real and 2 fake crop(s), each repeated 5x beside 40 original training "
            "images), 4 held back to judge; 1 without a face were not trained on; 2 skipped (no image kept).") in report
    assert "| Held-back feedback right | 1/4 | 3/4 |" in report
    assert "| Validation AUC (original split) | 0.9500 | 0.9450 |" in report
    assert "| Held-back feedback AUC | n/a | n/a |" in report
    assert f"(the replaced model kept as `{tmp_path / 'previous_best.pth'}`)" in report
    assert "run `serve run serve.config` again" in report
    assert json.loads((tmp_path / "run" / "fine_tune.json").read_text())["feedback"]["repeat"] == 5
    kept = render_fine_tune_report(fine_tune_result(tmp_path, promoted=False))
    assert "- Promoted: no; the served model is unchanged." in kept and "serve run" not in kept


def test_the_replaced_model_is_kept_with_its_bytes_after_a_promotion(tmp_path):
    assert keep_previous(tmp_path) is None  # nothing promoted yet: nothing to keep
    write_bytes_atomic(tmp_path / "best.pth", b"old model")
    write_bytes_atomic(tmp_path / "best.json", b'{"run": "old"}')
    previous = keep_previous(tmp_path)
    write_bytes_atomic(tmp_path / "best.pth", b"new model")  # a promotion renames a new file over best.pth
    write_bytes_atomic(tmp_path / "best.json", b'{"run": "new"}')
    assert previous == tmp_path / "previous_best.pth" and previous.read_bytes() == b"old model"
    assert (tmp_path / "previous_best.json").read_bytes() == b'{"run": "old"}'
    assert sorted(os.listdir(tmp_path)) == ["best.json", "best.pth", "previous_best.json", "previous_best.pth"]


@pytest.mark.long
def test_labels_without_images_get_a_sentence_not_a_run(tmp_path):
    store_with(tmp_path / "feedback", ["fake", "real", "fake"], keep_images=False)
    checkpoint = tiny_checkpoint(tmp_path / "best.pth")
    result = fine_tune_command("--from", str(checkpoint), "--feedback", str(tmp_path / "feedback"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'feedback'} holds no labelled image to fine-tune on; 3 correction(s) skipped (no "
        "image kept). A server with args.keep_feedback_images: false keeps labels only, which can judge but not "
        "train.")
    assert "Traceback" not in result.stderr
    missing = fine_tune_command("--from", str(checkpoint), "--feedback", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'nowhere' / 'labels.jsonl'} does not exist: no feedback was recorded under "
        f"{tmp_path / 'nowhere'} yet.")
