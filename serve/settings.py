"""The `args` of the Serve application in serve.config: one typed record, each default in one place."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deepfake_platform.config import Section, build
from deepfake_platform.data import DEFAULT_MAX_PIXELS


class AppArgs(Section):
    """What serve.config's `args` may set (unknown keys are errors, as in every config)."""

    # A checkpoint (artifacts/best.pth after training), a frequency detector .pth, or an ensemble spec.
    model: str = "artifacts/best.pth"
    # The env var holding the API token; unset or empty: no authentication.
    token_env: str = "DEEPFAKE_API_TOKEN"
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    max_batch_files: int = Field(16, ge=1)
    # Dynamic batching in each Detector replica.
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    precision: Literal["auto", "bf16", "fp32", "int8"] = "auto"
    # How long a request may wait for a live Detector replica (one died mid-request, or is starting again).
    retry_timeout_s: float = Field(30.0, gt=0)
    # Videos (mp4, webm, avi, mov...): bytes per upload, length, and the frames scored, evenly spaced.
    max_video_bytes: int = Field(50 * 1024 * 1024, ge=1)
    max_video_seconds: float = Field(60.0, gt=0)
    video_frames: int = Field(16, ge=1)
    # Empty: crop faces as the model was trained (its checkpoint's face preset); off, largest or all override it.
    faces: Literal["", "off", "largest", "all"] = ""
    # Monitoring: the last drift_window scores against the validation scores; one JSON line per answer
    # (never the image) under log_dir, "" for none. Relative paths are from where `serve run` runs.
    drift_window: int = Field(500, ge=10)
    log_dir: str = "logs/predictions"
    # Feedback: corrections stored under feedback_dir; the images by content hash unless keep_feedback_images
    # is false. The last feedback_cache_items uploads (at most feedback_cache_bytes) are kept for feedback
    # that does not send the image again.
    feedback_dir: str = "feedback"
    keep_feedback_images: bool = True
    feedback_cache_items: int = Field(256, ge=0)
    feedback_cache_bytes: int = Field(100 * 1024 * 1024, ge=0)


def app_args(args: dict | None) -> AppArgs:
    """The app's args from serve.config (or a test), checked: a mistake names the key."""
    return build(AppArgs, dict(args or {}), "the Serve config's args")
