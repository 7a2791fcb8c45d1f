"""Video decoding on real files written with OpenCV: sampling, probing, broken and oversized videos."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from deepfake_platform.data.video import (
    VIDEO_EXTENSIONS,
    BadVideoError,
    VideoInfo,
    frame_indices,
    is_video_name,
    probe_video,
    sample_frames,
    sample_frames_from_bytes,
    write_video,
)

NUM_FRAMES, FPS = 100, 25


@pytest.fixture(scope="module")
def source_frames() -> list[np.ndarray]:
    """A 96x64 window moving 3 px right and 2 px down per frame over the astronaut photo."""
    astronaut = skimage_data.astronaut()
    return [np.ascontiguousarray(astronaut[2 * i:2 * i + 64, 3 * i:3 * i + 96]) for i in range(NUM_FRAMES)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory, source_frames) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {suffix: write_video(folder / f"clip{suffix}", source_frames, fps=FPS) for suffix in (".mp4", ".avi")}


def nearest_source(image: Image.Image, source_frames: list[np.ndarray]) -> int:
    """The index of the source frame a decoded frame is closest to (mean absolute difference)."""
    pixels = np.asarray(image, dtype=np.float32)
    return int(np.argmin([np.abs(pixels - frame).mean() for frame in source_frames]))


def test_is_video_name():
    assert is_video_name("clip.mp4") and is_video_name(Path("a/B.MKV")) and is_video_name("x.WebM")
    assert not is_video_name(".clip.mp4") and not is_video_name("photo.jpg") and not is_video_name("mp4")


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_probe_video(videos, suffix):
    info = probe_video(videos[suffix])
    assert info == VideoInfo(frames=NUM_FRAMES, fps=FPS, width=96, height=64)
    assert info.duration_s == pytest.approx(4.0)
    assert info.to_dict()["duration_s"] == pytest.approx(4.0)


def test_frame_indices():
    assert frame_indices(10, every=3) == [0, 3, 6, 9]
    assert frame_indices(10, every=1) == list(range(10))
    assert frame_indices(10, every=20) == [0]
    assert frame_indices(10, num_frames=4) == [0, 3, 6, 9]
    assert frame_indices(10, num_frames=3) == [0, 4, 9]  # linspace 0, 4.5, 9 truncated, as DeepfakeBench
    assert frame_indices(5, num_frames=32) == [0, 1, 2, 3, 4]  # fewer frames than asked: all of them
    assert frame_indices(1, num_frames=8) == [0]
    assert frame_indices(0) == []
    indices = frame_indices(300)
    assert len(indices) == 32 and indices[0] == 0 and indices[-1] == 299
    assert all(later > earlier for earlier, later in zip(indices, indices[1:], strict=False))
    gaps = np.diff(indices)
    assert gaps.max() - gaps.min() <= 1


def test_frame_indices_rejects_bad_arguments():
    with pytest.raises(ValueError, match="every is -2; give a positive step"):
        frame_indices(10, every=-2)
    with pytest.raises(ValueError, match="num_frames is 0; sample at least 1 frame"):
        frame_indices(10, num_frames=0)


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
@pytest.mark.parametrize("kwargs, expected", [
    ({"num_frames": 5}, [0, 24, 49, 74, 99]),
    ({"num_frames": 2}, [0, 99]),  # a gap far past a keyframe: seeks
    ({"every": 30}, [0, 30, 60, 90]),
    ({"every": 30, "max_frames": 2}, [0, 30]),
    ({"num_frames": 32, "max_frames": 3}, [0, 49, 99]),
])
def test_sample_frames_returns_the_right_frames(videos, source_frames, suffix, kwargs, expected):
    frames = sample_frames(videos[suffix], **kwargs)
    assert [index for index, _ in frames] == expected
    for index, image in frames:
        assert image.mode == "RGB" and image.size == (96, 64)
        assert nearest_source(image, source_frames) == index


@pytest.mark.parametrize("suffix", sorted(VIDEO_EXTENSIONS - {".mp4", ".avi"}))
def test_write_video_round_trips_every_extension(tmp_path, source_frames, suffix):
    path = write_video(tmp_path / f"short{suffix}", [Image.fromarray(f) for f in source_frames[:12]], fps=6)
    info = probe_video(path)
    assert (info.frames, info.fps, info.width, info.height) == (12, 6.0, 96, 64)
    frames = sample_frames(path, num_frames=3)
    assert [(index, nearest_source(image, source_frames)) for index, image in frames] == [(0, 0), (5, 5), (11, 11)]


def test_a_video_cut_in_half_is_refused_or_sampled_as_far_as_it_goes(tmp_path, videos, source_frames):
    mp4 = videos[".mp4"].read_bytes()
    cut_mp4 = tmp_path / "cut.mp4"
    cut_mp4.write_bytes(mp4[:len(mp4) // 2])  # loses the index MP4 keeps at its end
    with pytest.raises(BadVideoError, match=r"cut\.mp4 cannot be opened as a video.*upload it again"):
        sample_frames(cut_mp4)
    with pytest.raises(BadVideoError, match="cannot be opened as a video"):
        probe_video(cut_mp4)

    # AVI keeps its index up front: the first half decodes, the frames past the cut are skipped.
    avi = videos[".avi"].read_bytes()
    cut_avi = tmp_path / "cut.avi"
    cut_avi.write_bytes(avi[:len(avi) // 2])
    frames = sample_frames(cut_avi, num_frames=10)
    assert 2 <= len(frames) < 10
    assert [index for index, _ in frames] == frame_indices(NUM_FRAMES, num_frames=10)[:len(frames)]
    assert all(nearest_source(image, source_frames) == index for index, image in frames)


def test_files_that_are_not_videos_are_refused(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are meeting notes, not a video\n" * 20)
    with pytest.raises(BadVideoError, match=r"notes\.mp4 cannot be opened as a video"):
        probe_video(text)
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(BadVideoError, match="is empty"):
        sample_frames(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sample_frames(tmp_path / "missing.mp4")


def test_limits_on_duration_and_frame_size(videos):
    with pytest.raises(BadVideoError, match=r"is 4\.0 s long, more than the limit of 2 s; trim it"):
        sample_frames(videos[".mp4"], max_duration_s=2)
    assert len(sample_frames(videos[".mp4"], num_frames=2, max_duration_s=10)) == 2
    with pytest.raises(BadVideoError, match="has 96x64 frames, more than the limit of 1,000 pixels"):
        probe_video(videos[".avi"], max_pixels=1000)


def test_sample_frames_from_bytes(tmp_path, monkeypatch, videos):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    upload = videos[".mp4"].read_bytes()
    frames = sample_frames_from_bytes(upload, ".mp4", num_frames=3)
    expected = sample_frames(videos[".mp4"], num_frames=3)
    assert [index for index, _ in frames] == [index for index, _ in expected] == [0, 49, 99]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(frames, expected, strict=True))
    assert list(tmp_path.iterdir()) == []  # the temporary copy is gone

    with pytest.raises(BadVideoError, match=r"^the uploaded video is 4\.0 s long"):
        sample_frames_from_bytes(upload, "MP4", max_duration_s=1)
    with pytest.raises(BadVideoError, match="^the uploaded video cannot be opened as a video"):
        sample_frames_from_bytes(upload[: len(upload) // 3], ".mp4")
    with pytest.raises(BadVideoError, match="^the uploaded video has the extension '.gif'; send one of"):
        sample_frames_from_bytes(upload, ".gif")
    with pytest.raises(BadVideoError, match="^the uploaded video is empty"):
        sample_frames_from_bytes(b"", ".mp4")
    assert list(tmp_path.iterdir()) == []


def test_write_video_refuses_what_it_cannot_write(tmp_path, source_frames):
    with pytest.raises(ValueError, match="the frames are 95x64, and video codecs need even sizes"):
        write_video(tmp_path / "odd.mp4", [frame[:, :95] for frame in source_frames[:3]])
    with pytest.raises(ValueError, match="frame 1 is 48x32 but the first frame is 96x64"):
        write_video(tmp_path / "mixed.avi", [source_frames[0], source_frames[1][:32, :48]])
    with pytest.raises(ValueError, match="use one of the extensions"):
        write_video(tmp_path / "clip.gif", source_frames[:3])
    with pytest.raises(ValueError, match="no frames were given"):
        write_video(tmp_path / "none.mp4", [])
    with pytest.raises(ValueError, match="could not open a mp4v video writer .*check that the folder exists"):
        write_video(tmp_path / "no" / "such" / "folder.mp4", source_frames[:3])


def test_write_video_accepts_grey_frames(tmp_path):
    grey = [np.full((32, 48), 40 * i, dtype=np.uint8) for i in range(4)]
    frames = sample_frames(write_video(tmp_path / "grey.avi", grey), every=1)
    assert [index for index, _ in frames] == [0, 1, 2, 3]
    assert [round(float(np.asarray(image).mean()) / 40) for _, image in frames] == [0, 1, 2, 3]
