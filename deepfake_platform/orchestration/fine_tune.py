"""Fine-tuning on production feedback: resume a detector on its training data plus labelled corrections,
then keep the new model only when it is better where it was wrong and no worse where it was right.

The feedback (deepfake_platform/feedback.py) is split once, by content hash, into images the new model
trains on and images held back to judge it. Both models are judged the way the server answers: each
held-back image through the same face cropping and predict path (its verdict is its most suspicious face),
and the original validation split through `evaluation.evaluate_record`. The new model is promoted only
when it answers the held-back feedback better (more right at its threshold; at a tie, a lower log loss)
and its validation AUC is at most `margin` below the old one's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_platform.checkpoints import DetectorCheckpoint, read_checkpoint
from deepfake_platform.config import ExperimentConfig, OutputConfig, config_from_dict
from deepfake_platform.data.scan import CLASSES, SPLITS, load_split
from deepfake_platform.data.sets import FACES_MANIFEST_FILE, FACES_PRESET_FILE
from deepfake_platform.feedback import read_feedback
from deepfake_platform.reporting import write_json

# At most this many copies of each feedback crop per epoch: enough to be heard beside the original data.
MAX_REPEAT = 20
# Feedback makes up about this share of an epoch when --repeat is left to choose.
FEEDBACK_SHARE = 0.25


class FeedbackError(ValueError):
    """Feedback that cannot fine-tune a model (too little of it, no images kept)."""


@dataclass
class FeedbackItem:
    """One labelled image from production."""

    image_path: Path
    label: int  # 1: fake
    sha256: str
    request_id: str


@dataclass
class FeedbackSplit:
    """Feedback divided into what the new model trains on and what judges it, and what could not be used."""

    train: list[FeedbackItem]
    held_back: list[FeedbackItem]
    skipped: dict[str, int] = field(default_factory=dict)


def collect_feedback(directory: str | Path) -> tuple[list[FeedbackItem], dict[str, int]]:
    """The usable corrections under `directory` (one per image, the latest label wins), and what was skipped."""
    skipped = {"no image kept": 0, "image file missing": 0}
    by_image: dict[str, FeedbackItem] = {}
    for record in read_feedback(directory):
        if not record.get("image_path"):
            skipped["no image kept"] += 1
            continue
        path = Path(record["image_path"])
        if not path.is_file():
            skipped["image file missing"] += 1
            continue
        sha = record.get("image_sha256") or hashlib.sha256(path.read_bytes()).hexdigest()
        by_image[sha] = FeedbackItem(path, 1 if record["label"] == "fake" else 0, sha, record["request_id"])
    return sorted(by_image.values(), key=lambda item: item.sha256), skipped


def split_feedback(items: list[FeedbackItem], held_back: float) -> tuple[list[FeedbackItem], list[FeedbackItem]]:
    """(train, held back): a `held_back` share of each label, at least one image on each side, chosen by
    content hash so the same feedback always splits the same way."""
    if not 0 < held_back < 1:
        raise FeedbackError(f"--held-back must be between 0 and 1 (a share of the feedback), not {held_back}.")
    if len(items) < 2:
        raise FeedbackError(
            f"fine-tuning needs at least 2 labelled images (one to train on, one held back to judge the new "
            f"model); the feedback holds {len(items)}. Send more with POST /feedback or the web page's button."
        )
    train, held = [], []
    for label in (0, 1):
        group = sorted((item for item in items if item.label == label), key=lambda item: item.sha256)
        count = round(len(group) * held_back)
        held += group[:count]
        train += group[count:]
    if not held:  # every group too small to round up to one: hold back the first image
        held, train = train[:1], train[1:]
    elif not train:
        held, train = held[1:], held[:1]
    return train, held


def repeat_count(feedback_crops: int, original_train: int, repeat: int | None) -> int:
    """Copies of each feedback crop per epoch: `repeat`, or enough for about FEEDBACK_SHARE of an epoch."""
    if repeat is not None:
        if repeat < 1:
            raise FeedbackError(f"--repeat must be at least 1, not {repeat}.")
        return repeat
    if feedback_crops == 0:
        return 1
    wanted = FEEDBACK_SHARE * original_train / ((1 - FEEDBACK_SHARE) * feedback_crops)
    return int(min(MAX_REPEAT, max(1, round(wanted))))


def build_combined_root(data_root: Path, target: Path, train_items: list[FeedbackItem], scorer: Any,
                        repeat: int | None) -> dict[str, Any]:
    """A data root at `target`: the original splits (links to the files) plus each training feedback image's
    crops (the checkpoint's face preset; whole images for a whole-image model) in train/, `repeat` times.

    Returns what went in: crops per label, images without a face (not trained on), the repeat used.
    """
    if target.exists():
        shutil.rmtree(target)
    counts = {"original_train": 0}
    for split in SPLITS:
        for path, label in load_split(data_root, split):
            folder = target / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / Path(path).name
            if link.exists():  # same file name in two aliased folders: keep both
                link = folder / f"{hashlib.sha1(str(path).encode()).hexdigest()[:8]}_{Path(path).name}"
            os.symlink(Path(path).resolve(), link)
            if split == "train":
                counts["original_train"] += 1
    for name in (FACES_PRESET_FILE, FACES_MANIFEST_FILE):
        if (data_root / name).is_file():
            shutil.copy2(data_root / name, target / name)
    if not (target / FACES_PRESET_FILE).is_file() and scorer.detector is not None:
        # The checkpoint was trained on faces cropped with its preset: the new one records the same preset.
        (target / FACES_PRESET_FILE).write_text(json.dumps({"preset": scorer.preset.to_dict()}, indent=2))
    crops: list[tuple[Any, int, str]] = []
    no_face = 0
    from deepfake_platform.data import load_image

    for item in train_items:
        image = load_image(item.image_path)
        if scorer.detector is None:
            crops.append((image, item.label, f"{item.sha256[:16]}_0"))
            continue
        _, found = scorer.crops(image)
        if not found:
            no_face += 1
        crops += [(crop, item.label, f"{item.sha256[:16]}_{index}") for index, crop in enumerate(found)]
    copies = repeat_count(len(crops), counts["original_train"], repeat)
    per_label = {"real": 0, "fake": 0}
    for crop, label, stem in crops:
        folder = target / "train" / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        first = folder / f"feedback_{stem}_r0.png"
        crop.save(first)
        for copy in range(1, copies):
            os.symlink(first.name, folder / f"feedback_{stem}_r{copy}.png")
        per_label[CLASSES[label]] += 1
    return {"feedback_crops": per_label, "no_face": no_face, "repeat": copies,
            "original_train_images": counts["original_train"]}


def judge_on_feedback(scorer: Any, items: list[FeedbackItem]) -> dict[str, Any]:
    """How a model answers held-back feedback, as the server would: accuracy at its threshold, log loss, AUC."""
    from deepfake_platform.data import load_image
    from deepfake_platform.metrics import classification_report

    probabilities = np.array([scorer.score_image(load_image(item.image_path)).fake_probability for item in items],
                             dtype=np.float64)
    labels = np.array([item.label for item in items], dtype=np.int64)
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    log_loss = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    predicted = (probabilities >= scorer.threshold).astype(np.int64)
    result: dict[str, Any] = {
        "images": len(items),
        "correct": int((predicted == labels).sum()),
        "accuracy": float((predicted == labels).mean()) if len(items) else float("nan"),
        "log_loss": log_loss,
        "threshold": float(scorer.threshold),
        "auc": None,
        "answers": [{"image": str(item.image_path), "label": CLASSES[item.label], "fake_probability": float(p)}
                    for item, p in zip(items, probabilities, strict=True)],
    }
    if len(set(labels.tolist())) == 2:
        result["auc"] = float(classification_report(labels, probabilities, scorer.threshold)["auc"])
    return result


def decide(before: dict[str, Any], after: dict[str, Any], margin: float) -> tuple[bool, str]:
    """Whether the fine-tuned model replaces the original, and the sentence that says why.

    `before` / `after`: {"feedback": judge_on_feedback(...), "val_auc": float}. Better on feedback means
    more held-back images answered right, or as many with a lower log loss; the validation AUC may fall by
    at most `margin`.
    """
    fb_before, fb_after = before["feedback"], after["feedback"]
    drop = before["val_auc"] - after["val_auc"]
    if fb_after["correct"] > fb_before["correct"]:
        better = (f"the fine-tuned model answers {fb_after['correct']}/{fb_after['images']} held-back feedback images right, "
                  f"against {fb_before['correct']}/{fb_before['images']}")
    elif fb_after["correct"] == fb_before["correct"] and fb_after["log_loss"] < fb_before["log_loss"]:
        better = (f"the fine-tuned model answers as many held-back feedback images right ({fb_after['correct']}/{fb_after['images']}) "
                  f"with a lower log loss ({fb_after['log_loss']:.4f} against {fb_before['log_loss']:.4f})")
    else:
        return False, (f"Kept the original: the fine-tuned model is not better on the held-back feedback "
                       f"({fb_after['correct']}/{fb_after['images']} right, log loss {fb_after['log_loss']:.4f}; "
                       f"the original {fb_before['correct']}/{fb_before['images']}, {fb_before['log_loss']:.4f}).")
    if drop > margin + 1e-12:
        return False, (f"Kept the original: {better}, but its validation AUC fell by {drop:.4f} "
                       f"({before['val_auc']:.4f} to {after['val_auc']:.4f}), more than the margin {margin:g}.")
    change = ("is unchanged" if abs(drop) < 5e-5 else f"rose by {-drop:.4f}" if drop < 0
              else f"fell by {drop:.4f}, within the margin {margin:g}")
    return True, (f"Promoted the fine-tuned model: {better}, and its validation AUC {change} "
                  f"({before['val_auc']:.4f} to {after['val_auc']:.4f}).")


def fine_tune_config(record: DetectorCheckpoint, source: str, *, name: str, data_root: Path, epochs: int,
                     lr: float, overrides: list[str] | None = None) -> ExperimentConfig:
    """The original run's config, on the combined data, for a few epochs at a (lower) learning rate. The
    weights come from the checkpoint, so no ImageNet weights are looked for."""
    from deepfake_platform.config import apply_overrides

    data = apply_overrides(record.config, overrides or [])
    config = config_from_dict(data, f"{source}" + (" + --set" if overrides else ""))
    config.output = OutputConfig()
    config.name = name
    config.data.root = str(data_root)
    config.train.epochs = epochs
    config.train.lr = lr
    config.model.pretrained = "off"
    return config


def keep_previous(artifacts: Path) -> Path | None:
    """Keep the model about to be replaced as artifacts/previous_best.pth (a hard link where possible)."""
    current = artifacts / "best.pth"
    if not current.is_file():
        return None
    previous = artifacts / "previous_best.pth"
    previous.unlink(missing_ok=True)
    try:
        os.link(current, previous)
    except OSError:
        shutil.copy2(current, previous)
    for suffix in (".json",):
        if (artifacts / f"best{suffix}").is_file():
            shutil.copy2(artifacts / f"best{suffix}", artifacts / f"previous_best{suffix}")
    return previous


def write_fine_tune_report(result: dict[str, Any], run_dir: Path) -> Path:
    """runs/<run>/FINE_TUNE.md and fine_tune.json: what was trained on, before and after, the decision."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "fine_tune.json", result)
    before, after = result["before"], result["after"]

    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    rows = [
        ("Validation AUC (original split)", before["val_auc"], after["val_auc"]),
        ("Test AUC", before["test_auc"], after["test_auc"]),
        ("Held-back feedback right", f"{before['feedback']['correct']}/{before['feedback']['images']}",
         f"{after['feedback']['correct']}/{after['feedback']['images']}"),
        ("Held-back feedback accuracy", before["feedback"]["accuracy"], after["feedback"]["accuracy"]),
        ("Held-back feedback log loss", before["feedback"]["log_loss"], after["feedback"]["log_loss"]),
        ("Held-back feedback AUC", before["feedback"]["auc"], after["feedback"]["auc"]),
        ("Threshold", before["feedback"]["threshold"], after["feedback"]["threshold"]),
    ]
    used = result["feedback"]
    lines = [
        f"# Fine-tuning {result['run']}",
        "",
        f"**{result['reason']}**",
        "",
        f"- From: `{result['from']}` (sha256 `{result['from_sha256'][:16]}`)",
        f"- Feedback: `{used['directory']}`: {used['train_images']} image(s) trained on "
        f"({used['crops']['real']} real and {used['crops']['fake']} fake crop(s), each repeated {used['repeat']}x "
        f"beside {used['original_train_images']} original training images), {used['held_back_images']} held back "
        f"to judge; {used['no_face']} without a face were not trained on"
        + "".join(f"; {count} skipped ({why})" for why, count in used["skipped"].items() if count) + ".",
        f"- Training: {result['epochs']} epoch(s) at learning rate {result['lr']:g} through Ray Train; data "
        f"`{result['data_root']}`.",
        f"- New checkpoint: `{result['new_checkpoint']}`",
        f"- Promoted: `{result['promoted']}`" + (f" (the replaced model kept as `{result['previous']}`)"
                                                if result.get("previous") else "")
        if result["promoted"] else "- Promoted: no; the served model is unchanged.",
        "",
        "| | Before | After |",
        "|---|---|---|",
        *[f"| {label} | {cell(b)} | {cell(a)} |" for label, b, a in rows],
        "",
        f"Rule: promote when the new model answers more held-back feedback right (or as many with a lower log "
        f"loss) and its validation AUC is at most {result['margin']:g} below the original's.",
        "",
    ]
    if result["promoted"]:
        lines += ["A running server keeps the model it loaded: run `serve run serve.config` again (or "
                  "`serve deploy serve.config`) to serve the new one.", ""]
    path = run_dir / "FINE_TUNE.md"
    path.write_text("\n".join(lines))
    return path


def fine_tune(*, checkpoint: str | Path, feedback_dir: str | Path, data: str | None = None, epochs: int = 2,
              lr: float | None = None, margin: float = 0.01, held_back: float = 0.3, repeat: int | None = None,
              name: str | None = None, promote: bool = True, overrides: list[str] | None = None,
              verbose: bool = False, home: Path | None = None) -> dict[str, Any]:
    """Fine-tune `checkpoint` on its training data plus the feedback through Ray Train, judge before and
    after, promote when the rule says so, write the report; the result (also in runs/<run>/fine_tune.json)."""
    from deepfake_platform.checkpoints import file_sha256
    from deepfake_platform.data import resolve_data_root
    from deepfake_platform.evaluation import evaluate_record
    from deepfake_platform.media import MediaScorer
    from deepfake_platform.orchestration.cluster import ensure_ray
    from deepfake_platform.orchestration.finalize import promote as promote_model
    from deepfake_platform.orchestration.train import run_training
    from deepfake_platform.outputs import RunPaths, anchor_outputs, output_home
    from deepfake_platform.predict import Predictor

    if margin < 0:
        raise FeedbackError(f"--margin must be 0 or more (the validation AUC the new model may lose), not {margin}.")
    checkpoint = Path(checkpoint).expanduser().resolve()
    record = read_checkpoint(checkpoint, DetectorCheckpoint)
    items, skipped = collect_feedback(feedback_dir)
    if not items:
        raise FeedbackError(
            f"{feedback_dir} holds no labelled image to fine-tune on"
            + "".join(f"; {count} correction(s) skipped ({why})" for why, count in skipped.items() if count)
            + ". A server with args.keep_feedback_images: false keeps labels only, which can judge but not train."
        )
    train_items, held_items = split_feedback(items, held_back)
    home = home or output_home()
    # Outputs under this command's home, like every other command's (the record's paths may be another machine's).
    original = config_from_dict(record.config, str(checkpoint)).model_copy(update={"output": OutputConfig()})
    original = anchor_outputs(original, home)
    data_root = resolve_data_root(data, original.data.root, original.data.embedded, home)
    run_name = name or now_name()
    paths = RunPaths.for_config(anchor_outputs(original.model_copy(update={"name": run_name}), home))
    combined = paths.run_dir / "data"

    precision = record.precision or original.train.precision
    old_scorer = MediaScorer(Predictor(record, precision=precision, path=checkpoint))
    print(f"Fine-tuning {record.detector} from {checkpoint}: {len(train_items)} feedback image(s) to train on, "
          f"{len(held_items)} held back, on {data_root}.", flush=True)
    contents = build_combined_root(data_root, combined, train_items, old_scorer, repeat)
    before = {"feedback": judge_on_feedback(old_scorer, held_items),
              "val_auc": evaluate_record(record, checkpoint, data_root, "val")["metrics"]["auc"],
              "test_auc": evaluate_record(record, checkpoint, data_root, "test")["metrics"]["auc"]}
    del old_scorer

    config = anchor_outputs(fine_tune_config(record, str(checkpoint), name=run_name, data_root=combined,
                                             epochs=epochs, lr=lr if lr is not None else record.config.get(
                                                 "train", {}).get("lr", 1e-4) / 10, overrides=overrides), home)
    ensure_ray(verbose=verbose)
    outcome = run_training(config, combined, verbose=verbose, init_from=str(checkpoint))
    new = read_checkpoint(outcome.best_checkpoint, DetectorCheckpoint)
    new_scorer = MediaScorer(Predictor(new, precision=new.precision or precision, path=outcome.best_checkpoint))
    after = {"feedback": judge_on_feedback(new_scorer, held_items),
             "val_auc": evaluate_record(new, outcome.best_checkpoint, data_root, "val")["metrics"]["auc"],
             "test_auc": evaluate_record(new, outcome.best_checkpoint, data_root, "test")["metrics"]["auc"]}
    chosen, reason = decide(before, after, margin)
    result: dict[str, Any] = {
        "run": run_name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "from": str(checkpoint),
        "from_sha256": file_sha256(checkpoint),
        "data_root": str(data_root),
        "combined_data_root": str(combined),
        "epochs": config.train.epochs,
        "lr": config.train.lr,
        "margin": margin,
        "feedback": {"directory": str(Path(feedback_dir).resolve()), "train_images": len(train_items),
                     "held_back_images": len(held_items), "skipped": skipped, "crops": contents["feedback_crops"],
                     "no_face": contents["no_face"], "repeat": contents["repeat"],
                     "original_train_images": contents["original_train_images"],
                     "held_back": [item.request_id for item in held_items]},
        "before": before,
        "after": after,
        "new_checkpoint": str(outcome.best_checkpoint),
        "promote_requested": promote,
        "decision": "promote" if chosen else "keep",
        "reason": reason if promote or not chosen else reason.replace("Promoted", "Would promote") + " (--no-promote)",
        "promoted": None,
        "previous": None,
    }
    if chosen and promote:
        previous = keep_previous(paths.artifacts)
        summary = {"run": run_name, "fine_tuned_from": str(checkpoint),
                   "best": {"epoch": new.epoch, "val_auc": new.val_auc, "val_threshold": new.val_threshold},
                   "fine_tune": {"before": {k: before[k] for k in ("val_auc", "test_auc")},
                                 "after": {k: after[k] for k in ("val_auc", "test_auc")}}}
        result["promoted"] = str(promote_model(new, paths.artifacts, summary))
        result["previous"] = str(previous) if previous else None
    result["report"] = str(write_fine_tune_report(result, paths.run_dir))
    return result


def now_name() -> str:
    """A run name for a fine-tuning run started now."""
    return f"finetune-{dt.datetime.now():%Y%m%d-%H%M%S}"
