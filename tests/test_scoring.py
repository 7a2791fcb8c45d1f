"""Batch scoring with Ray Data (experiments/score.py) as a user runs it: a folder of images and a video, some
files unreadable, one Parquet row per file, the same probabilities as the predict path, resumed runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image

from deepfake_platform.ensemble import load_predictor
from deepfake_platform.media import MediaScorer
from deepfake_platform.orchestration.scoring import list_inputs, pool_size
from tests.factories import encoded, photo, tiny_checkpoint
from tests.proctools import user_env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    (root / "a" / "b").mkdir(parents=True)
    for i in range(20):
        (root / ("a" if i % 2 else "a/b") / f"photo{i:02d}.{'png' if i % 3 else 'jpg'}").write_bytes(
            encoded(photo(i, 80 + i), "PNG" if i % 3 else "JPEG"))
    Image.fromarray(skimage.data.astronaut()).save(root / "astronaut.jpg")
    from deepfake_platform.data.video import write_video

    frames = [np.asarray(Image.fromarray(skimage.data.astronaut()).crop((2 * i, i, 300 + 2 * i, 300 + i)))
              for i in range(10)]
    write_video(root / "clip.mp4", frames, fps=10)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not an image: ignored")
    return root


def score(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "experiments" / "score.py"), *args], cwd=cwd, env=user_env(),
                          capture_output=True, text=True, timeout=300)


def test_inputs_are_folders_globs_and_lists(archive, tmp_path):
    files = list_inputs(str(archive))
    assert len(files) == 23 and all(Path(path).is_absolute() for path in files)  # 20 + astronaut + clip + broken
    assert list_inputs(str(archive / "a" / "**" / "*.png")) == [p for p in files if p.endswith(".png")]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(files[:3]) + "\n\n")
    assert list_inputs(str(listing)) == files[:3]
    with pytest.raises(FileNotFoundError, match="names no image"):
        list_inputs(str(tmp_path / "*.gif"))
    # One model actor per node, each leaving half of its node's CPUs to decoding.
    assert pool_size([2.0], False, 0) == (1, 1.0)
    assert pool_size([1.0, 1.0], False, 0) == (2, 0.5)
    assert pool_size([8.0, 8.0, 8.0], False, 0) == (3, 4.0)
    assert pool_size([4.0], True, 2) == (2, 1.0)


@pytest.mark.ray
@pytest.mark.long
@pytest.mark.timeout(600)
def test_score_py_writes_a_row_per_file_resumes_and_agrees_with_the_predict_path(archive, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "artifacts" / "best.pth", 0.5,
                                 faces={"mode": "largest", "detector": "haar", "margin": 1.3, "crop_size": 96})
    first = score(tmp_path, "--input", str(archive / "a"), "--out", "scores.parquet", "--batch-size", "8")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "21 file(s): 21 scored now" in first.stdout and "1 unreadable" in first.stdout
    rows = {row["path"]: row for row in pq.read_table(tmp_path / "scores.parquet").to_pylist()}
    broken = rows.pop(str(archive / "a" / "broken.jpg"))
    assert broken["fake_probability"] is None and "cannot be read as an image" in broken["error"]
    # The same preprocessing and predict path as predict.py: the checkpoint's face preset, then the model.
    offline = MediaScorer(load_predictor(checkpoint))
    for path, row in list(rows.items())[:6]:
        expected = offline.score_path(path)  # no face: not judged, as predict.py answers it
        assert row["verdict"] == expected.verdict == "not_applicable" and row["reason"] == expected.reason
        assert row["fake_probability"] is None and expected.fake_probability is None
        assert row["no_face"] is True and row["label"] is None and row["error"] is None
    assert {row["model_sha256"] for row in rows.values()} == {offline.predictor.info.sha256}

    # A second run over a list with two more files scores only those (a face photograph and a video).
    listing = tmp_path / "all.txt"
    listing.write_text("\n".join([*rows, str(archive / "a" / "broken.jpg"), str(archive / "astronaut.jpg"),
                                  str(archive / "clip.mp4")]))
    second = score(tmp_path, "--input", str(listing), "--out", "scores.parquet")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "23 file(s): 2 scored now" in second.stdout and "21 scored before" in second.stdout
    rows = {row["path"]: row for row in pq.read_table(tmp_path / "scores.parquet").to_pylist()}
    assert len(rows) == 23
    astronaut = rows[str(archive / "astronaut.jpg")]
    assert astronaut["no_face"] is False and '"box": [' in astronaut["faces"]
    judged = offline.score_path(archive / "astronaut.jpg")
    assert astronaut["fake_probability"] == pytest.approx(judged.fake_probability, abs=1e-5)
    assert (astronaut["verdict"], astronaut["label"]) == (judged.verdict, judged.label)
    assert rows[str(archive / "clip.mp4")]["kind"] == "video"
