"""A running server follows the model registry: shadow, canary, promote and rollback without a restart, and
a failing challenger withdrawn by itself. (A promote and a rollback under 16 clients' load, with the registry
command run as a user runs it, are in tests/test_serve_cluster.py, on two nodes.) A real Ray + Serve on loopback, real HTTP, real image files.

Two registered versions of a tiny detector that answer very differently (version 2's output bias is raised
by 4, so its probabilities sit near 1 where version 1's sit near 0.5): every answer's probability shows
which model really gave it, and the answer must name that model.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from deepfake_platform.checkpoints import file_sha256, write_checkpoint
from deepfake_platform.data.video import write_video
from deepfake_platform.serving_state import read_state, write_state
from serve.app import build_app
from tests.factories import c2pa_jpegs, encoded, free_port, photo, tiny_record

# In `make test-long`: one Serve app under 400 requests from 16 clients, about two minutes on 2 cores.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.long, pytest.mark.timeout(420)]
TIMEOUT = httpx.Timeout(60.0)
CLIENTS = 16


def eventually(condition, timeout_s: float, message: str, interval_s: float = 0.2):
    """Poll `condition()` until it returns something truthy (returned), or fail with `message`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, message
        time.sleep(interval_s)


def registered(artifacts: Path, version: int, record) -> dict:
    """Write version `version`'s immutable file under artifacts/models and return its state entry."""
    path = write_checkpoint(record, artifacts / "models" / f"v{version}.pth")
    return {"version": version, "file": f"models/v{version}.pth", "sha256": file_sha256(path), "run_id": None}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """An artifacts folder as the registry leaves it: versions 1 and 2, version 1 the champion (best.pth)."""
    root = tmp_path_factory.mktemp("lifecycle")
    artifacts = root / "artifacts"
    v1 = registered(artifacts, 1, tiny_record(seed=0))
    # Version 2 answers near 1 and reads its probabilities at thresholds of its own (a balanced one of 0.97,
    # and a high-precision one), which version 1 (0.5, balanced only) does not have.
    record = tiny_record(seed=0, val_threshold=0.97, operating_points={
        "high_precision": {"threshold": 0.99, "target_fpr": 0.01, "val_fpr": 0.0, "val_fnr": 0.5}})
    record.model_state_dict["head.4.bias"] = record.model_state_dict["head.4.bias"] + 4.0
    v2 = registered(artifacts, 2, record)
    shutil.copyfile(artifacts / "models" / "v1.pth", artifacts / "best.pth")
    state = artifacts / "serving.json"
    write_state(state, {"registered_model": "deepfake-detector", "champion": v1, "challenger": None,
                        "history": [1], "withdrawn": None})
    images = [encoded(photo(200 + i), "JPEG") for i in range(6)]
    return {"root": root, "artifacts": artifacts, "state": state, "v1": v1, "v2": v2, "images": images}


@pytest.fixture(scope="module")
def base_url(registry):
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({
            "model": str(registry["artifacts"] / "best.pth"), "state_poll_s": 0.2,
            "log_dir": str(registry["root"] / "logs"), "feedback_dir": str(registry["root"] / "feedback"),
            # The two versions disagree on purpose; the error-rate limit is the one under test here.
            "challenger": {"limits": {"min_requests": 5, "max_disagreement": 1.0, "max_psi": 100.0}},
        }), name="lifecycle", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as http:
        yield http


def set_roles(registry, *, champion: dict, challenger: dict | None) -> None:
    """What `experiments/models.py promote / challenge / rollback` write: the serving state, best.pth."""
    state = read_state(registry["state"])
    shutil.copyfile(registry["artifacts"] / champion["file"], registry["artifacts"] / "best.pth")
    write_state(registry["state"], {**state, "champion": champion, "challenger": challenger})


def predict(client, image: bytes) -> dict:
    response = client.post("/predict", files={"file": ("face.jpg", image, "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()


def version_by_probability(probability: float) -> int:
    """Which version gave a probability: version 2's are near 1, version 1's near 0.5."""
    return 2 if probability > 0.9 else 1


def answers_of(client, registry, count: int) -> list[dict]:
    """`count` answers from CLIENTS concurrent clients, over the module's images in turn."""
    images = registry["images"]
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda i: predict(client, images[i % len(images)]), range(count)))


def monitoring(client) -> dict:
    response = client.get("/monitoring")
    assert response.status_code == 200, response.text
    return response.json()


def test_a_shadow_challenger_changes_no_answer_and_is_compared(client, registry):
    before = [predict(client, image) for image in registry["images"]]
    assert {answer["model"]["version"] for answer in before} == {1}
    assert {answer["model"]["role"] for answer in before} == {"champion"}

    set_roles(registry, champion=registry["v1"], challenger={**registry["v2"], "mode": "shadow", "fraction": None})
    eventually(lambda: (monitoring(client).get("challenger_trial") or {}).get("challenger"), 30,
               "the server never put the challenger on trial")

    def compared() -> dict | None:  # requests keep coming while the challenger's replica loads its model
        answers = [predict(client, image) for image in registry["images"]]
        for old, new in zip(before, answers, strict=True):
            assert new["fake_probability"] == old["fake_probability"]  # the champion's answer, untouched
            assert new["model"]["version"] == 1
        trial = monitoring(client)["challenger_trial"]
        return trial if trial["compared"] >= 6 else None

    trial = eventually(compared, 90, "the shadow challenger compared no request")
    assert trial["challenger"] == {"version": 2, "mode": "shadow", "fraction": None}
    assert trial["answered_by_challenger"] == 0
    assert trial["mean_abs_delta"] > 0.2  # the two versions really differ
    assert trial["champion"]["latency_p50_ms"] is not None and trial["challenger_model"]["latency_p50_ms"] is not None
    lines = [json.loads(line) for path in (registry["root"] / "logs").glob("*.jsonl")
             for line in path.read_text().splitlines()]
    shadows = [line for line in lines if line.get("event") == "shadow"]
    assert shadows and all(line["challenger"]["version"] == 2 and line["champion"]["version"] == 1 for line in shadows)
    assert all(line["challenger"]["fake_probability"] > 0.9 for line in shadows)
    answered = {line["request_id"] for line in lines if "event" not in line}
    assert {line["request_id"] for line in shadows} <= answered


def test_a_canary_answers_its_share_and_says_so(client, registry):
    set_roles(registry, champion=registry["v1"], challenger={**registry["v2"], "mode": "canary", "fraction": 0.25})
    eventually(lambda: (monitoring(client)["challenger_trial"] or {}).get("challenger", {}).get("mode") == "canary",
               30, "the server never switched the challenger to canary")
    # Until the canary answers once, its replica may still be loading (the champion answers meanwhile).
    eventually(lambda: predict(client, registry["images"][0])["model"]["role"] == "challenger" or None, 60,
               "the canary never answered")
    answers = answers_of(client, registry, 400)
    roles = Counter(answer["model"]["role"] for answer in answers)
    assert abs(roles["challenger"] / 400 - 0.25) <= 0.06, roles
    for answer in answers:  # each answer names the model that really gave it, and is read at its thresholds
        assert answer["model"]["version"] == version_by_probability(answer["fake_probability"])
        assert answer["model"]["role"] == ("challenger" if answer["model"]["version"] == 2 else "champion")
        assert answer["threshold"] == (0.97 if answer["model"]["version"] == 2 else 0.5)


def test_an_operating_point_is_read_at_the_answering_versions_threshold(client, registry):
    image = registry["images"][0]
    response = client.post("/predict?operating_point=high_precision", files={"file": ("a.jpg", image, "image/jpeg")})
    assert response.status_code == 422 and "records no high_precision operating point" in response.text
    response = client.post("/predict?operating_point=cautious", files={"file": ("a.jpg", image, "image/jpeg")})
    assert response.status_code == 400 and "balanced, high_precision, high_recall" in response.text
    set_roles(registry, champion=registry["v2"], challenger=None)
    eventually(lambda: predict(client, image)["model"]["version"] == 2 or None, 30, "the promotion never took effect")
    response = client.post("/predict?operating_point=high_precision", files={"file": ("a.jpg", image, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert response.json()["threshold"] == 0.99
    models = client.get("/models").json()
    assert models["model"]["version"] == 2 and models["threshold"] == 0.97
    assert models["operating_points"]["high_precision"][0] == 0.99


def test_a_failing_challenger_is_withdrawn_and_the_champion_answers_all(client, registry):
    broken = registry["artifacts"] / "models" / "v3.pth"
    broken.write_bytes(b"not a checkpoint at all")
    v3 = {"version": 3, "file": "models/v3.pth", "sha256": file_sha256(broken), "run_id": None,
          "mode": "canary", "fraction": 0.5}
    set_roles(registry, champion=registry["v1"], challenger=v3)
    eventually(lambda: predict(client, registry["images"][0])["model"]["version"] == 1 or None, 30,
               "the rollback to version 1 never took effect")
    eventually(lambda: (monitoring(client)["challenger_trial"] or {}).get("challenger", {}).get("version") == 3, 30,
               "the broken challenger was never put on trial")
    answers = answers_of(client, registry, 60)  # every one answered: the champion stands in for the failures
    assert {answer["model"]["version"] for answer in answers} == {1}
    trial = monitoring(client)["challenger_trial"]
    assert trial["challenger"] is None
    assert trial["withdrawn"]["version"] == 3 and "error rate" in trial["withdrawn"]["reason"]
    state = read_state(registry["state"])
    assert state["challenger"] is None and state["withdrawn"]["version"] == 3
    after = answers_of(client, registry, 20)
    assert {answer["model"]["role"] for answer in after} == {"champion"}
    lines = [json.loads(line) for path in (registry["root"] / "logs").glob("*.jsonl")
             for line in path.read_text().splitlines()]
    assert any(line.get("event") == "withdrawn" and line["version"] == 3 for line in lines)


def test_an_answer_carries_credentials_frame_times_and_the_raw_logit(client, registry):
    """Beside the verdict, never in it: a signed picture's C2PA manifest; a video's frames with their times."""
    jpegs = c2pa_jpegs()
    signed = predict(client, jpegs["signed"])
    assert signed["credentials"]["present"] is True and signed["credentials"]["valid"] is True
    assert signed["credentials"]["generative_ai"] is True
    assert signed["credentials"]["claim_generator"].startswith("test-generator")
    plain = predict(client, jpegs["plain"])
    assert plain["credentials"]["present"] is False
    assert plain["fake_probability"] == pytest.approx(
        predict(client, jpegs["signed"])["fake_probability"], abs=0.05)  # the manifest changes no score
    tampered = client.post("/predict", files={"file": ("t.jpg", jpegs["tampered"], "application/octet-stream")})
    assert tampered.status_code == 200 and tampered.json()["credentials"]["valid"] is False
    assert plain["operating_point"] == "balanced"
    # Version 1's calibration is the identity: its logit is the probability's.
    assert plain["logit"] == pytest.approx(float(np.log(plain["fake_probability"] / (1 - plain["fake_probability"]))),
                                           abs=1e-4)

    frames = [np.full((64, 64, 3), 25 * i, dtype=np.uint8) for i in range(10)]
    video = write_video(registry["root"] / "clip.mp4", frames, fps=5)
    response = client.post("/predict", files={"file": ("clip.mp4", video.read_bytes(), "video/mp4")})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["kind"] == "video" and answer["frames"]
    for frame in answer["frames"]:
        assert frame["time_s"] == pytest.approx(frame["frame"] / 5, abs=1e-3)
