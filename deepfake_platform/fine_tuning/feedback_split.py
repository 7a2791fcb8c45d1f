"""Which feedback trains the new model and which judges it: one labelled image per content hash, split by
that hash, so the same feedback always splits the same way."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from deepfake_platform.data.scan import CLASSES
from deepfake_platform.errors import UserError
from deepfake_platform.feedback import read_feedback


class FeedbackError(UserError, ValueError):
    """Feedback that cannot fine-tune a model (too little of it, no images kept), or a fine-tuning flag out of range."""


@dataclass
class FeedbackItem:
    """One labelled image from production."""

    image_path: Path
    label: int  # 1: fake
    sha256: str
    request_id: str


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
        by_image[sha] = FeedbackItem(path, CLASSES.index(record["label"]), sha, record["request_id"])
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
