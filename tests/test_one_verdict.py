"""One file, one verdict, whatever the door: predict.py, score.py, evaluate.py and the server score one real
video with the choices its checkpoint records (face preset, frames per video, thresholds) and agree.

The checkpoint records a video sampling (12 frames) that is neither predict.py's old 32 nor the server's old
16, so a door that keeps a default of its own gives another probability. evaluate.py scores data sets, not
video files: its door is the data set extract_faces.py makes of the video (one crop per sampled frame), each
video scored as the mean of its crops, which is what the other doors compute from the same frames.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image

from deepfake_platform.data.video import write_video
from deepfake_platform.media import file_choices
from tests.factories import free_port, tiny_checkpoint
from tests.proctools import user_env

REPO = Path(__file__).resolve().parents[1]
FACES = {"mode": "largest", "detector": "haar", "margin": 1.3, "crop_size": 96}
RECORDED_FRAMES = 12
VIDEO_THRESHOLD = 0.45


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "experiments" / script), *args], cwd=cwd, env=user_env(),
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, f"{script}: " + result.stdout[-3000:] + result.stderr[-3000:]
    return result


def moving_face(shift: int, frames: int) -> list[np.ndarray]:
    """A 320x320 window sliding over the astronaut photograph: her face is in every frame."""
    astronaut = Image.fromarray(skimage.data.astronaut())
    return [np.asarray(astronaut.crop((shift + 2 * i, i, shift + 320 + 2 * i, 320 + i)))
            for i in range(frames)]


def serve_probability(checkpoint: Path, video: Path, tmp_path: Path) -> float:
    """POST /predict of the video to the real app on a local Ray, with the Serve config's defaults."""
    import ray
    from ray import serve

    from serve.app import build_app

    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": str(checkpoint), "log_dir": str(tmp_path / "logs"), "feedback_dir": ""}),
                  name="one_verdict", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(120.0)) as client:
            response = client.post("/predict", files={"file": (video.name, video.read_bytes(), "video/mp4")})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["kind"] == "video" and len(answer["frames"]) == RECORDED_FRAMES, answer
        return answer["fake_probability"]
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.long
@pytest.mark.timeout(900)
def test_a_video_gets_one_probability_through_every_door(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pth", 0.5, faces=FACES,
                                 video={"val_auc": 0.8, "threshold": VIDEO_THRESHOLD, "num_frames": RECORDED_FRAMES})
    media = tmp_path / "media"
    (media / "test" / "fake").mkdir(parents=True)
    (media / "test" / "real").mkdir(parents=True)
    video = write_video(media / "test" / "fake" / "clip.mp4", moving_face(0, 40), fps=10)
    write_video(media / "test" / "real" / "other.mp4", moving_face(60, 20), fps=10)
    choices = file_choices(checkpoint)
    assert (choices.num_frames, choices.video_threshold, choices.faces.mode) == (RECORDED_FRAMES, VIDEO_THRESHOLD,
                                                                                  "largest")

    run("predict.py", str(video), "--checkpoint", str(checkpoint), "--json", "predict.json", cwd=tmp_path)
    (verdict,) = json.loads((tmp_path / "predict.json").read_text())
    assert len(verdict["frames"]) == RECORDED_FRAMES and verdict["threshold"] == pytest.approx(VIDEO_THRESHOLD)
    # Every sampled frame shows the face, so a per-crop door (evaluation) sees the same pictures.
    assert all(len(frame["faces"]) == 1 for frame in verdict["frames"]), verdict["frames"]
    expected = verdict["fake_probability"]

    run("score.py", "--input", str(video), "--out", "scores.parquet", "--checkpoint", str(checkpoint), cwd=tmp_path)
    (row,) = pq.read_table(tmp_path / "scores.parquet").to_pylist()
    assert row["fake_probability"] == pytest.approx(expected, abs=1e-5)
    assert row["label"] == verdict["label"] and row["threshold"] == pytest.approx(VIDEO_THRESHOLD)

    # The data set a training run on this video would see: the frames training sampled, one face crop each.
    run("extract_faces.py", "--input", str(media), "--out", "faces", "--num-frames", str(RECORDED_FRAMES),
        "--crop-size", str(FACES["crop_size"]), cwd=tmp_path)
    run("evaluate.py", "--checkpoint", str(checkpoint), "--data", "faces", "--split", "test", "--out",
        "metrics.json", cwd=tmp_path)
    per_video = json.loads((tmp_path / "metrics.json").read_text())["video"]
    scores = dict(zip(per_video["videos"], per_video["scores"], strict=True))
    assert scores["test/fake/clip.mp4"] == pytest.approx(expected, abs=1e-5)
    assert per_video["metrics"]["at_val_threshold"]["threshold"] == pytest.approx(VIDEO_THRESHOLD)

    assert serve_probability(checkpoint, video, tmp_path) == pytest.approx(expected, abs=1e-5)
