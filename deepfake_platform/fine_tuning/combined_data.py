"""The data root a fine-tuning run trains on: the original splits (links to the files) plus the training
feedback's crops in train/, each repeated so that the feedback counts beside the original data."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from deepfake_platform.data import load_image
from deepfake_platform.data.scan import CLASSES, SPLITS, load_split
from deepfake_platform.data.sets import FACES_MANIFEST_FILE, FACES_PRESET_FILE
from deepfake_platform.files import copy_atomic, write_atomic, write_text_atomic
from deepfake_platform.fine_tuning.feedback_split import FeedbackError, FeedbackItem
from deepfake_platform.media import MediaScorer

# At most this many copies of each feedback crop per epoch: enough to be heard beside the original data.
MAX_REPEAT = 20
# Feedback makes up about this share of an epoch when --repeat is left to choose.
FEEDBACK_SHARE = 0.25


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


def link_original_splits(data_root: Path, target: Path) -> int:
    """Link every file of `data_root`'s splits under `target` (and copy its face records); the training images."""
    train_images = 0
    for split in SPLITS:
        for path, label in load_split(data_root, split):
            folder = target / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / Path(path).name
            if link.exists():  # same file name in two aliased folders: keep both
                link = folder / f"{hashlib.sha1(str(path).encode()).hexdigest()[:8]}_{Path(path).name}"
            os.symlink(Path(path).resolve(), link)
            train_images += split == "train"
    for name in (FACES_PRESET_FILE, FACES_MANIFEST_FILE):
        if (data_root / name).is_file():
            copy_atomic(data_root / name, target / name)
    return train_images


def build_combined_root(data_root: Path, target: Path, train_items: list[FeedbackItem], scorer: MediaScorer,
                        repeat: int | None) -> dict[str, Any]:
    """A data root at `target`: the original splits plus each training feedback image's crops (the
    checkpoint's face preset; whole images for a whole-image model) in train/, `repeat` times.

    Returns what went in: crops per label, images without a face (not trained on), the repeat used.
    """
    if target.exists():
        shutil.rmtree(target)
    original_train = link_original_splits(data_root, target)
    if not (target / FACES_PRESET_FILE).is_file() and scorer.detector is not None:
        # The checkpoint was trained on faces cropped with its preset: the new one records the same preset.
        write_text_atomic(target / FACES_PRESET_FILE, json.dumps({"preset": scorer.preset.to_dict()}, indent=2))
    crops = []
    no_face = 0
    for item in train_items:
        image = load_image(item.image_path)
        found = [image] if scorer.detector is None else scorer.crops(image)[1]
        no_face += not found
        crops += [(crop, item.label, f"{item.sha256[:16]}_{index}") for index, crop in enumerate(found)]
    copies = repeat_count(len(crops), original_train, repeat)
    per_label = {"real": 0, "fake": 0}
    for crop, label, stem in crops:
        folder = target / "train" / CLASSES[label]
        first = write_atomic(folder / f"feedback_{stem}_r0.png", lambda handle, crop=crop: crop.save(handle, "PNG"))
        for copy in range(1, copies):
            os.symlink(first.name, folder / f"feedback_{stem}_r{copy}.png")
        per_label[CLASSES[label]] += 1
    return {"feedback_crops": per_label, "no_face": no_face, "repeat": copies,
            "original_train_images": original_train}
