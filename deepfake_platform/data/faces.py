"""Find faces in an RGB image and cut them out as square crops, offline.

Deepfake detectors look at the face, so a photo or a video frame is reduced to face crops first: a square
centred on the detected box, enlarged by a margin (1.3 as in DeepfakeBench and SBI) and resized to
`crop_size`. Two detectors sit behind one `FaceDetector` protocol:

- "haar" (the default): OpenCV's frontal-face Haar cascade, shipped inside opencv-python-headless, so it
  works with no download. Frontal faces only; good enough to crop the subject of a portrait or a frame.
- "yunet": OpenCV's YuNet CNN, more accurate and rotation tolerant; its 230 kB ONNX file is not shipped,
  so `faces.model_path` must name a local copy of face_detection_yunet_2023mar.onnx from OpenCV Zoo.

    preset = FacePreset(mode="largest")
    crops = detect_faces(load_image("photo.jpg"), preset)    # [] when no face is found
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from deepfake_platform.config import Section, build
from deepfake_platform.errors import UserError

FACE_MODES = ("off", "largest", "all")
FACE_DETECTORS = ("haar", "yunet")
YUNET_MODEL_NAME = "face_detection_yunet_2023mar.onnx"
YUNET_MODEL_URL = "https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet"

_HAAR_CASCADE = "haarcascade_frontalface_default.xml"
_HAAR_WINDOW_PX = 24  # the cascade's training window
# The working copy is scaled so that the smallest face looked for spans 40 px. On 50 LFW faces pasted into
# photos at 1.25 times that minimum, 32 px found 35, 40 px found 41, and scanning the full image with
# minSize 1/20 of the short side found 45 at 2.5 times the cost; at 1.7 and 2.5 times the minimum all
# three found 45-48.
_HAAR_MIN_FACE_PX = 40
# minNeighbors 7 rather than OpenCV's customary 3-5: at this scale a patch of the astronaut photo's
# background gathers 6 overlapping hits and, being larger than the face, would win "largest"; true faces
# gather dozens. On those 150 pasted faces, going from 5 to 7 lost 3 faces and both false hits.
_HAAR_MIN_NEIGHBORS = 7


class FaceDetectorError(UserError, ValueError):
    """A face detector that cannot be built: a missing model file or an OpenCV without the cascade."""


@dataclass(frozen=True)
class FaceBox:
    """One detected face: an axis-aligned box in the original image's pixels and a 0..1 confidence."""

    x: int
    y: int
    width: int
    height: int
    score: float

    @property
    def area(self) -> int:
        """Width times height, in pixels."""
        return self.width * self.height

    def as_list(self) -> list[int]:
        """[x, y, width, height], the layout OpenCV and most annotation files use."""
        return [self.x, self.y, self.width, self.height]

    def to_dict(self) -> dict[str, Any]:
        """The box as plain JSON-able values."""
        return asdict(self)


class FaceDetector(Protocol):
    """Anything that finds faces: `detect` takes an RGB PIL image and returns boxes, largest first."""

    name: str

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Every face found in `image`, in its pixel coordinates, sorted by area, largest first."""
        ...


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade on a downscaled, histogram-equalised grey copy of the image.

    Cost does not grow with the image: the working copy is scaled so that the smallest face looked for
    (`min_face` of the short side) spans 40 px, and its longer side is at most `max_side`. The score is
    the logistic function 1 / (1 + exp(-w)) of the cascade's last-stage weight w (from detectMultiScale3
    with outputRejectLevels): monotone in the detector's confidence, not a calibrated probability.
    """

    name = "haar"

    def __init__(self, *, max_side: int = 1024, min_face: float = 0.1, scale_factor: float = 1.1,
                 min_neighbors: int = _HAAR_MIN_NEIGHBORS):
        if max_side < _HAAR_WINDOW_PX:
            raise ValueError(f"max_side is {max_side}; it must be at least {_HAAR_WINDOW_PX} pixels.")
        if not 0.0 < min_face <= 1.0:
            raise ValueError(f"min_face is {min_face}; give the smallest face as a fraction of the image's "
                             "short side, between 0 and 1 (0.1 finds faces a tenth of the short side).")
        self.max_side = max_side
        self.min_face = min_face
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        cascade_dir = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = os.path.join(cascade_dir, _HAAR_CASCADE)
        if not os.path.isfile(path):
            raise FaceDetectorError(
                f"OpenCV {cv2.__version__} does not ship {_HAAR_CASCADE} (looked in {cascade_dir or 'cv2.data'});"
                " install opencv-python-headless<5, which bundles the Haar cascades, or use faces.detector: "
                "yunet with faces.model_path set."
            )
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise FaceDetectorError(f"OpenCV could not load the Haar cascade {path}; reinstall "
                                    "opencv-python-headless<5.")
        # A CascadeClassifier keeps scratch buffers between calls, so one instance shared by the threads
        # of a server must not run two detections at once.
        self._lock = threading.Lock()

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Every frontal face in `image`, in its pixel coordinates, largest first."""
        width, height = image.size
        scale = min(1.0, self.max_side / max(width, height),
                    _HAAR_MIN_FACE_PX / (self.min_face * min(width, height)))
        work_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if min(work_size) < _HAAR_WINDOW_PX:
            return []  # smaller than one cascade window: no face can be found
        # Grey first, then a box (area-average) downscale: on a 12 MP photo this is 4x cheaper than going
        # through a full-size numpy copy.
        grey = image.convert("L")
        if work_size != (width, height):
            grey = grey.resize(work_size, Image.Resampling.BOX)
        pixels = cv2.equalizeHist(np.asarray(grey))
        min_px = max(_HAAR_WINDOW_PX, round(self.min_face * min(width, height) * scale))
        with self._lock:
            rects, _, weights = self._cascade.detectMultiScale3(
                pixels, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                minSize=(min_px, min_px), outputRejectLevels=True,
            )
        scores = [1.0 / (1.0 + math.exp(-float(w))) for w in np.asarray(weights).reshape(-1)]
        boxes = [_box_from_work(rect, score, scale, width, height)
                 for rect, score in zip(np.asarray(rects).reshape(-1, 4), scores, strict=True)]
        return _largest_first(boxes)


class YuNetFaceDetector:
    """OpenCV's YuNet CNN face detector (FaceDetectorYN) from a local ONNX file; scores are its own 0..1."""

    name = "yunet"

    def __init__(self, model_path: str, score_threshold: float = 0.6, max_side: int = 1024):
        if not model_path or not os.path.isfile(model_path):
            raise FaceDetectorError(
                f"The YuNet face model {model_path or '(no path given)'} does not exist. Download "
                f"{YUNET_MODEL_NAME} from OpenCV Zoo ({YUNET_MODEL_URL}) and set faces.model_path to its "
                "path, or use faces.detector: haar, which needs no file."
            )
        self.model_path = model_path
        self.max_side = max_side
        try:
            # The input size is a placeholder: detect() sets the real one for every image.
            self._net = cv2.FaceDetectorYN.create(model_path, "", (320, 320), score_threshold)
        except cv2.error as error:
            raise FaceDetectorError(
                f"OpenCV could not read the YuNet face model {model_path} ({str(error).strip()}). Download "
                f"{YUNET_MODEL_NAME} again from OpenCV Zoo ({YUNET_MODEL_URL}) and point faces.model_path at "
                "it; OpenCV 4.8 or newer is needed for the 2023mar model."
            ) from error
        # setInputSize and detect share the network's state: one detection at a time per instance.
        self._lock = threading.Lock()

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Every face YuNet finds above its score threshold, in `image`'s pixel coordinates, largest first."""
        width, height = image.size
        scale = min(1.0, self.max_side / max(width, height))
        work_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if work_size != (width, height):
            rgb = rgb.resize(work_size, Image.Resampling.BOX)
        bgr = cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)
        with self._lock:
            self._net.setInputSize(work_size)
            _, faces = self._net.detect(bgr)
        if faces is None:
            return []
        # Each row: x, y, w, h, five landmark (x, y) pairs, score.
        boxes = [_box_from_work(row[:4], float(row[14]), scale, width, height) for row in faces]
        return _largest_first(boxes)


def _box_from_work(rect: Any, score: float, scale: float, width: int, height: int) -> FaceBox:
    """A box found on the working copy, mapped back to the original image and clipped to it."""
    x0, y0, w, h = (round(float(v) / scale) for v in rect)
    left, top = min(max(0, x0), width - 1), min(max(0, y0), height - 1)
    right, bottom = min(width, x0 + w), min(height, y0 + h)
    return FaceBox(left, top, max(1, right - left), max(1, bottom - top), score)


def _largest_first(boxes: list[FaceBox]) -> list[FaceBox]:
    return sorted(boxes, key=lambda box: (box.area, box.score), reverse=True)


class FacePreset(Section):
    """How images become face crops: the `faces` section of a config, recorded in every checkpoint trained
    on extracted faces so that prediction crops the same way."""

    mode: Literal["off", "largest", "all"] = "off"
    detector: Literal["haar", "yunet"] = "haar"
    model_path: str = ""
    margin: float = Field(1.3, ge=1.0)
    crop_size: int = Field(256, ge=16)

    @model_validator(mode="after")
    def _yunet_needs_its_file(self) -> FacePreset:
        if self.detector == "yunet" and self.mode != "off" and not self.model_path:
            raise ValueError(f"model_path is empty; set it to a local copy of {YUNET_MODEL_NAME} from "
                             f"OpenCV Zoo ({YUNET_MODEL_URL}), or use detector haar")
        return self

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> FacePreset:
        """A checked preset from a mapping (a config's or a checkpoint's); missing keys take the defaults."""
        return build(cls, dict(values or {}), "the faces config", prefix="faces")


def build_face_detector(preset: FacePreset) -> FaceDetector:
    """The detector `preset` names, built once per (detector, model_path) in this process and then reused."""
    model_path = os.path.abspath(preset.model_path) if preset.detector == "yunet" else ""
    return _cached_detector(preset.detector, model_path)


@functools.lru_cache(maxsize=8)
def _cached_detector(detector: str, model_path: str) -> FaceDetector:
    # Loading the cascade XML or the ONNX graph costs ~50 ms; a server calls this once per request.
    if detector == "yunet":
        return YuNetFaceDetector(model_path)
    return HaarFaceDetector()


def square_box(box: FaceBox, margin: float, image_width: int, image_height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a square centred on `box` with side margin * max(w, h).

    The square may reach past the image border; `crop_face` pads what lies outside. The image size is
    only checked against the box, to catch a box that belongs to another image or frame.
    """
    if margin < 1.0:
        raise ValueError(f"margin is {margin}; it must be at least 1 (1.3 adds 30% around the face).")
    if not (0 <= box.x < image_width and 0 <= box.y < image_height and box.width > 0 and box.height > 0):
        raise ValueError(f"the face box {box.as_list()} does not lie inside a {image_width}x{image_height} "
                         "image; pass the box detected on this image.")
    side = max(1, round(margin * max(box.width, box.height)))
    left = round(box.x + box.width / 2 - side / 2)
    top = round(box.y + box.height / 2 - side / 2)
    return left, top, left + side, top + side


@dataclass
class FaceCrop:
    """A detected face and its square crop (RGB, crop_size x crop_size)."""

    box: FaceBox
    image: Image.Image


def crop_face(image: Image.Image, box: FaceBox, *, margin: float, crop_size: int) -> Image.Image:
    """The square around `box` (see `square_box`) resized to crop_size x crop_size with Lanczos filtering.

    Parts of the square outside the image repeat the nearest edge pixels rather than black: a black bar is
    a sharp artificial edge, the kind of boundary a deepfake detector learns to call fake.
    """
    width, height = image.size
    left, top, right, bottom = square_box(box, margin, width, height)
    inside = (max(left, 0), max(top, 0), min(right, width), min(bottom, height))
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if inside != (left, top, right, bottom):
        pixels = np.asarray(rgb.crop(inside))
        pad = ((inside[1] - top, bottom - inside[3]), (inside[0] - left, right - inside[2]), (0, 0))
        return Image.fromarray(np.pad(pixels, pad, mode="edge")).resize(
            (crop_size, crop_size), Image.Resampling.LANCZOS)
    # Resizing straight from the box skips copying the crop first.
    return rgb.resize((crop_size, crop_size), Image.Resampling.LANCZOS, box=inside)


def detect_faces(image: Image.Image, preset: FacePreset, detector: FaceDetector | None = None) -> list[FaceCrop]:
    """Face crops of `image` per `preset.mode`: none for "off", at most one for "largest", all for "all"."""
    if preset.mode == "off":
        return []
    detector = detector or build_face_detector(preset)
    boxes = detector.detect(image)
    if preset.mode == "largest":
        boxes = boxes[:1]
    return [FaceCrop(box, crop_face(image, box, margin=preset.margin, crop_size=preset.crop_size))
            for box in boxes]
