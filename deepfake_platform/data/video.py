"""Decode a few frames of a video into the RGB pictures every model sees, and reject what cannot be decoded.

A video is judged on sampled frames: `num_frames` evenly spaced over the whole clip (DeepfakeBench's
protocol, 32 by default) or every k-th frame. Decoding goes through OpenCV's bundled FFmpeg, so any
container and codec it reads works (MP4/MOV/M4V, AVI, MKV, WebM).

    frames = sample_frames("clip.mp4", num_frames=8)          # [(frame index, RGB PIL image), ...]
    frames = sample_frames_from_bytes(upload, ".mp4", max_duration_s=60)
    video = sample_video("clip.mp4", num_frames=8)            # video.frames, and video.fps for the frames' times
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from deepfake_platform.data.images import DEFAULT_MAX_PIXELS
from deepfake_platform.errors import MissingInput, UserError

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v"})
DEFAULT_NUM_FRAMES = 32

# Seeking makes FFmpeg decode from the previous keyframe; stepping with grab() decodes every frame in
# between. Below this gap (longer than the usual 12-frame GOP) stepping is as cheap and always exact.
_SEEK_GAP = 48
# When the container does not record its frame count, frames are counted by decoding, up to this many.
_MAX_COUNTED_FRAMES = 100_000
# Codecs that opencv-python-headless's FFmpeg can write, each checked by reading the file back. H.264
# ('avc1') is not among them: the wheels ship without an H.264 encoder.
_WRITER_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG",
                  ".webm": "VP80"}
_UPLOAD_NAME = "the uploaded video"


class BadVideoError(UserError, ValueError):
    """A video that cannot be decoded, or that is too large or too long to accept."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name} {reason}")
        self.reason = reason


class VideoTooLargeError(BadVideoError):
    """A video over an acceptance limit (frame size or duration): a different answer from an undecodable one."""


def is_video_name(path: str | Path) -> bool:
    """True for a visible file name whose extension is one of VIDEO_EXTENSIONS (case-insensitive)."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video whose first frame decodes; fps is 0.0 when it says nothing."""

    frames: int
    fps: float
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        """Frames divided by frame rate, in seconds; 0.0 when the frame rate is unknown."""
        return self.frames / self.fps if self.fps > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The fields and the duration as plain JSON-able values."""
        return {**asdict(self), "duration_s": self.duration_s}


def probe_video(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoInfo:
    """Frame count, frame rate and size of a video, after checking that its first frame decodes."""
    capture, info, _ = _open(Path(path), str(path), max_pixels)
    capture.release()
    return info


def frame_indices(total: int, *, num_frames: int = DEFAULT_NUM_FRAMES, every: int = 0) -> list[int]:
    """Indices of the frames to sample from a video of `total` frames, ascending and unique.

    every > 0: frames 0, every, 2 * every, ... Otherwise `num_frames` evenly spaced from the first to
    the last frame, truncated to integers exactly as DeepfakeBench's preprocessing does
    (np.linspace(0, total - 1, num_frames, dtype=int)); a video shorter than that gives all its frames.
    """
    if every < 0:
        raise ValueError(f"every is {every}; give a positive step to take every k-th frame, or 0 to take "
                         "num_frames evenly spaced frames.")
    if every == 0 and num_frames < 1:
        raise ValueError(f"num_frames is {num_frames}; sample at least 1 frame.")
    if total <= 0:
        return []
    if every > 0:
        return list(range(0, total, every))
    return np.unique(np.linspace(0, total - 1, num_frames, dtype=int)).tolist()


@dataclass(frozen=True)
class SampledVideo:
    """The frames sampled from a video, and its frame rate (0.0 when the container records none)."""

    frames: list[tuple[int, Image.Image]]
    fps: float


def sample_frames(path: str | Path, *, num_frames: int = DEFAULT_NUM_FRAMES, every: int = 0,
                  max_pixels: int = DEFAULT_MAX_PIXELS, max_frames: int | None = None,
                  max_duration_s: float | None = None) -> list[tuple[int, Image.Image]]:
    """(frame index, RGB image) pairs for the frames `frame_indices` picks, in order.

    `max_frames` caps how many frames are returned (the first ones of an `every` sampling);
    `max_duration_s` refuses a longer video with BadVideoError. Frames that fail to decode part-way
    through (a cut-off file, a frame count the container overstates) are skipped.
    """
    return sample_video(path, num_frames=num_frames, every=every, max_pixels=max_pixels, max_frames=max_frames,
                        max_duration_s=max_duration_s).frames


def sample_video(path: str | Path, **kwargs: Any) -> SampledVideo:
    """`sample_frames` with the video's frame rate, which gives each frame its time (index / fps)."""
    return _sample(Path(path), str(path), **kwargs)


def sample_frames_from_bytes(data: bytes, suffix: str, **kwargs: Any) -> list[tuple[int, Image.Image]]:
    """`sample_frames` on an uploaded file's bytes; `suffix` is its extension, e.g. ".mp4"."""
    return sample_video_from_bytes(data, suffix, **kwargs).frames


def sample_video_from_bytes(data: bytes, suffix: str, **kwargs: Any) -> SampledVideo:
    """`sample_video` on an uploaded file's bytes; `suffix` is its extension, e.g. ".mp4"."""
    suffix = suffix.lower() if suffix.startswith(".") else f".{suffix.lower()}"
    if suffix not in VIDEO_EXTENSIONS:
        raise BadVideoError(_UPLOAD_NAME, f"has the extension {suffix!r}; send one of "
                                          f"{', '.join(sorted(VIDEO_EXTENSIONS))}.")
    if not data:
        raise BadVideoError(_UPLOAD_NAME, "is empty (0 bytes); check that the upload completed.")
    # OpenCV reads only from a path, and FFmpeg uses the suffix as a hint for the container.
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as handle:
        handle.write(data)
    try:
        return _sample(Path(handle.name), _UPLOAD_NAME, **kwargs)
    finally:
        os.unlink(handle.name)


def write_video(path: str | Path, frames: Sequence[np.ndarray | Image.Image], fps: float = 10) -> Path:
    """Write RGB frames (uint8 arrays or PIL images, all one even size) as a video; the suffix picks the codec."""
    path = Path(path)
    codec = _WRITER_CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"cannot write {path}: use one of the extensions {', '.join(sorted(_WRITER_CODECS))}.")
    if len(frames) == 0:
        raise ValueError(f"cannot write {path}: no frames were given.")
    first = _to_bgr(frames[0])
    height, width = first.shape[:2]
    if width % 2 or height % 2:
        # OpenCV's encoders would silently crop odd sizes to even ones.
        raise ValueError(f"cannot write {path}: the frames are {width}x{height}, and video codecs need even "
                         "sizes; crop or pad them by one pixel.")
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*codec), float(fps),
                             (width, height))
    if not writer.isOpened():
        raise ValueError(f"OpenCV could not open a {codec} video writer for {path}; check that the folder "
                         "exists and is writable, or write an .avi (MJPG) instead.")
    try:
        for number, frame in enumerate(frames):
            pixels = first if number == 0 else _to_bgr(frame)
            if pixels.shape[:2] != (height, width):
                # VideoWriter drops a frame of the wrong size without a word.
                raise ValueError(f"cannot write {path}: frame {number} is {pixels.shape[1]}x{pixels.shape[0]} "
                                 f"but the first frame is {width}x{height}; resize the frames to one size.")
            writer.write(pixels)
    finally:
        writer.release()
    return path


def _to_bgr(frame: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise ValueError(f"a video frame must be a uint8 RGB (H, W, 3) or grey (H, W) array, not "
                         f"{frame.dtype} {frame.shape}.")
    code = cv2.COLOR_GRAY2BGR if frame.ndim == 2 else cv2.COLOR_RGB2BGR
    return cv2.cvtColor(frame, code)


def _open(path: Path, name: str, max_pixels: int) -> tuple[cv2.VideoCapture, VideoInfo, np.ndarray]:
    """An open capture positioned after frame 0, what the container says, and frame 0 itself (BGR)."""
    if not path.is_file():
        raise MissingInput(f"{path} does not exist or is not a file.")
    if path.stat().st_size == 0:
        raise BadVideoError(name, "is empty (0 bytes); check that the file was copied or uploaded completely.")
    capture = _capture(path, name)
    try:
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        # Checked before decoding: the header is cheap, a frame of a hostile size is not.
        _check_size(name, width, height, max_pixels)
        decoded, first = capture.read()
        if not decoded or first is None:
            raise BadVideoError(name, "opens as a video but its first frame cannot be decoded (a corrupt "
                                      "or cut-off file); re-encode it or upload it again.")
        height, width = first.shape[:2]
        _check_size(name, width, height, max_pixels)
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else 0.0
        frames = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        # Some containers (streams, image files, a few WebM/MKV muxers) record no count; OpenCV then
        # reports 0 or a huge negative number.
        if not math.isfinite(frames) or not 0 < frames <= 2**31:
            frames = _count_frames(capture)
            capture.release()
            capture = _capture(path, name)
            capture.read()
    except BaseException:
        capture.release()
        raise
    return capture, VideoInfo(int(frames), float(fps), width, height), first


def _capture(path: Path, name: str) -> cv2.VideoCapture:
    # FFmpeg named explicitly: OpenCV's image-sequence backend would read a "%d" in a file name as a pattern.
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise BadVideoError(name, "cannot be opened as a video: it is not one, or it was cut off before the "
                                  "index that MP4 and MOV keep at the end; upload it again, or re-encode it "
                                  "(e.g. ffmpeg -i in.mov out.mp4).")
    return capture


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise VideoTooLargeError(name, f"has {width}x{height} frames, more than the limit of {max_pixels:,} "
                                  "pixels; downscale it first.")


def _count_frames(capture: cv2.VideoCapture) -> int:
    count = 1  # frame 0 was read already
    while count < _MAX_COUNTED_FRAMES and capture.grab():
        count += 1
    return count


def _sample(path: Path, name: str, *, num_frames: int = DEFAULT_NUM_FRAMES, every: int = 0,
            max_pixels: int = DEFAULT_MAX_PIXELS, max_frames: int | None = None,
            max_duration_s: float | None = None) -> SampledVideo:
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames is {max_frames}; allow at least 1 frame, or pass None for no limit.")
    capture, info, first = _open(path, name, max_pixels)
    try:
        if max_duration_s is not None:
            _check_duration(name, info, max_duration_s)
        if max_frames is not None and every == 0:
            num_frames = min(num_frames, max_frames)
        indices = frame_indices(info.frames, num_frames=num_frames, every=every)[:max_frames]
        return SampledVideo(_read_frames(capture, indices, first), info.fps)
    finally:
        capture.release()


def _check_duration(name: str, info: VideoInfo, max_duration_s: float) -> None:
    if info.fps == 0.0:
        raise BadVideoError(name, "records no frame rate, so its length cannot be checked against the limit "
                                  f"of {max_duration_s:g} s; re-encode it (e.g. ffmpeg -i in.mkv -r 25 out.mp4).")
    if info.duration_s > max_duration_s:
        raise VideoTooLargeError(name, f"is {info.duration_s:.1f} s long, more than the limit of {max_duration_s:g} s;"
                                  " trim it or send a shorter clip.")


def _read_frames(capture: cv2.VideoCapture, indices: list[int],
                 first: np.ndarray) -> list[tuple[int, Image.Image]]:
    """Decode `indices` (ascending) from a capture positioned after frame 0, which is `first`."""
    frames = []
    position = 1  # the index the next read() returns
    for index in indices:
        if index == 0:
            frames.append((0, _to_rgb_image(first)))
            continue
        if index - position > _SEEK_GAP:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        else:
            for _ in range(index - position):
                if not capture.grab():
                    return frames  # the stream ended early: the rest cannot decode either
        decoded, frame = capture.read()
        position = index + 1
        if decoded and frame is not None:
            frames.append((index, _to_rgb_image(frame)))
    return frames


def _to_rgb_image(frame: np.ndarray) -> Image.Image:
    return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
