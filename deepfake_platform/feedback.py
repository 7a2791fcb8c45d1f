"""Corrections from production: the true label of an answered image, kept for evaluation and fine-tuning.

A feedback folder holds `labels.jsonl` (one line per correction: request id, true label, the answer it
corrects, the image's SHA-256, time) and `images/<sha256>.<ext>` (each image once, by content), unless
images must not be kept. `fine_tune.py` reads it back with `read_feedback`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from deepfake_platform.errors import InvalidInput, MissingInput
from deepfake_platform.files import write_bytes_atomic

LABELS = ("real", "fake")
LABELS_FILE = "labels.jsonl"
IMAGES_DIR = "images"


class FeedbackStore:
    """Append-only storage of corrections under `directory`."""

    def __init__(self, directory: str | Path, keep_images: bool = True):
        self.directory = Path(directory)
        self.keep_images = keep_images
        (self.directory / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def add(self, request_id: str, label: str, answer: dict[str, Any], image: bytes | None,
            suffix: str = ".jpg") -> dict[str, Any]:
        """Record that the answer to `request_id` should have been `label`; returns the stored line."""
        if label not in LABELS:
            raise InvalidInput(f"label must be real or fake, not {label!r}.")
        sha256 = hashlib.sha256(image).hexdigest() if image is not None else None
        stored = None
        if image is not None and self.keep_images:
            path = self.directory / IMAGES_DIR / f"{sha256}{suffix}"
            if not path.exists():
                write_bytes_atomic(path, image)  # two replicas storing the same picture never clash
            stored = str(path.relative_to(self.directory))
        line = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                "request_id": request_id, "label": label, "answer": answer, "image_sha256": sha256, "image": stored}
        with self.lock, open(self.directory / LABELS_FILE, "a") as handle:
            handle.write(json.dumps(line, default=str) + "\n")
        return line


def read_feedback(directory: str | Path) -> list[dict[str, Any]]:
    """Every correction under `directory`, the latest per request id, with the image's absolute path."""
    path = Path(directory) / LABELS_FILE
    if not path.is_file():
        raise MissingInput(f"{path} does not exist: no feedback was recorded under {directory} yet.")
    latest: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash mid-write
        if record.get("image"):
            record["image_path"] = str((Path(directory) / record["image"]).resolve())
        latest[record["request_id"]] = record
    return list(latest.values())
