"""From raw media to verdicts, as a user runs it: a folder of real and fake videos (written here with OpenCV
from photographs with real faces) becomes a data set of face crops (extract_faces.py, in-process and on
Ray), the main job trains on it (the face preset and the video AUC land in the checkpoint and the
report), and predict.py scores an image, a video and a folder with that checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image

from deepfake_platform.checkpoints import read_checkpoint
from deepfake_platform.data.blend import self_blend_face
from deepfake_platform.data.video import write_video
from tests.proctools import user_env

REPO = Path(__file__).resolve().parents[1]
FRAMES = 8


def subjects() -> dict[str, Image.Image]:
    astronaut = Image.fromarray(skimage.data.astronaut())
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    return {"astronaut": astronaut, "hopper": hopper, "astronaut_flipped": astronaut.transpose(0),
            "hopper_small": hopper.resize((400, 469))}


def clip(photo: Image.Image, fake: bool, seed: int) -> list[np.ndarray]:
    """Frames of a slow pan over `photo`; a fake's face region is self-blended in every frame."""
    width, height = photo.size
    side = min(width, height) * 3 // 4
    frames = []
    for i in range(FRAMES):
        left, top = (width - side) // 2 + 2 * i - FRAMES, (height - side) // 3 + i
        frame = photo.crop((left, top, left + side, top + side)).resize((192, 192))
        if fake:
            frame, _ = self_blend_face(frame, np.random.default_rng([seed, i]), box=(48, 24, 144, 120))
        frames.append(np.asarray(frame))
    return frames


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media") / "in"
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True)
        for seed, (name, photo) in enumerate(subjects().items()):
            write_video(root / label / f"{name}.mp4", clip(photo, label == "fake", seed), fps=10)
    Image.fromarray(skimage.data.astronaut()).save(root / "real" / "portrait.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (FRAMES, 96, 96, 3), dtype=np.uint8)
    write_video(root / "real" / "static.avi", list(noise), fps=10)  # a video without a face
    (root / "fake" / "broken.mp4").write_text("not a video at all")
    return root


def extract(media: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / "extract_faces.py"), "--input", str(media), "--out", str(out),
         "--num-frames", "4", "--crop-size", "96", "--val", "0.25", "--test", "0.25", *extra],
        cwd=out.parent, env=user_env(), capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def dataset(media, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faces") / "set"
    result = extract(media, out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_extraction_splits_by_source_and_names_what_it_skipped(media, dataset):
    crops = pq.read_table(dataset / "faces.parquet").to_pylist()
    sources = {row["source"]: row for row in pq.read_table(dataset / "sources.parquet").to_pylist()}
    # Every frame of a video goes to one split: the split is decided per source.
    splits_of = {}
    for row in crops:
        splits_of.setdefault(row["source"], set()).add(row["split"])
        assert (dataset / row["crop"]).is_file() and row["crop"].startswith(f"{row['split']}/")
        assert Image.open(dataset / row["crop"]).size == (96, 96)
    assert all(len(splits) == 1 for splits in splits_of.values())
    assert {row["split"] for row in crops} == {"train", "val", "test"}
    videos = [name for name in splits_of if name.endswith(".mp4")]
    assert len(videos) == 8 and all(sum(row["source"] == name for row in crops) == 4 for name in videos)
    assert sources["fake/broken.mp4"]["status"] == "unreadable" and sources["fake/broken.mp4"]["error"]
    assert sources["real/static.avi"]["status"] == "no_face"
    assert sources["real/portrait.jpg"]["status"] == "done"
    settings = json.loads((dataset / "faces.json").read_text())
    assert settings["preset"] == {"mode": "largest", "detector": "haar", "model_path": "", "margin": 1.3,
                                  "crop_size": 96}
    # A rerun skips what is done.
    again = extract(media, dataset)
    assert again.returncode == 0 and "0 extracted now, 11 done before" in again.stdout, again.stdout


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_extraction_on_ray_gives_the_same_crops(media, dataset, tmp_path):
    result = extract(media, tmp_path / "ray_set", "--num-workers", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "on Ray" in result.stdout and "unreadable" in result.stdout and "broken.mp4" in result.stdout
    on_ray = {row["crop"] for row in pq.read_table(tmp_path / "ray_set" / "faces.parquet").to_pylist()}
    in_process = {row["crop"] for row in pq.read_table(dataset / "faces.parquet").to_pylist()}
    assert on_ray == in_process


@pytest.mark.ray
@pytest.mark.long
@pytest.mark.timeout(600)
def test_a_model_trains_on_the_extracted_faces_and_predict_scores_media(media, dataset, tmp_path):
    train = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "reproduce_baseline.py"), "--smoke", "--data", str(dataset),
         "--name", "faces", "--epochs", "2"],
        cwd=tmp_path, env=user_env(), capture_output=True, text=True, timeout=500)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    best = read_checkpoint(tmp_path / "checkpoints" / "faces" / "best.pth")
    # Training records the data set's face preset and the video-level validation, for prediction to reuse.
    assert best.faces["mode"] == "largest" and best.faces["crop_size"] == 96
    # ... and how the set's videos were sampled, so predict.py, score.py and the server sample the same frames.
    assert set(best.video) == {"val_auc", "threshold", "num_frames", "every"}
    assert best.video["num_frames"] == json.loads((dataset / "faces.json").read_text())["sampling"]["num_frames"]
    report = (tmp_path / "runs" / "faces" / "RESULTS.md").read_text()
    assert "test AUC per video" in report and "Per video: " in report and "val video AUC" in report

    checkpoint = tmp_path / "artifacts" / "best.pth"
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "predict.py"), str(media / "real" / "portrait.jpg"),
         str(media / "fake" / "hopper.mp4"), "--checkpoint", str(checkpoint), "--num-frames", "4",
         "--json", str(tmp_path / "out.json"), "--csv", str(tmp_path / "out.csv"), "--explain", str(tmp_path / "heat")],
        cwd=tmp_path, env=user_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    image, video = json.loads((tmp_path / "out.json").read_text())
    (face,) = image["faces"]  # the checkpoint's preset: the largest face
    x, y, width, _ = face["box"]
    assert abs(x - 177) < 20 and abs(y - 66) < 20 and 80 < width < 120
    assert image["fake_probability"] == face["fake_probability"]
    assert image["label"] == ("fake" if face["fake_probability"] >= best.val_threshold else "real")
    assert video["kind"] == "video" and len(video["frames"]) == 4
    assert video["fake_probability"] == pytest.approx(np.mean([f["fake_probability"] for f in video["frames"]]))
    assert video["threshold"] == pytest.approx(best.video["threshold"])  # videos at the video threshold
    assert (tmp_path / "heat" / "portrait_face0.png").is_file()
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 1 + 1 + 4  # header, one face, four frames

    folder = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "predict.py"), str(media), "--checkpoint", str(checkpoint),
         "--num-frames", "2", "--faces", "all"], cwd=tmp_path, env=user_env(), capture_output=True, text=True,
        timeout=300)
    assert folder.returncode == 1  # one file could not be read
    lines = folder.stdout.splitlines()
    assert len(lines) == 11 and any("broken.mp4: error:" in line for line in lines)
    # A video with no face in any sampled frame is not judged: the verdict says so and why.
    assert any("static.avi: not applicable: none of the 2 sampled frames has a face" in line for line in lines)


def test_training_from_real_faces_only_blends_pseudo_fakes_on_the_fly(dataset, tmp_path):
    import shutil

    from deepfake_platform.config import load_config, with_changes
    from deepfake_platform.training import make_loaders

    real_only = tmp_path / "real_only"
    for split in ("train", "val"):
        shutil.copytree(dataset / split / "real", real_only / split / "real")
    config = load_config(REPO / "experiments" / "configs" / "smoke.yaml")
    config = with_changes(config, data={"self_blend": True}, train={"batch_size": 64})
    train_loader, val_loader = make_loaders(config, real_only, 64, 0, 1)
    reals = len(list((real_only / "train" / "real").iterdir()))
    assert len(train_loader.dataset) == 2 * reals  # each real face and a fresh pseudo-fake of it
    labels = next(iter(train_loader))[1]
    assert labels.sum() == labels.numel() - labels.sum()
    train_loader.dataset.set_epoch(0)
    first = train_loader.dataset[reals][0]
    train_loader.dataset.set_epoch(1)
    assert not np.allclose(first.numpy(), train_loader.dataset[reals][0].numpy())  # another blend each epoch
    # Validation of real faces only gets one fixed pseudo-fake per face, so its AUC is defined and stable.
    val_labels = [label for _, label in val_loader.dataset]
    assert sorted(set(val_labels)) == [0.0, 1.0]
    assert np.allclose(val_loader.dataset[len(val_labels) // 2][0].numpy(), val_loader.dataset[len(val_labels) // 2][0].numpy())
