"""From raw media to verdicts: images and videos in, per-face fake probabilities and one verdict each out.

A picture is cut into face crops the way the model was trained (the face preset its checkpoint records:
detector, margin, crop size), each crop is scored through the one predict path, and the picture's verdict
is its most suspicious face, as SBI's inference and commercial APIs report it. A model that judges faces
gives no guess where it has none to judge: a picture with no face (`no_face`), or whose faces are all
smaller than a `small_face_factor`-th of the model's input size, is `not_applicable`, with the `reason`,
no label and no probability. A video is judged on frames sampled evenly (32 by default, DeepfakeBench's
protocol), each with its index and time (`time_s`): its fake probability is the mean of the verdicts of its
frames that have one, labelled at the video threshold chosen on validation videos when the checkpoint has
one; a video none of whose frames can be judged is not applicable. A whole-image model always judges.

    scorer = MediaScorer(load_predictor("artifacts/best.pth"))
    verdict = scorer.score_path("clip.mp4")           # verdict.verdict, .fake_probability, .frames, .reason

Every choice that changes a verdict (the face preset, the frames sampled per video, the thresholds, the
precision) is a `ScoringChoices`, built once by `scoring_choices` from the model's record (where training
chose them), else from the defaults here; predict.py, score.py, evaluation and the server all take theirs
from it, so one file gets one verdict whatever the door.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepfake_platform.checkpoints import Checkpoint, read_checkpoint
from deepfake_platform.data.faces import FaceBox, FacePreset, build_face_detector, crop_face
from deepfake_platform.data.images import DEFAULT_MAX_PIXELS, load_image
from deepfake_platform.data.video import (
    DEFAULT_NUM_FRAMES,
    is_video_name,
    sample_video,
    sample_video_from_bytes,
)
from deepfake_platform.errors import InvalidInput
from deepfake_platform.metrics import label_of
from deepfake_platform.predict import DEFAULT_PRECISION

NOT_APPLICABLE = "not_applicable"  # the verdict of a file the model cannot judge: no label, no probability
# A face whose short side is under the model's input size divided by this is too small to judge: upscaled
# more than 4x, a crop holds none of the blending and resampling traces the model learned.
DEFAULT_SMALL_FACE_FACTOR = 4.0


@dataclass
class FaceVerdict:
    """One face: where it is (x, y, width, height in the picture's pixels), how fake it looks."""

    box: list[int]
    detector_score: float
    fake_probability: float
    label: str


@dataclass
class PictureVerdict:
    """One image or video frame: its faces and its verdict (the most suspicious face, or the whole picture),
    or `not_applicable` with the reason (no label, no probability). A frame has its index and time."""

    fake_probability: float | None
    label: str | None
    faces: list[FaceVerdict] = field(default_factory=list)
    no_face: bool = False
    reason: str | None = None
    frame: int | None = None
    time_s: float | None = None

    @property
    def verdict(self) -> str:
        """`fake`, `real` or `not_applicable`."""
        return self.label or NOT_APPLICABLE


@dataclass
class Plan:
    """The inputs to score for some pictures, and which boxes (none: the whole picture) they came from."""

    inputs: list[Image.Image]
    boxes: list[list[FaceBox]]
    frames: list[int | None]
    fps: float = 0.0  # a video's frame rate (0.0: unknown), for the frames' times
    too_small: list[int] = field(default_factory=list)  # per picture, faces found but too small to judge


@dataclass
class MediaVerdict:
    """An image or a video: the verdict, the threshold it was labelled at, and what it is made of."""

    kind: str  # "image" or "video"
    fake_probability: float | None
    label: str | None
    threshold: float
    faces: list[FaceVerdict] = field(default_factory=list)
    no_face: bool = False
    frames: list[PictureVerdict] = field(default_factory=list)
    name: str | None = None
    reason: str | None = None  # why the verdict is not_applicable

    @property
    def verdict(self) -> str:
        """`fake`, `real` or `not_applicable`."""
        return self.label or NOT_APPLICABLE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields, `verdict` beside `label`, each frame's `verdict` too."""
        answer = asdict(self)
        answer["verdict"] = self.verdict
        for frame, picture in zip(answer["frames"], self.frames, strict=True):
            frame["verdict"] = picture.verdict
        return answer


@dataclass(frozen=True)
class ScoringChoices:
    """Every choice that changes a file's fake probability or label, decided in one place for every door
    (predict.py, score.py, evaluation, the server): `scoring_choices` reads them from the model's record."""

    faces: FacePreset
    threshold: float  # a picture's, chosen on validation (at the operating point below)
    video_threshold: float  # a video's mean, chosen on validation videos when training had them
    num_frames: int = DEFAULT_NUM_FRAMES  # frames sampled per video, evenly spaced
    every: int = 0  # instead: every k-th frame
    operating_point: str = "balanced"  # which of the record's named thresholds (scoring_choices' operating_point)
    precision: str = DEFAULT_PRECISION
    input_size: int = 0  # the side of the pictures the model takes (0: unknown, no face is too small)
    small_face_factor: float = DEFAULT_SMALL_FACE_FACTOR  # faces under input_size / this are not judged

    @property
    def min_face_px(self) -> float:
        """The short side, in pixels, under which a face is too small to judge."""
        return self.input_size / self.small_face_factor if self.input_size and self.small_face_factor > 0 else 0.0

    def override(self, **changes: Any) -> ScoringChoices:
        """A copy with the changes that are not None (a command-line flag left unset keeps the model's
        choice); a face mode alone keeps the recorded detector, margin and crop size (the training's)."""
        changes = {key: value for key, value in changes.items() if value is not None}
        if "faces" in changes:
            changes["faces"] = _face_preset(self.faces, changes["faces"])
        return replace(self, **changes)


def scoring_choices(record: Checkpoint, members: Sequence[Checkpoint] = (), operating_point: str | None = None,
                    **overrides: Any) -> ScoringChoices:
    """The choices for a model: what its record says training chose (the face preset of its detectors, or of
    an ensemble's `members`; the thresholds; the video sampling; the input size), else this module's defaults;
    `overrides` (faces, num_frames, every, precision, thresholds, small_face_factor) that are not None replace
    single ones."""
    from deepfake_platform.checkpoints import DetectorCheckpoint, operating_thresholds
    from deepfake_platform.ensemble import model_faces

    # The thresholds of the named operating point (default balanced) the record chose on validation.
    operating_point = operating_point or "balanced"
    threshold, video_threshold = operating_thresholds(record, operating_point)
    sampling = getattr(record, "video", None) or {}
    sizes = [r.image_size for r in (members or [record]) if isinstance(r, DetectorCheckpoint)]
    recorded = ScoringChoices(
        faces=FacePreset.from_dict(model_faces(members or [record])),
        threshold=threshold,
        video_threshold=video_threshold,
        operating_point=operating_point,
        num_frames=int(sampling.get("num_frames", DEFAULT_NUM_FRAMES)),
        every=int(sampling.get("every", 0)),
        input_size=max(sizes, default=0),
    )
    return recorded.override(**overrides)


def file_choices(path: str | Path, **overrides: Any) -> ScoringChoices:
    """`scoring_choices` for a model file (a checkpoint, a frequency detector or an ensemble spec)."""
    from deepfake_platform.ensemble import member_records

    record = read_checkpoint(path)
    return scoring_choices(record, member_records(path, record), **overrides)


def predictor_choices(predictor: Any) -> ScoringChoices:
    """`scoring_choices` for a loaded predictor of the one predict path (a detector, a frequency detector or
    an ensemble, whose members carry their records)."""
    members = [member.record for member in getattr(predictor, "members", {}).values()]
    return scoring_choices(predictor.record, members)


class MediaScorer:
    """Face crops and verdicts for images and videos, from any predictor of the one predict path."""

    def __init__(self, predictor: Any = None, choices: ScoringChoices | None = None, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        """`predictor` scores crops (any of the one predict path); without one (a server whose detectors are
        remote) the scorer only plans crops and assembles verdicts, and `choices` must be given. `choices`
        default to the predictor's (`predictor_choices`)."""
        if choices is None and predictor is None:
            raise TypeError("MediaScorer needs a predictor or the scoring choices.")
        self.predictor = predictor
        self.choices = choices if choices is not None else predictor_choices(predictor)
        self.preset = self.choices.faces
        self.detector = build_face_detector(self.preset) if self.preset.mode != "off" else None
        self.num_frames, self.every = self.choices.num_frames, self.choices.every
        self.max_pixels, self.min_face_px = max_pixels, self.choices.min_face_px
        self.threshold, self.video_threshold = self.choices.threshold, self.choices.video_threshold

    def label(self, probability: float, threshold: float | None = None) -> str:
        """`fake` at or above the threshold (the picture threshold unless another is given), else `real`."""
        return label_of(probability, self.threshold if threshold is None else threshold)

    def faces(self, image: Image.Image) -> tuple[list[FaceBox], list[FaceBox]]:
        """The faces of `image` to judge (largest first; the largest alone in `largest` mode) and those found
        but too small to judge; both empty when faces are off."""
        if self.detector is None:
            return [], []
        found = self.detector.detect(image)
        judged = [box for box in found if min(box.width, box.height) >= self.min_face_px]
        small = [box for box in found if min(box.width, box.height) < self.min_face_px]
        return (judged[:1] if self.preset.mode == "largest" else judged), small

    def crops(self, image: Image.Image) -> tuple[list[FaceBox], list[Image.Image]]:
        """The face boxes of `image` to judge and the crops the model scores (empty when faces are off or
        none is found large enough)."""
        boxes, _ = self.faces(image)
        return boxes, [crop_face(image, box, margin=self.preset.margin, crop_size=self.preset.crop_size)
                       for box in boxes]

    def plan(self, pictures: list[Image.Image], frames: list[int | None] | None = None, fps: float = 0.0) -> Plan:
        """What to score for each picture: its face crops, or the whole picture when faces are off (a picture
        with no face to judge has nothing). The inputs of every picture go to the predictor in one batch;
        `frames` and `fps` (a video's) give each frame its index and time."""
        found = [self.faces(picture) for picture in pictures]
        inputs: list[Image.Image] = []
        for picture, (boxes, _) in zip(pictures, found, strict=True):
            if self.detector is None:
                inputs.append(picture)
            inputs += [crop_face(picture, box, margin=self.preset.margin, crop_size=self.preset.crop_size)
                       for box in boxes]
        return Plan(inputs, [boxes for boxes, _ in found], frames or [None] * len(pictures), fps,
                    [len(small) for _, small in found])

    def assemble(self, plan: Plan, probabilities: Any) -> list[PictureVerdict]:
        """The pictures' verdicts from the probabilities of the plan's inputs, in order."""
        scores = iter(float(p) for p in probabilities)
        too_small = plan.too_small or [0] * len(plan.boxes)
        verdicts = []
        for boxes, frame, small in zip(plan.boxes, plan.frames, too_small, strict=True):
            time_s = round(frame / plan.fps, 3) if frame is not None and plan.fps > 0 else None
            if self.detector is None:
                p = next(scores)
                verdicts.append(PictureVerdict(p, self.label(p), frame=frame, time_s=time_s))
            elif not boxes:
                verdicts.append(PictureVerdict(None, None, no_face=not small, reason=self._no_face_reason(small),
                                               frame=frame, time_s=time_s))
            else:
                faces = []
                for box in boxes:
                    p = next(scores)
                    faces.append(FaceVerdict(box.as_list(), float(box.score), p, self.label(p)))
                top = max(face.fake_probability for face in faces)
                verdicts.append(PictureVerdict(top, self.label(top), faces=faces, frame=frame, time_s=time_s))
        return verdicts

    def _no_face_reason(self, too_small: int) -> str:
        if not too_small:
            return "no face found: this model judges faces, so it gives no verdict on a picture without one"
        return (f"{too_small} face(s) found, all smaller than {self.min_face_px:.0f} px on the short side (the model "
                f"takes {self.choices.input_size} px faces; factor {self.choices.small_face_factor:g}): too small "
                "to judge; send a larger or closer picture")

    def score_pictures(self, pictures: list[Image.Image], frames: list[int | None] | None = None,
                       fps: float = 0.0) -> list[PictureVerdict]:
        """Verdicts for several pictures, every crop (or whole picture) scored in one batch."""
        plan = self.plan(pictures, frames, fps)
        return self.assemble(plan, self.predictor.predict_images(plan.inputs) if plan.inputs else [])

    def image_verdict(self, verdict: PictureVerdict, name: str | None = None) -> MediaVerdict:
        """A picture's verdict as the answer for an image."""
        return MediaVerdict("image", verdict.fake_probability, verdict.label, self.threshold, faces=verdict.faces,
                            no_face=verdict.no_face, name=name, reason=verdict.reason)

    def video_verdict(self, pictures: list[PictureVerdict], name: str | None = None) -> MediaVerdict:
        """A video's verdict from its frames' verdicts: the mean of those that have one, at the video threshold;
        not applicable when no frame decoded or none has a face to judge."""
        scored = [p.fake_probability for p in pictures if p.fake_probability is not None]
        probability = float(np.mean(scored)) if scored else None
        label = None if probability is None else self.label(probability, self.video_threshold)
        reason = None
        if not pictures:
            reason = "no frame of the video could be decoded"
        elif probability is None:
            reason = (f"none of the {len(pictures)} sampled frames has a face large enough to judge "
                      f"(no face in {sum(p.no_face for p in pictures)})")
        return MediaVerdict("video", probability, label, self.video_threshold,
                            no_face=all(p.no_face for p in pictures), frames=pictures, name=name, reason=reason)

    def score_image(self, image: Image.Image, name: str | None = None) -> MediaVerdict:
        """One picture's verdict."""
        return self.image_verdict(self.score_pictures([image])[0], name)

    def score_frames(self, frames: list[tuple[int, Image.Image]], name: str | None = None,
                     fps: float = 0.0) -> MediaVerdict:
        """A video's verdict from its sampled frames (and its frame rate, for their times)."""
        return self.video_verdict(self.score_pictures([image for _, image in frames], [i for i, _ in frames], fps),
                                  name)

    def score_path(self, path: str | Path) -> MediaVerdict:
        """An image or a video file (told apart by its extension)."""
        path = Path(path)
        if is_video_name(path):
            video = sample_video(path, num_frames=self.num_frames, every=self.every, max_pixels=self.max_pixels)
            return self.score_frames(video.frames, name=str(path), fps=video.fps)
        return self.score_image(load_image(path, max_pixels=self.max_pixels), name=str(path))

    def score_video_bytes(self, data: bytes, suffix: str, *, max_duration_s: float | None = None,
                          name: str | None = None) -> MediaVerdict:
        """An uploaded video's verdict (its frames decoded from a temporary file)."""
        video = sample_video_from_bytes(data, suffix, num_frames=self.num_frames, every=self.every,
                                        max_pixels=self.max_pixels, max_duration_s=max_duration_s)
        return self.score_frames(video.frames, name=name, fps=video.fps)


def _face_preset(recorded: FacePreset, faces: FacePreset | dict[str, Any] | str) -> FacePreset:
    """`faces` (a preset, a dict over the recorded one, or a mode alone) on top of the recorded preset."""
    if isinstance(faces, FacePreset):
        return faces
    if isinstance(faces, dict):
        return FacePreset.from_dict({**recorded.to_dict(), **faces})
    return FacePreset.from_dict({**recorded.to_dict(), "mode": faces})


@dataclass
class Explanation:
    """One face (or the whole picture when there is none): the Grad-CAM heatmap drawn on what the model saw."""

    box: list[int] | None
    fake_probability: float
    image: Image.Image


def explainable(predictor: Any) -> Any:
    """The torch detector to explain for a predictor: itself, or an ensemble's first torch member."""
    from deepfake_platform.predict import Predictor

    if isinstance(predictor, Predictor):
        return predictor
    for member in getattr(predictor, "members", {}).values():
        if isinstance(member, Predictor):
            return member
    raise InvalidInput(
        f"{predictor.info.name} is not a neural network (the frequency detector has no gradients to explain); "
        "explain a detector checkpoint or an ensemble with one."
    )


def explain_picture(scorer: MediaScorer, image: Image.Image) -> list[Explanation]:
    """Grad-CAM of the CNN and ViT branches, fused, on each face crop of `image` (or on the whole image)."""
    from deepfake_platform.explain import explain_image

    member = explainable(scorer.predictor)
    boxes, crops = scorer.crops(image)
    targets = list(zip(boxes, crops, strict=True)) or [(None, image)]
    explanations = []
    for box, picture in targets:
        heat, _, probability = explain_image(member.module, member.transform, picture)
        explanations.append(Explanation(box.as_list() if box is not None else None, probability, heat))
    return explanations
