"""What the HTTP API answers and accepts, as FastAPI shows it on /docs: the answer models and request bodies."""

from __future__ import annotations

from pydantic import BaseModel


class ModelIdentity(BaseModel):
    """Which model answered."""

    name: str
    checkpoint: str
    sha256: str
    # With a model registry (experiments/models.py): the registered model, the version and its role
    # (champion, or challenger for a canary's share of the requests); null for a plain checkpoint.
    registered_model: str | None = None
    version: int | None = None
    role: str | None = None


class Face(BaseModel):
    """One face: its box (x, y, width, height in the picture's pixels) and how fake it looks."""

    box: list[int]
    detector_score: float
    fake_probability: float
    label: str
    logit: float | None = None  # the detector's raw logit (null where the calibration cannot give it back)


class Frame(BaseModel):
    """One sampled frame of a video, its time (null when the video records no frame rate) and its verdict (its
    most suspicious face, or not_applicable with the reason)."""

    frame: int | None
    time_s: float | None = None
    verdict: str
    reason: str | None = None
    fake_probability: float | None
    label: str | None
    faces: list[Face]
    no_face: bool


class Credentials(BaseModel):
    """The C2PA manifest the upload carries (content credentials), reported beside the verdict, never in it."""

    present: bool
    valid: bool | None = None
    validation_state: str | None = None  # Valid, Trusted or Invalid
    claim_generator: str | None = None
    generative_ai: bool | None = None  # an action declares trainedAlgorithmicMedia or a composite form
    digital_source_types: list[str] = []
    validation_failures: list[str] = []
    note: str | None = None


class Prediction(BaseModel):
    """The verdict for one image (its most suspicious face) or video (the mean of its frames' verdicts):
    fake, real, or not_applicable (no face to judge, with the reason; then label and fake_probability are null)."""

    kind: str
    verdict: str
    reason: str | None = None
    # Calibrated on validation: among answers of 0.8, about 80 % are fake.
    fake_probability: float | None
    # The detector's raw logit behind it (null for an isotonic calibration, or when not applicable).
    logit: float | None = None
    label: str | None
    threshold: float
    # Which of the model's validation-chosen thresholds labelled it: balanced, high_precision or high_recall.
    operating_point: str = "balanced"
    faces: list[Face] = []
    no_face: bool = False
    frames: list[Frame] = []
    credentials: Credentials | None = None
    model: ModelIdentity
    detectors: dict[str, float | None]
    latency_ms: float
    filename: str | None = None
    request_id: str


# The request bodies, for /docs: the routes read them from the raw request (see serve/uploads.py).
IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "video/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
FEEDBACK_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["request_id", "label"],
        "properties": {"request_id": {"type": "string"}, "label": {"type": "string", "enum": ["real", "fake"]},
                       "file": {"type": "string", "format": "binary"}},
    }}},
}
BATCH_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
    }}},
}
ERRORS = {code: {"description": text, "content": {"application/json": {"example": {"error": "a sentence"}}}}
          for code, text in [(400, "unreadable, empty or truncated image or video"), (401, "missing or wrong token"),
                             (413, "body, image or video too large, or video too long"),
                             (415, "not an image or video content type")]}
