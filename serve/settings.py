"""The Serve application's settings: serve.config's `args`, one typed record with each default in one place.

`app_args` builds it once, in the builder; the ingress and the upload checks read it, so no other module
holds a default or a fallback of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from deepfake_platform.config import ConfigError, Section, build
from deepfake_platform.data import DEFAULT_MAX_PIXELS
from deepfake_platform.serving_state import STATE_FILE

# What GET /models shows under "limits" (with the frames scored per video): what one request may send, and
# how long it may wait for a detector.
LIMIT_FIELDS = ("max_body_bytes", "max_pixels", "max_batch_files", "retry_timeout_s", "max_video_bytes",
                "max_video_seconds")


class ChallengerLimits(Section):
    """When a challenger is withdrawn by itself: judged once it has `min_requests` compared answers."""

    min_requests: int = Field(20, ge=1)
    # Share of the challenger's calls that failed (it could not load, or raised).
    max_error_rate: float = Field(0.05, ge=0, le=1)
    # The challenger's 95th-percentile seconds per request, in milliseconds.
    max_p95_latency_ms: float = Field(5000.0, gt=0)
    # PSI of the challenger's recent scores against its own validation scores.
    max_psi: float = Field(0.5, gt=0)
    # Share of compared requests whose label differs from the champion's.
    max_disagreement: float = Field(0.2, ge=0, le=1)


class ChallengerArgs(Section):
    """How a registered challenger meets live traffic (experiments/models.py challenge V may override mode and
    fraction): `shadow` scores every request after the champion's answer is sent; `canary` answers `fraction`
    of the requests itself."""

    mode: Literal["shadow", "canary"] = "shadow"
    fraction: float = Field(0.1, ge=0, le=1)
    limits: ChallengerLimits = Field(default_factory=ChallengerLimits)


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
    # Videos (mp4, webm, avi, mov...): bytes per upload, length, and the frames scored, evenly spaced (None:
    # as the model's record says, like predict.py and score.py; see deepfake_platform.media.scoring_choices).
    max_video_bytes: int = Field(50 * 1024 * 1024, ge=1)
    max_video_seconds: float = Field(60.0, gt=0)
    video_frames: int | None = Field(None, ge=1)
    # Empty: crop faces as the model was trained (its checkpoint's face preset); off, largest or all override it.
    faces: Literal["", "off", "largest", "all"] = ""
    # A face smaller than the model's input size divided by this is not judged (none left: not applicable);
    # None: the platform's default (deepfake_platform.media).
    small_face_factor: float | None = Field(None, gt=0)
    # Which of the model's thresholds labels an answer (a request may ask for another: ?operating_point=):
    # balanced (Youden's J on validation), high_precision (at most the target false-positive rate there) or
    # high_recall (at most the target false-negative rate).
    operating_point: Literal["balanced", "high_precision", "high_recall"] = "balanced"
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
    # The model registry's serving state (deepfake_platform/serving_state.py): "auto" follows serving.json
    # beside `model` when there is one (promote, challenge and rollback switch the running server); "" never.
    serving_state: str = "auto"
    # Seconds between two reads of the serving state by each replica.
    state_poll_s: float = Field(1.0, gt=0)
    challenger: ChallengerArgs = Field(default_factory=ChallengerArgs)

    @property
    def max_request_bytes(self) -> int:
        """The most a request may carry: a video may be larger than an image."""
        return max(self.max_body_bytes, self.max_video_bytes)

    def limits(self) -> dict[str, float]:
        """The request limits, JSON-ready (shown by GET /models)."""
        return {name: getattr(self, name) for name in LIMIT_FIELDS}

    def with_absolute_paths(self) -> AppArgs:
        """A copy whose paths are absolute (replicas do not run where `serve run` ran); "auto" becomes the
        serving.json beside the model."""
        state = self.serving_state
        if state == "auto":
            state = str(Path(self.model).expanduser().resolve().parent / STATE_FILE)
        return self.model_copy(update={key: str(Path(value).expanduser().resolve()) if value else ""
                                       for key, value in (("log_dir", self.log_dir),
                                                          ("feedback_dir", self.feedback_dir),
                                                          ("serving_state", state))})


def app_args(args: Any) -> AppArgs:
    """The app's settings from serve.config's `args` (or a test's dict), checked: a mistake names the key."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ConfigError(f"the Serve config's args must be a mapping of names to values, not {args!r}.")
    return build(AppArgs, args, "the Serve config's args")
