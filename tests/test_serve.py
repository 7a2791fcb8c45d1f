"""Tests for serve/: the real app on a local Ray, over real HTTP, with real image files.

One Ray + Serve per module: a single tiny checkpoint at /single and a weighted ensemble (tiny hybrid +
frequency detector) at /ensemble, both behind bearer-token auth, on 2 CPUs.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import skimage.data
import yaml
from PIL import Image

from deepfake_platform.checkpoints import file_sha256
from deepfake_platform.config import ConfigError
from deepfake_platform.data import load_image
from deepfake_platform.data.video import write_video
from deepfake_platform.ensemble import (
    Combiner,
    load_predictor,
    weighted_combine,
)
from deepfake_platform.metrics import label_of
from serve.app import ModelUnavailable, build_app
from serve.settings import AppArgs, app_args
from tests.factories import encoded, free_port, photo, tiny_checkpoint, tiny_ensemble

REPO = Path(__file__).resolve().parents[1]
TOKEN_ENV = "DEEPFAKE_TEST_API_TOKEN"
TOKEN = "s3cret-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 300_000
THRESHOLD = 0.37
WEIGHTS = [0.7, 0.3]
TIMEOUT = httpx.Timeout(60.0)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's calling card."""
    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Model files and real image files on disk."""
    root = tmp_path_factory.mktemp("serve")
    checkpoint = tiny_checkpoint(root / "best.pth", THRESHOLD)
    ensemble = tiny_ensemble(root / "ensemble.pth", checkpoint, Combiner("weighted", weights=WEIGHTS),
                             name="tiny_ensemble", threshold=0.55)
    images = {}
    for i, fmt in enumerate(["JPEG", "PNG", "JPEG"]):
        images[i] = root / f"image{i}.{fmt.lower()}"
        images[i].write_bytes(encoded(photo(100 + i), fmt))
    # A detector trained on face crops: its checkpoint records the preset the server must crop with.
    faces = tiny_checkpoint(root / "faces.pth", 0.5, faces={"mode": "largest", "detector": "haar", "margin": 1.3,
                                                           "crop_size": 96})
    astronaut = Image.fromarray(skimage.data.astronaut())
    (root / "astronaut.jpg").write_bytes(encoded(astronaut, "JPEG"))
    moving = [np.asarray(astronaut.crop((4 * i, 2 * i, 320 + 4 * i, 320 + 2 * i))) for i in range(12)]
    write_video(root / "clip.mp4", moving, fps=10)  # 1.2 s
    write_video(root / "long.mp4", moving * 3, fps=10)  # 3.6 s, over the faces app's 2 s limit
    return {"checkpoint": checkpoint, "ensemble": ensemble, "images": images,
            "faces": faces, "astronaut": root / "astronaut.jpg", "clip": root / "clip.mp4", "long": root / "long.mp4"}


@pytest.fixture(scope="module")
def base_url(files):
    """Ray + Serve on loopback with both apps deployed; torn down after the module."""
    import ray
    from ray import serve

    saved = {key: os.environ.get(key) for key in (TOKEN_ENV,)}
    os.environ[TOKEN_ENV] = TOKEN  # the builder sees it, and the replicas inherit it from the local Ray
    port = free_port()
    # Four logical CPUs for three apps' replicas on the machine's two cores.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        common = {"token_env": TOKEN_ENV, "max_body_bytes": MAX_BODY, "max_batch_files": 4}
        serve.run(build_app({"model": str(files["checkpoint"]), **common}), name="single", route_prefix="/single")
        serve.run(build_app({"model": str(files["ensemble"]), **common}), name="ensemble", route_prefix="/ensemble")
        serve.run(build_app({"model": str(files["faces"]), "max_video_seconds": 2, "video_frames": 4, **common,
                             "max_body_bytes": 2_000_000}), name="faces", route_prefix="/faces")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=TIMEOUT) as http:
        yield http


def check_prediction(result: dict, threshold: float) -> None:
    assert set(result) >= {"fake_probability", "label", "threshold", "model", "detectors", "latency_ms"}
    assert 0.0 <= result["fake_probability"] <= 1.0
    assert result["threshold"] == pytest.approx(threshold)
    assert result["label"] == label_of(result["fake_probability"], threshold)
    assert set(result["model"]) == {"name", "checkpoint", "sha256", "registered_model", "version", "role"}
    # A plain checkpoint beside no registry: no version, no role (tests/test_serve_lifecycle.py has them).
    assert (result["model"]["version"], result["model"]["role"]) == (None, None)
    assert result["latency_ms"] > 0


# ---- the happy path ------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_predict_raw_and_multipart_agree(client, files):
    jpeg = files["images"][0].read_bytes()
    raw = client.post("/single/predict", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    result = raw.json()
    check_prediction(result, THRESHOLD)  # the checkpoint's validation threshold, not 0.5
    assert result["model"] == {"name": "hybrid_tiny", "checkpoint": "best.pth",
                               "sha256": file_sha256(files["checkpoint"]),
                               "registered_model": None, "version": None, "role": None}
    assert result["detectors"] == {"hybrid_tiny": result["fake_probability"]}
    # One predict path: the server's answer is what the predictor evaluation uses gives for the same file.
    offline = load_predictor(files["checkpoint"]).predict_images([load_image(files["images"][0])])[0]
    assert result["fake_probability"] == pytest.approx(float(offline), abs=1e-6)
    with open(files["images"][0], "rb") as handle:
        form = client.post("/single/predict", files={"file": ("face.jpg", handle, "image/jpeg")})
    assert form.status_code == 200, form.text
    assert form.json()["fake_probability"] == pytest.approx(result["fake_probability"], abs=1e-6)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_predict_batch_matches_single_predictions(client, files):
    uploads = [("files", (path.name, path.read_bytes())) for path in files["images"].values()]
    response = client.post("/single/predict/batch", files=uploads)
    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["filename"] for r in results] == [path.name for path in files["images"].values()]
    for result, path in zip(results, files["images"].values(), strict=True):
        check_prediction(result, THRESHOLD)
        alone = client.post("/single/predict", content=path.read_bytes(), headers={"Content-Type": "image/png"})
        # bf16 kernels may round a batch slightly differently from a single image.
        assert result["fake_probability"] == pytest.approx(alone.json()["fake_probability"], abs=0.02)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_healthz_models_and_docs(base_url, client, files):
    health = httpx.get(f"{base_url}/single/healthz", timeout=TIMEOUT)  # open without a token
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = client.get("/single/models").json()
    assert models["threshold"] == pytest.approx(THRESHOLD)
    assert models["members"][0]["name"] == "hybrid_tiny" and models["members"][0]["epoch"] == 2
    assert models["limits"]["max_body_bytes"] == MAX_BODY
    docs = httpx.get(f"{base_url}/single/docs", timeout=TIMEOUT)
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    schema = client.get("/single/openapi.json").json()
    assert {"/predict", "/predict/batch", "/healthz", "/models"} <= set(schema["paths"])


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ensemble_probability_is_the_combiner_of_its_members(client, files):
    response = client.post("/ensemble/predict", files={"file": ("x.png", files["images"][1].read_bytes())})
    assert response.status_code == 200, response.text
    result = response.json()
    check_prediction(result, 0.55)
    assert list(result["detectors"]) == ["hybrid", "frequency"]
    members = np.array([[result["detectors"]["hybrid"], result["detectors"]["frequency"]]])
    assert result["fake_probability"] == weighted_combine(members, WEIGHTS)[0]
    assert result["model"]["name"] == "tiny_ensemble" and result["model"]["checkpoint"] == "ensemble.pth"
    models = client.get("/ensemble/models").json()
    assert models["combiner"]["kind"] == "weighted"
    assert models["combiner"]["weights"] == {"hybrid": 0.7, "frequency": 0.3}
    assert [m["name"] for m in models["members"]] == ["hybrid", "frequency"]
    assert models["members"][0]["threshold"] == pytest.approx(THRESHOLD)


# ---- bad input and access ------------------------------------------------------------------------


def _chunks(data: bytes):
    for start in range(0, len(data), 65536):
        yield data[start:start + 65536]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_bad_inputs_get_4xx_sentences_and_the_server_stays_healthy(base_url, client, files):
    jpeg = files["images"][0].read_bytes()
    big = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)), "PNG")
    assert len(big) > MAX_BODY
    cases = [
        ("empty body", {"content": b"", "headers": {"Content-Type": "image/jpeg"}}, {400}),
        ("not an image", {"content": b"hello, world", "headers": {"Content-Type": "image/png"}}, {400, 415}),
        ("a server path", {"content": str(files["images"][0]).encode(), "headers": {"Content-Type": "image/jpeg"}},
         {400}),
        ("truncated JPEG", {"content": jpeg[: len(jpeg) // 2], "headers": {"Content-Type": "image/jpeg"}}, {400}),
        ("huge header", {"content": png_claiming(100_000, 100_000), "headers": {"Content-Type": "image/png"}},
         {413, 400}),
        ("over max_pixels", {"content": png_claiming(8_000, 8_000), "headers": {"Content-Type": "image/png"}},
         {413, 400}),
        ("wrong content type", {"content": jpeg, "headers": {"Content-Type": "text/plain"}}, {415}),
        ("json body", {"json": {"path": "/etc/passwd"}}, {415}),
        ("body over the limit", {"content": big, "headers": {"Content-Type": "image/png"}}, {413}),
        ("over the limit, chunked", {"content": _chunks(big), "headers": {"Content-Type": "image/png"}}, {413}),
        ("multipart without file", {"data": {"note": "hi"}, "files": {"other": ("a.jpg", jpeg)}}, {400}),
        ("two files to /predict", {"files": [("file", ("a.jpg", jpeg)), ("file", ("b.jpg", jpeg))]}, {400}),
    ]
    for name, request, statuses in cases:
        response = client.post("/single/predict", **request)
        assert response.status_code in statuses, f"{name}: {response.status_code} {response.text}"
        error = response.json()["error"]
        assert isinstance(error, str) and error.endswith((".", ")")) and len(error) > 20, f"{name}: {error}"
    too_many = [("files", (f"{i}.jpg", jpeg)) for i in range(5)]
    assert client.post("/single/predict/batch", files=too_many).status_code == 413
    assert client.post("/ensemble/predict", content=b"", headers={"Content-Type": "image/jpeg"}).status_code == 400
    for app in ("single", "ensemble"):
        assert httpx.get(f"{base_url}/{app}/healthz", timeout=TIMEOUT).status_code == 200
    after = client.post("/single/predict", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert after.status_code == 200


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_token_is_required_where_configured(base_url, files):
    jpeg = files["images"][0].read_bytes()
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            response = anonymous.post("/single/predict", content=jpeg, headers={"Content-Type": "image/jpeg", **headers})
            assert response.status_code == 401 and "Bearer" in response.json()["error"]
            assert response.headers["www-authenticate"] == "Bearer"
            assert anonymous.get("/single/models", headers=headers).status_code == 401
            assert anonymous.post("/ensemble/predict/batch", headers=headers,
                                  files={"files": ("a.jpg", jpeg)}).status_code == 401
        assert anonymous.get("/single/healthz").status_code == 200


# ---- config and builder (no Ray) -----------------------------------------------------------------


def test_serve_config_is_a_multi_app_config_with_a_builder():
    from ray.serve._private.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((REPO / "serve.config").read_text())
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["route_prefix"] == "/" and app["args"]["model"] == "artifacts/best.pth"
    assert import_attr(app["import_path"]) is build_app
    assert set(app_args(app["args"]).to_dict()) == set(AppArgs.model_fields)  # every arg is one the builder knows
    assert sum(d["ray_actor_options"]["num_cpus"] for d in app["deployments"]) <= 2


def test_missing_model_stops_the_start_with_a_sentence(tmp_path):
    with pytest.raises(ModelUnavailable, match="no model at .*reproduce_baseline.py"):
        build_app({"model": str(tmp_path / "artifacts" / "best.pth")})
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable, match="could not be read as a checkpoint"):
        build_app({"model": str(tmp_path / "junk.pth")})
    with pytest.raises(ConfigError, match="unknown key modle"):
        build_app({"modle": "artifacts/best.pth"})
    with pytest.raises(ConfigError, match="retry_timeout_s"):
        build_app({"retry_timeout_s": -1})


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_odd_shapes_under_the_pixel_limit_cost_seconds_not_minutes(base_url, client, tmp_path):
    from tests.test_data import adversarial_images

    for name, path in adversarial_images(tmp_path).items():
        body = path.read_bytes()
        assert len(body) < MAX_BODY, name
        started = time.perf_counter()
        response = client.post("/single/predict", content=body, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, f"{name}: {response.text}"
        assert 0.0 <= response.json()["fake_probability"] <= 1.0
        assert time.perf_counter() - started < 10.0, name
    assert httpx.get(f"{base_url}/single/healthz", timeout=TIMEOUT).status_code == 200


# ---- faces, videos, explanations -------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_face_model_answers_per_face_and_crops_as_it_was_trained(client, files):
    response = client.post("/faces/predict", files={"file": ("astronaut.jpg", files["astronaut"].read_bytes())})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["kind"] == "image" and result["no_face"] is False
    (face,) = result["faces"]  # the preset keeps the largest face
    x, y, width, height = face["box"]
    assert abs(x - 177) < 20 and abs(y - 66) < 20 and 80 < width < 120  # Haar's box on the astronaut's face
    assert result["fake_probability"] == face["fake_probability"]  # the verdict is the most suspicious face
    assert face["label"] == label_of(face["fake_probability"], 0.5)
    # The server crops as the predict path does for the same checkpoint and preset.
    from deepfake_platform.media import MediaScorer

    offline = MediaScorer(load_predictor(files["faces"])).score_path(files["astronaut"])
    assert offline.faces[0].box == face["box"]
    assert offline.fake_probability == pytest.approx(result["fake_probability"], abs=1e-5)
    assert result["verdict"] == result["label"] and result["reason"] is None
    # A picture without a face is a normal answer that the face model does not judge: no label, no probability.
    noise = client.post("/faces/predict", content=files["images"][1].read_bytes(), headers={"Content-Type": "image/png"})
    assert noise.status_code == 200 and noise.json()["no_face"] is True and noise.json()["faces"] == []
    assert noise.json()["verdict"] == "not_applicable" and "face" in noise.json()["reason"]
    assert noise.json()["fake_probability"] is None and noise.json()["label"] is None


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_video_is_answered_with_its_frames_and_their_mean(client, files):
    clip = files["clip"].read_bytes()
    response = client.post("/faces/predict", content=clip, headers={"Content-Type": "video/mp4"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["kind"] == "video" and len(result["frames"]) == 4  # the app's video_frames
    assert [frame["frame"] for frame in result["frames"]] == [0, 3, 7, 11]
    assert all(len(frame["faces"]) == 1 for frame in result["frames"])
    mean = np.mean([frame["fake_probability"] for frame in result["frames"]])
    assert result["fake_probability"] == pytest.approx(mean)
    as_file = client.post("/faces/predict", files={"file": ("clip.mp4", clip)})  # told apart by name and bytes
    assert as_file.status_code == 200 and as_file.json()["kind"] == "video"
    cases = [
        ("too long", files["long"].read_bytes(), 413, "longer"),
        ("truncated", clip[: len(clip) // 2], 400, "clip"),
        ("not a video", b"hello world, not a video", 400, "video"),
    ]
    for name, body, status, _ in cases:
        refused = client.post("/faces/predict", content=body, headers={"Content-Type": "video/mp4"})
        assert refused.status_code == status, f"{name}: {refused.status_code} {refused.text}"
        error = refused.json()["error"]
        assert isinstance(error, str) and len(error) > 20 and error.endswith("."), f"{name}: {error}"


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_explain_returns_a_heatmap_png_of_the_most_suspicious_face(client, files):
    response = client.post("/faces/explain", files={"file": ("astronaut.jpg", files["astronaut"].read_bytes())})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    heat = Image.open(io.BytesIO(response.content))
    assert heat.size == (64, 64)  # the face crop as the 64 px model saw it
    assert np.asarray(heat).std() > 1.0  # a heatmap, not a flat picture
    x, y, _, _ = map(int, response.headers["x-face-box"].split(","))
    assert abs(x - 177) < 20 and abs(y - 66) < 20
    assert 0.0 <= float(response.headers["x-fake-probability"]) <= 1.0
    video = client.post("/faces/explain", content=files["clip"].read_bytes(), headers={"Content-Type": "video/mp4"})
    assert video.status_code == 415 and "frame" in video.json()["error"]
