"""Reliability and security of the Serve app, proven on a real Ray + Serve over loopback HTTP.

One Ray (in a temp dir of its own, so its logs can be searched) serves a tiny checkpoint behind
bearer-token auth at /, an ensemble (tiny hybrid + frequency detector) at /ensemble, and the tiny
checkpoint again with a one-second retry budget at /impatient. The tests SIGKILL Detector replicas in
the middle of bursts of requests, send 1,000 concurrent requests, fuzz bodies, headers and paths,
name server files in requests, and search Ray's logs for the token.

    .venv/bin/python -m pytest tests/test_serve_reliability.py     # about 70 s on 2 CPUs
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import string
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfake_platform.ensemble import Combiner
from serve.app import build_app
from tests.factories import encoded, free_port, photo, tiny_checkpoint, tiny_ensemble
from tests.proctools import command_line

# Long: one Ray with three apps, bursts of requests and killed replicas (`make test-long`).
pytestmark = pytest.mark.long

APP = "reliability"
TOKEN_ENV = "DEEPFAKE_RELIABILITY_TEST_TOKEN"
# Fresh per run, so a hit in Ray's logs can only be this run's token.
TOKEN = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
THRESHOLD = 0.4
TIMEOUT = httpx.Timeout(30.0)
RECOVERY_LIMIT_S = 90.0
LOAD_REQUESTS = 1_000
LOAD_CONCURRENCY = 16
LOAD_LIMIT_S = 240.0
FUZZ_EXAMPLES = 150
# fp32 serving: a batched answer equals the single-image one up to float noise.
SAME = 1e-5


@dataclass(frozen=True)
class Server:
    url: str
    ray_logs: Path
    images: dict[str, tuple[bytes, str]]  # name -> (bytes, content type)
    secret_file: Path  # a server-side file whose content must never be served
    secret: str


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Ray (own temp dir) + Serve on a free loopback port with a tiny checkpoint; torn down after the module."""
    import ray
    from ray import serve

    root = tmp_path_factory.mktemp("reliability")
    checkpoint = tiny_checkpoint(root / "best.pth", THRESHOLD)
    secret = secrets.token_hex(12)
    secret_file = root / "secret.txt"
    secret_file.write_text(f"{secret}\n")
    images = {f"image{i}.{fmt.lower()}": (encoded(photo(200 + i), fmt), f"image/{fmt.lower()}")
              for i, fmt in enumerate(["JPEG", "PNG", "JPEG", "PNG"])}
    # Short path: Ray's unix sockets live under it and must stay within ~107 bytes.
    ray_dir = Path(tempfile.mkdtemp(prefix="rayrel", dir="/tmp"))
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TOKEN_ENV, TOKEN)  # the builder sees it, and the replicas inherit it from the local Ray
        # Four logical CPUs for three apps' replicas on the machine's two cores.
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=str(ray_dir))
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            # fp32, so a batched answer can be compared exactly with the same image sent alone.
            common = {"token_env": TOKEN_ENV, "precision": "fp32"}
            serve.run(build_app({"model": str(checkpoint), **common}), name=APP, route_prefix="/")
            pair = tiny_ensemble(root / "pair.pth", checkpoint, Combiner("mean"), name="pair", threshold=0.5, seed=300)
            serve.run(build_app({"model": str(pair), **common}), name="ens", route_prefix="/ensemble")
            serve.run(build_app({"model": str(checkpoint), "retry_timeout_s": 1.0, **common}), name="impatient",
                      route_prefix="/impatient")
            logs = ray_dir / "session_latest" / "logs"
            yield Server(f"http://127.0.0.1:{port}", logs, images, secret_file, secret)
        finally:
            serve.shutdown()
            ray.shutdown()
            shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=TIMEOUT) as http:
        yield http


def post_image(http: httpx.Client, image: tuple[bytes, str], **kwargs) -> httpx.Response:
    data, content_type = image
    return http.post("/predict", content=data, headers={"Content-Type": content_type}, **kwargs)


def detector_replicas() -> set[str]:
    """Names of the live Detector replica actors (`SERVE_REPLICA::<app>#Detector#<id>`)."""
    import ray

    prefix = f"SERVE_REPLICA::{APP}#Detector#"
    return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith(prefix)}


def assert_healthy(url: str) -> None:
    health = httpx.get(f"{url}/healthz", timeout=TIMEOUT)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text


# ---- load ----------------------------------------------------------------------------------------


async def _send_load(url: str, images: list[tuple[bytes, str]]) -> list[tuple[int | None, str, object]]:
    """LOAD_REQUESTS posts, LOAD_CONCURRENCY at a time: (status or None, image name, probability or error)."""
    gate = asyncio.Semaphore(LOAD_CONCURRENCY)
    limits = httpx.Limits(max_connections=LOAD_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=TIMEOUT, limits=limits) as http:

        async def one(i: int) -> tuple[int | None, str, object]:
            name, (data, content_type) = images[i % len(images)]
            async with gate:
                try:
                    response = await http.post("/predict", content=data, headers={"Content-Type": content_type})
                except httpx.HTTPError as err:
                    return None, name, repr(err)
            if response.status_code != 200:
                return response.status_code, name, response.text
            return 200, name, response.json()["fake_probability"]

        return await asyncio.gather(*(one(i) for i in range(LOAD_REQUESTS)))


@pytest.mark.ray
@pytest.mark.timeout(LOAD_LIMIT_S + 120)
def test_1000_concurrent_requests_all_answered_with_valid_probabilities(server, client):
    alone = {name: post_image(client, image).json()["fake_probability"] for name, image in server.images.items()}
    gaps = [abs(a - b) for i, a in enumerate(alone.values()) for b in list(alone.values())[i + 1:]]
    assert min(gaps) > 10 * SAME, f"the test images score too alike to tell a mixed-up answer: {alone}"
    started = time.monotonic()
    results = asyncio.run(asyncio.wait_for(_send_load(server.url, list(server.images.items())), LOAD_LIMIT_S))
    elapsed = time.monotonic() - started
    failures = [(status, detail) for status, _, detail in results if status != 200]
    assert len(results) == LOAD_REQUESTS
    assert not failures, f"{len(failures)} of {LOAD_REQUESTS} failed in {elapsed:.0f} s, e.g. {failures[:3]}"
    for _, name, probability in results:
        assert 0.0 <= probability <= 1.0
        # Under dynamic batching each answer still belongs to its own image.
        assert probability == pytest.approx(alone[name], abs=SAME), name
    assert_healthy(server.url)


# ---- fuzzing -------------------------------------------------------------------------------------

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
# h11 refuses control characters and leading/trailing blanks in a header value before anything is sent.
header_value = st.text(PRINTABLE, max_size=80).map(str.strip)
# Headers that would change HTTP framing rather than what the app sees.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te", "trailer"}
header_name = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=24).filter(
    lambda name: name.lower() not in FRAMING)
content_types = st.one_of(
    st.sampled_from(["image/jpeg", "image/png", "image/", "application/octet-stream", "multipart/form-data",
                     "multipart/form-data; boundary=", 'multipart/form-data; boundary="unclosed',
                     "multipart/form-data; boundary=other", "multipart/form-data; boundary=fuzz; charset=bogus",
                     "application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
    header_value.map(lambda value: f"multipart/form-data; boundary={value}"),
    header_value,
)
# Weighted towards the real endpoints and token, so most examples reach the upload parsing.
authorization = st.one_of(st.just(f"Bearer {TOKEN}"), st.just(f"Bearer {TOKEN}"), st.just(f"Bearer {TOKEN}"),
                          header_value, header_value.map(lambda value: f"Bearer {value}".strip()))
under_predict = st.text(string.ascii_letters + string.digits + "-._~%/", max_size=30).map(lambda s: f"/predict/{s}")
paths = st.one_of(st.just("/predict"), st.just("/predict"), st.just("/predict/batch"), under_predict)
methods = st.sampled_from(["POST"] * 8 + ["PUT", "GET"])


def multipart_body(boundary: str, name: str, filename: str, data: bytes) -> bytes:
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n\r\n'
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode()


@st.composite
def uploads(draw, image: bytes) -> tuple[bytes, str]:
    """(body, Content-Type): random bytes, a corrupted image, or multipart whose header may name another boundary."""
    kind = draw(st.sampled_from(["random", "corrupted", "multipart"]))
    if kind == "random":
        return draw(st.binary(max_size=2048)), draw(content_types)
    if kind == "corrupted":
        cut = draw(st.integers(0, len(image)))
        noise = draw(st.binary(max_size=64))
        return image[:cut] + noise + image[cut + len(noise):], draw(content_types)
    boundary = draw(st.just("fuzz") | st.text(PRINTABLE, min_size=1, max_size=70).map(str.strip).filter(bool))
    declared = draw(st.sampled_from([f"boundary={boundary}", f'boundary="{boundary}"',
                                     f"boundary={boundary}; charset=x", "boundary=other", "boundary=", ""]))
    field = draw(st.sampled_from(["file", "files", "other", ""]))
    filename = draw(st.just("../../etc/passwd") | st.text(PRINTABLE, max_size=30).filter(lambda s: '"' not in s))
    body = multipart_body(boundary, field, filename, draw(st.sampled_from([image, image[:50], b""])))
    return body, f"multipart/form-data; {declared}".rstrip("; ")


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_fuzzed_bodies_headers_and_paths_never_get_a_5xx(server):
    jpeg = next(data for data, content_type in server.images.values() if content_type == "image/jpeg")

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
    @given(method=methods, path=paths, upload=uploads(jpeg), auth=authorization,
           extra=st.dictionaries(header_name, header_value, max_size=3),
           query=st.dictionaries(st.text(PRINTABLE, min_size=1, max_size=10), st.text(PRINTABLE, max_size=30),
                                 max_size=2))
    def check(http, method, path, upload, auth, extra, query):
        body, content_type = upload
        headers = {**extra, "Content-Type": content_type, "Authorization": auth}
        response = http.request(method, path, content=body, headers=headers, params=query)
        assert response.status_code < 500, f"{method} {path} {headers}: {response.status_code} {response.text}"
        if response.status_code >= 400:
            assert isinstance(response.json()["error"], str), response.text

    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        check(http)
    assert_healthy(server.url)


# ---- requests that name server files -------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_nothing_in_a_request_names_a_file_on_the_server(server, client):
    models_before = client.get("/models").json()
    image = server.images["image0.jpeg"]
    expected = post_image(client, image).json()["fake_probability"]
    secret_path = str(server.secret_file)
    refused = {
        "filename is a traversal, content is text": {
            "files": {"file": ("../../etc/passwd", b"root:x:0:0", "image/jpeg")}},
        "filename is the secret file, no content": {"files": {"file": (secret_path, b"", "image/jpeg")}},
        "json body naming a file": {"json": {"path": secret_path, "model": secret_path}},
        "text field `file` naming a file": {"files": {"file": (None, secret_path.encode())}},
        "raw body is a path": {"content": secret_path.encode(), "headers": {"Content-Type": "image/jpeg"}},
        "query names a file, no body": {"params": {"path": secret_path, "model": "/etc/passwd"}},
    }
    for case, request in refused.items():
        response = client.post("/predict", **request)
        assert 400 <= response.status_code < 500, f"{case}: {response.status_code} {response.text}"
        assert server.secret not in response.text and "root:x:0:0" not in response.text, case
    # With a real image the file names are inert: the image's own bytes are scored by the deployed model.
    accepted = {
        "traversal filename": {"files": {"file": ("../../etc/passwd", image[0], "image/jpeg")}},
        "query naming a model and a file": {"content": image[0], "headers": {"Content-Type": image[1]},
                                            "params": {"model": secret_path, "path": "/etc/passwd",
                                                       "checkpoint": "../../etc/passwd"}},
    }
    for case, request in accepted.items():
        response = client.post("/predict", **request)
        assert response.status_code == 200, f"{case}: {response.text}"
        result = response.json()
        assert result["fake_probability"] == pytest.approx(expected, abs=1e-6), case
        assert result["model"] == models_before["model"], case
        assert server.secret not in response.text, case
    for path in ("/predict/..%2F..%2Fetc%2Fpasswd", "/models?path=/etc/passwd", "/..%2F..%2Fetc%2Fpasswd"):
        response = client.get(path)
        assert server.secret not in response.text and "root:x:0:0" not in response.text, path
        assert response.status_code in (200, 404, 405), f"{path}: {response.status_code}"
    assert client.get("/models").json() == models_before


# ---- a killed replica ----------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.fault
@pytest.mark.timeout(RECOVERY_LIMIT_S + 60)
def test_a_killed_detector_replica_is_replaced_and_requests_succeed_again(server, client):
    import ray

    image = server.images["image1.png"]
    expected = post_image(client, image).json()["fake_probability"]
    (victim,) = detector_replicas()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    killed = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Sent while no detector is alive: Serve holds it until the replacement can answer.
        held = pool.submit(post_image, client, image, timeout=RECOVERY_LIMIT_S)
        readiness = []
        while not held.done() and time.monotonic() - killed < RECOVERY_LIMIT_S:
            readiness.append(httpx.get(f"{server.url}/healthz", timeout=TIMEOUT).status_code)
            time.sleep(0.5)
        response = held.result(timeout=RECOVERY_LIMIT_S)
    recovered_after = time.monotonic() - killed
    assert response.status_code == 200, response.text
    assert response.json()["fake_probability"] == pytest.approx(expected, abs=1e-5)
    assert recovered_after < RECOVERY_LIMIT_S
    assert 503 in readiness, f"/healthz never reported the dead detector: {readiness}"
    replacements = detector_replicas()
    assert len(replacements) == 1 and victim not in replacements
    assert all(post_image(client, image).status_code == 200 for _ in range(10))
    assert_healthy(server.url)


def replica_pid(app: str, deployment: str) -> int:
    """The process id of the one replica of `deployment` in `app` (Ray titles it ray::ServeReplica:APP:NAME)."""
    title = f"ServeReplica:{app}:{deployment}"
    found = [int(entry.name) for entry in Path("/proc").iterdir()
             if entry.name.isdigit() and command_line(int(entry.name)).startswith(f"ray::{title}")]
    assert len(found) == 1, f"expected one {title} process, found {found}"
    return found[0]


async def _burst(url: str, route: str, image: tuple[bytes, str], count: int,
                 answered: list) -> list[tuple[int, object]]:
    limits = httpx.Limits(max_connections=24)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=httpx.Timeout(90.0), limits=limits) as http:

        async def one() -> tuple[int, object]:
            response = await http.post(f"{route}/predict", content=image[0], headers={"Content-Type": image[1]})
            answered.append(response.status_code)
            body = response.json()
            return response.status_code, body.get("fake_probability", body)

        gate = asyncio.Semaphore(24)

        async def gated() -> tuple[int, object]:
            async with gate:
                return await one()

        return await asyncio.gather(*(gated() for _ in range(count)))


@pytest.mark.ray
@pytest.mark.fault
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("route", "app", "deployment"), [("", APP, "Detector"), ("/ensemble", "ens", "Detector_hybrid")])
def test_requests_in_flight_when_a_replica_is_killed_are_all_answered(server, client, route, app, deployment):
    image = server.images["image0.jpeg"]
    expected = client.post(f"{route}/predict", content=image[0], headers={"Content-Type": image[1]})
    assert expected.status_code == 200, expected.text
    victim = replica_pid(app, deployment)
    answered: list[int] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        burst = pool.submit(asyncio.run, _burst(server.url, route, image, 96, answered))
        deadline = time.monotonic() + 60
        while len(answered) < 12:  # the burst is flowing: requests are inside the replica right now
            assert time.monotonic() < deadline and not burst.done(), "the burst never got going"
            time.sleep(0.02)
        os.kill(victim, signal.SIGKILL)
        killed_after = len(answered)
        results = burst.result(timeout=240)
    assert killed_after < len(results), "the burst ended before the replica was killed"
    failures = [(status, body) for status, body in results if status != 200]
    assert not failures, f"{len(failures)} of {len(results)} requests failed: {failures[:3]}"
    for _, probability in results:
        assert probability == pytest.approx(expected.json()["fake_probability"], abs=SAME)
    assert replica_pid(app, deployment) != victim
    # The requests that were inside the dead replica were sent again, not lost.
    serve_logs = b"".join(path.read_bytes() for path in (server.ray_logs / "serve").glob("*.log"))
    assert b"retrying a prediction on detector" in serve_logs
    assert_healthy(server.url)


@pytest.mark.ray
@pytest.mark.fault
@pytest.mark.timeout(180)
def test_a_request_that_outwaits_its_retry_budget_gets_a_json_503(server, client):
    image = server.images["image1.png"]
    assert client.post("/impatient/predict", content=image[0], headers={"Content-Type": image[1]}).status_code == 200
    os.kill(replica_pid("impatient", "Detector"), signal.SIGKILL)
    started = time.monotonic()
    refused = client.post("/impatient/predict", content=image[0], headers={"Content-Type": image[1]})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5", refused.text
    assert "did not answer within 1 s" in refused.json()["error"]
    assert time.monotonic() - started < 20
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while client.post("/impatient/predict", content=image[0], headers={"Content-Type": image[1]}).status_code != 200:
        assert time.monotonic() < deadline, "the replacement replica never answered"
        time.sleep(1)


# ---- the token in logs ---------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_the_api_token_never_appears_in_ray_or_serve_logs(server, client):
    image = server.images["image2.jpeg"]
    assert post_image(client, image).status_code == 200
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as anonymous:
        # Refused for its scheme while carrying the real token: the 401 path must not log credentials either.
        refused = anonymous.post("/predict", content=image[0],
                                 headers={"Content-Type": image[1], "Authorization": f"Basic {TOKEN}"})
        assert refused.status_code == 401
    logs = [path for path in server.ray_logs.rglob("*") if path.is_file()]
    # The logs searched are the ones these requests wrote: Serve logged both, the refused one included.
    serve_logs = b"".join(path.read_bytes() for path in logs if path.parent.name == "serve")
    assert b"POST /predict 200" in serve_logs and b"POST /predict 401" in serve_logs
    leaks = [str(path) for path in logs if TOKEN.encode() in path.read_bytes()]
    assert not leaks, f"the API token is in {leaks}"
