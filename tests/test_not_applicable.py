"""A face model gives no guess where it has no face to judge: `not_applicable` with the reason, no label and no
probability, through MediaScorer, predict.py (run as a user runs it) and score.py's table; a whole-image model
always judges; every video answer gives each sampled frame's time."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from deepfake_platform.data.video import write_video
from deepfake_platform.ensemble import load_predictor
from deepfake_platform.media import NOT_APPLICABLE, MediaScorer, predictor_choices
from deepfake_platform.orchestration.scoring import COLUMNS, SCHEMA, Score, prepare
from tests.factories import tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
FACES = {"mode": "largest", "detector": "haar", "margin": 1.3, "crop_size": 96}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("not_applicable")
    astronaut = Image.fromarray(skimage.data.astronaut())
    landscape = Image.fromarray(skimage.data.coffee())  # a photograph without a face
    files = {"faces": tiny_checkpoint(root / "faces.pth", 0.5, faces=FACES),
             "whole": tiny_checkpoint(root / "whole.pth", 0.5),
             "landscape": root / "coffee.png", "astronaut": root / "astronaut.png", "small": root / "small.png",
             "faceless_clip": root / "faceless.avi", "clip": root / "clip.avi"}
    landscape.save(files["landscape"])
    astronaut.save(files["astronaut"])
    astronaut.resize((256, 256)).save(files["small"])  # its face about 50 px wide
    write_video(files["faceless_clip"], [np.asarray(landscape.resize((128, 96)))] * 6, fps=6)
    face = np.asarray(astronaut.crop((96, 0, 416, 240)))
    write_video(files["clip"], [face, np.asarray(landscape.resize((320, 240)))] * 3, fps=10)
    return files


def test_a_photograph_without_a_face_on_a_face_model_is_not_applicable_and_a_whole_image_model_judges_it(media):
    faces = MediaScorer(load_predictor(media["faces"]))
    verdict = faces.score_path(media["landscape"]).to_dict()
    assert verdict["verdict"] == NOT_APPLICABLE and verdict["label"] is None and verdict["fake_probability"] is None
    assert verdict["no_face"] is True and "no face found" in verdict["reason"]
    judged = faces.score_path(media["astronaut"]).to_dict()
    assert judged["verdict"] == judged["label"] in ("fake", "real") and judged["reason"] is None
    whole = MediaScorer(load_predictor(media["whole"])).score_path(media["landscape"]).to_dict()
    assert whole["verdict"] in ("fake", "real") and 0.0 <= whole["fake_probability"] <= 1.0


def test_faces_smaller_than_the_model_was_trained_at_are_not_judged(media):
    predictor = load_predictor(media["faces"])
    # hybrid_tiny takes 64 px pictures: with factor 1 a face under 64 px is too small; the astronaut's is 50.
    strict = MediaScorer(predictor, predictor_choices(predictor).override(small_face_factor=1.0))
    verdict = strict.score_path(media["small"])
    assert verdict.verdict == NOT_APPLICABLE and verdict.fake_probability is None and verdict.no_face is False
    assert "smaller than 64 px" in verdict.reason and "factor 1" in verdict.reason
    assert strict.score_path(media["astronaut"]).verdict in ("fake", "real")  # a 99 px face is judged


def test_videos_give_each_frames_time_and_one_without_a_face_is_not_applicable(media):
    scorer = MediaScorer(load_predictor(media["faces"]))
    faceless = scorer.score_path(media["faceless_clip"]).to_dict()
    assert faceless["verdict"] == NOT_APPLICABLE and faceless["fake_probability"] is None
    assert "none of the 6 sampled frames" in faceless["reason"]
    assert [frame["time_s"] for frame in faceless["frames"]] == pytest.approx([i / 6 for i in range(6)], abs=1e-3)
    clip = scorer.score_path(media["clip"]).to_dict()
    assert [frame["verdict"] == NOT_APPLICABLE for frame in clip["frames"]] == [False, True] * 3
    judged = [frame["fake_probability"] for frame in clip["frames"] if frame["fake_probability"] is not None]
    assert clip["fake_probability"] == pytest.approx(np.mean(judged)) and clip["verdict"] in ("fake", "real")
    assert [frame["time_s"] for frame in clip["frames"]] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert scorer.score_frames([(3, Image.new("RGB", (64, 64)))]).frames[0].time_s is None  # fps unknown
    assert scorer.video_verdict([]).reason == "no frame of the video could be decoded"


def test_predict_py_prints_and_writes_not_applicable_with_the_reason(media, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "predict.py"), str(media["landscape"]), str(media["astronaut"]),
         str(media["faceless_clip"]), "--checkpoint", str(media["faces"]), "--json", str(tmp_path / "v.json"),
         "--csv", str(tmp_path / "v.csv")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert f"{media['landscape']}: not applicable: no face found" in lines[0]
    assert lines[2].startswith(f"{media['faceless_clip']}: not applicable: none of the")
    landscape, astronaut, clip = json.loads((tmp_path / "v.json").read_text())
    assert (landscape["verdict"], landscape["label"], landscape["fake_probability"]) == (NOT_APPLICABLE, None, None)
    assert astronaut["verdict"] in ("fake", "real") and clip["frames"][1]["time_s"] == pytest.approx(1 / 6, abs=1e-3)
    assert landscape["credentials"]["present"] is False
    with open(tmp_path / "v.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["verdict"] == NOT_APPLICABLE and rows[0]["reason"].startswith("no face found")
    assert rows[0]["label"] == rows[0]["fake_probability"] == "" and rows[1]["verdict"] in ("fake", "real")


def test_score_py_rows_carry_the_verdict_and_the_reason(media):
    predictor = load_predictor(media["faces"])
    choices = predictor_choices(predictor)
    paths = [str(media["landscape"]), str(media["astronaut"]), str(media["faceless_clip"])]
    prepared = prepare({"path": np.array(paths, dtype=object)}, choices=choices, image_size=predictor.info.image_size)
    rows = Score(str(media["faces"]), choices, "cpu", 1)(prepared)
    assert {"verdict", "reason"} <= set(COLUMNS) and set(COLUMNS) == set(SCHEMA.names)
    assert list(rows["verdict"][[0, 2]]) == [NOT_APPLICABLE] * 2 and rows["verdict"][1] in ("fake", "real")
    assert "no face found" in rows["reason"][0] and rows["reason"][1] is None and rows["label"][0] is None
    assert rows["fake_probability"][0] is None and rows["fake_probability"][1] is not None
