"""The server in production: request ids, Prometheus metrics read back from Ray's real metrics endpoint,
drift against the validation scores moving when the served images change, the prediction log, feedback,
the web page in a real browser, and a second Detector replica under load that goes away after.

The apps are deployed as users deploy them: serve.config's form, with its Detector `autoscaling_config`,
sent with `serve deploy` to a local Ray started here (metrics reported every second).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import skimage.data
import torch
import yaml
from PIL import Image, ImageEnhance

from deepfake_platform.checkpoints import DetectorCheckpoint, read_checkpoint
from deepfake_platform.ensemble import load_predictor
from deepfake_platform.feedback import read_feedback
from deepfake_platform.fine_tuning.decision import decide
from deepfake_platform.media import MediaScorer
from deepfake_platform.monitoring import read_log
from tests.factories import encoded, free_port, photo, tiny_checkpoint
from tests.proctools import user_env

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = httpx.Timeout(60.0)
FACES = {"mode": "largest", "detector": "haar", "margin": 1.3, "crop_size": 96}

pytestmark = pytest.mark.ray


def face_pictures() -> list[bytes]:
    """Photographs with a face: crops of the astronaut, each a little different."""
    astronaut = Image.fromarray(skimage.data.astronaut())
    return [encoded(astronaut.crop((10 * i, 5 * i, 400 + 10 * i, 400 + 5 * i)), "JPEG") for i in range(8)]


def darkened_face_pictures() -> list[bytes]:
    """The same photographs at half brightness: still faces the model judges, but its scores move away from
    the validation ones (with a face model, only a picture with a face reaches a score)."""
    astronaut = ImageEnhance.Brightness(Image.fromarray(skimage.data.astronaut())).enhance(0.5)
    return [encoded(astronaut.crop((10 * i, 5 * i, 400 + 10 * i, 400 + 5 * i)), "JPEG") for i in range(8)]


def faceless_pictures() -> list[bytes]:
    return [encoded(photo(500 + i, 120), "PNG") for i in range(8)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("monitoring")
    staging = tiny_checkpoint(root / "staging.pth", 0.5, faces=FACES)
    # The validation scores the deployed model recorded: here, those it gives the face photographs, so the
    # drift against them is small while faces come in and large when faceless pictures do.
    scorer = MediaScorer(load_predictor(staging))
    reference = [scorer.score_image(Image.open(io.BytesIO(data)).convert("RGB")).fake_probability
                 for data in face_pictures()]
    checkpoint = tiny_checkpoint(root / "best.pth", float(np.median(reference)), faces=FACES,
                                 val_scores={"real": reference[:4], "fake": reference[4:]})
    config = yaml.safe_load((REPO / "serve.config").read_text())
    app = config["applications"][0]
    app["args"].update(model=str(checkpoint), log_dir=str(root / "logs"), feedback_dir=str(root / "feedback"),
                       feedback_cache_items=2, drift_window=16, token_env="DEEPFAKE_MONITORING_TEST_TOKEN",
                       faces="all")  # every face judged: the page draws both boxes of a photo of two faces
    detector = next(d for d in app["deployments"] if d["name"] == "Detector")
    detector.pop("num_replicas", None)
    # The Detector's autoscaling as serve.config documents it, with delays a test can wait for.
    detector["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                                      "upscale_delay_s": 0, "downscale_delay_s": 2, "metrics_interval_s": 0.5,
                                      "look_back_period_s": 1}
    detector["ray_actor_options"]["num_cpus"] = 0.5
    config.pop("http_options")
    (root / "serve.yaml").write_text(yaml.safe_dump(config))

    port, dashboard, metrics = free_port(), free_port(), free_port()
    previous = os.environ.get("RAY_metrics_report_interval_ms")
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # read when Ray starts: metrics within a second
    ray.init(num_cpus=4, include_dashboard=True, dashboard_port=dashboard, _metrics_export_port=metrics,
             log_to_driver=False)
    try:
        from ray import serve

        serve.start(http_options={"host": "127.0.0.1", "port": port})
        env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        deployed = subprocess.run(["serve", "deploy", str(root / "serve.yaml"), "--address",
                                   f"http://127.0.0.1:{dashboard}"], env=env, capture_output=True, text=True,
                                  timeout=120)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the app never became healthy"
            time.sleep(1)
        yield {"url": url, "root": root, "metrics": f"http://127.0.0.1:{metrics}/metrics", "checkpoint": checkpoint}
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_metrics_report_interval_ms", None)
        else:
            os.environ["RAY_metrics_report_interval_ms"] = previous


def post(url: str, data: bytes, name: str = "picture.jpg") -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": (name, data)}, timeout=TIMEOUT)


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(sample.labels, sample.value) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


@pytest.mark.timeout(300)
def test_answers_carry_request_ids_and_metrics_reach_prometheus(server):
    url = server["url"]
    answers = [post(url, data).json() for data in face_pictures()[:3]]
    assert len({answer["request_id"] for answer in answers}) == 3
    faceless = post(url, faceless_pictures()[0], "noise.png").json()
    assert faceless["no_face"] is True and faceless["verdict"] == "not_applicable"
    assert httpx.post(f"{url}/predict", content=b"junk", headers={"Content-Type": "image/png"}).status_code == 400
    wanted = {"ray_deepfake_requests_total", "ray_deepfake_fake_probability_bucket",
              "ray_deepfake_detector_latency_seconds_bucket", "ray_deepfake_faces_per_image_bucket",
              "ray_deepfake_no_face_total", "ray_deepfake_errors_total"}
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(server["metrics"], timeout=10).text
        present = {name for name in wanted if metric_samples(text, name)}
        if present == wanted:
            break
        assert time.monotonic() < deadline, f"missing metrics after 60 s: {sorted(wanted - present)}"
        time.sleep(1)
    requests = metric_samples(text, "ray_deepfake_requests_total")
    assert sum(value for labels, value in requests if labels["route"] == "/predict") >= 4
    verdicts = {labels["verdict"] for labels, _ in requests}
    assert "not_applicable" in verdicts and verdicts <= {"real", "fake", "not_applicable"}
    assert any(labels["status"] == "400" for labels, _ in metric_samples(text, "ray_deepfake_errors_total"))
    latency = metric_samples(text, "ray_deepfake_detector_latency_seconds_bucket")
    assert {labels["detector"] for labels, _ in latency} == {"hybrid_tiny"}
    assert all(labels.get("application") == "deepfake" for labels, _ in requests)  # Serve's own tags


@pytest.mark.timeout(300)
def test_monitoring_moves_when_the_served_images_change_and_the_log_keeps_no_image(server):
    url = server["url"]
    for data in face_pictures() * 2:  # the window (16) fills with pictures like the validation ones
        assert post(url, data).status_code == 200
    calm = httpx.get(f"{url}/monitoring", timeout=TIMEOUT).json()
    assert calm["window_size"] == 16 and calm["reference_size"] == 8 and calm["no_face_rate"] == 0.0
    for data in darkened_face_pictures() * 2:
        assert post(url, data).json()["verdict"] in ("real", "fake")
    shifted = httpx.get(f"{url}/monitoring", timeout=TIMEOUT).json()
    assert shifted["no_face_rate"] == 0.0
    assert shifted["psi"] > calm["psi"] + 0.5 and shifted["psi"] > 0.25
    assert shifted["ks_p"] < 0.01 < calm["ks_p"]
    # Pictures without a face have no score: they move the no-face rate and leave no distribution to compare.
    for data in faceless_pictures() * 2:
        assert post(url, data, "noise.png").json()["verdict"] == "not_applicable"
    faceless = httpx.get(f"{url}/monitoring", timeout=TIMEOUT).json()
    assert faceless["no_face_rate"] == 1.0 and faceless["psi"] is None and faceless["ks_p"] is None
    records = read_log(server["root"] / "logs")
    assert len(records) >= 48 and {"request_id", "fake_probability", "label", "model", "time"} <= set(records[-1])
    raw = b"".join(path.read_bytes() for path in (server["root"] / "logs").iterdir())
    assert len(raw) / len(records) < 1000  # a line per answer, never the picture


@pytest.mark.timeout(300)
def test_feedback_is_stored_with_its_image_and_refused_with_a_sentence_when_it_cannot_be(server):
    url = server["url"]
    face = face_pictures()[0]
    first = post(url, face).json()
    stored = httpx.post(f"{url}/feedback", data={"request_id": first["request_id"], "label": "fake"}, timeout=TIMEOUT)
    assert stored.status_code == 200, stored.text  # the server still held the upload
    assert stored.json()["image_kept"] is True
    for data in faceless_pictures()[:3]:  # the cache holds 2 uploads: the first one's image goes
        post(url, data)
    evicted = httpx.post(f"{url}/feedback", data={"request_id": first["request_id"], "label": "real"}, timeout=TIMEOUT)
    assert evicted.status_code == 400 and "attach it again" in evicted.json()["error"]
    resent = httpx.post(f"{url}/feedback", data={"request_id": first["request_id"], "label": "real"},
                        files={"file": ("face.jpg", face)}, timeout=TIMEOUT)
    assert resent.status_code == 200, resent.text
    for fields, status, words in [({"request_id": "nope", "label": "fake"}, 404, "unknown"),
                                  ({"request_id": first["request_id"], "label": "maybe"}, 400, "real or fake"),
                                  ({"label": "fake"}, 400, "request_id")]:
        refused = httpx.post(f"{url}/feedback", data=fields, timeout=TIMEOUT)
        assert refused.status_code == status and words in refused.json()["error"], refused.text
    # Other tests send feedback to the same server: only this request's latest correction counts here.
    (record,) = [line for line in read_feedback(server["root"] / "feedback") if line["request_id"] == first["request_id"]]
    assert record["label"] == "real" and record["answer"]["request_id"] == first["request_id"]
    assert Path(record["image_path"]).read_bytes() == face


@pytest.mark.timeout(300)
def test_a_second_detector_replica_starts_under_load_and_goes_away_after(server):
    from ray import serve

    def replicas() -> int:
        status = serve.status().applications["deepfake"].deployments["Detector"]
        return sum(count for state, count in status.replica_states.items()
                   if str(state).endswith(("RUNNING", "STARTING")))

    assert replicas() == 1
    # Pictures with a face: one without has no crop to send, so it would never reach the Detector.
    pictures = face_pictures()

    async def load(seconds: float) -> int:
        stop = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            async def client(i: int) -> int:
                done = 0
                while time.monotonic() < stop:
                    response = await http.post(f"{server['url']}/predict", files={"file": ("p.jpg", pictures[i % 8])})
                    done += response.status_code == 200
                return done
            return sum(await asyncio.gather(*(client(i) for i in range(12))))

    seen, deadline = 1, time.monotonic() + 120
    while seen < 2 and time.monotonic() < deadline:
        assert asyncio.run(load(4)) > 0
        seen = max(seen, replicas())
    assert seen == 2, "no second Detector replica started under load"
    deadline = time.monotonic() + 90
    while replicas() > 1:
        assert time.monotonic() < deadline, "the second replica did not go away after the load"
        time.sleep(1)


def launch_chromium(playwright):
    """Debian's Chromium (or $DEEPFAKE_CHROMIUM), headless, without network chatter: Playwright's own download
    cannot run here."""
    return playwright.chromium.launch(
        executable_path=os.environ.get("DEEPFAKE_CHROMIUM", "/usr/bin/chromium"),
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
              "--no-first-run", "--disable-sync"])


@pytest.mark.timeout(300)
def test_the_page_checks_a_photograph_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    picture = tmp_path / "astronaut.jpg"
    Image.fromarray(skimage.data.astronaut()).save(picture)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"{server['url']}/", wait_until="load")
            page.set_input_files("#file", str(picture))
            page.wait_for_function("document.getElementById('verdict').textContent.length > 0", timeout=60_000)
            verdict = page.inner_text("#verdict")
            assert verdict in ("FAKE", "REAL")
            assert page.get_attribute("#boxes", "data-boxes") == "1"  # the face's box is drawn
            page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=60_000)
            assert "sha256" in page.inner_text("#model") and "threshold" in page.inner_text("#probability")
            page.click("#wrong")
            page.wait_for_function("document.getElementById('status').textContent.includes('recorded')",
                                   timeout=30_000)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    with Image.open(tmp_path / "page.png") as screenshot:  # the whole page, as wide as the window
        assert screenshot.format == "PNG" and screenshot.width == 1200 and screenshot.height >= 900
    labels = [record["label"] for record in read_feedback(server["root"] / "feedback")]
    assert ("real" if verdict == "FAKE" else "fake") in labels


@pytest.mark.timeout(300)
def test_the_page_draws_each_face_of_a_photo_and_the_timeline_of_a_video(server, tmp_path):
    from playwright.sync_api import sync_playwright

    from deepfake_platform.data.video import write_video

    astronaut = Image.fromarray(skimage.data.astronaut())
    two_faces = Image.new("RGB", (1024, 512))
    two_faces.paste(astronaut, (0, 0))
    two_faces.paste(astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (512, 0))
    two_faces.save(tmp_path / "two_faces.jpg")
    face, faceless = np.asarray(astronaut.crop((96, 0, 416, 240))), np.asarray(photo(7, 320).crop((0, 0, 320, 240)))
    write_video(tmp_path / "clip.avi", [face, face, faceless, face, faceless, face], fps=10)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"{server['url']}/", wait_until="load")
            page.set_input_files("#file", str(tmp_path / "two_faces.jpg"))
            page.wait_for_function("document.getElementById('boxes').dataset.boxes === '2'", timeout=60_000)
            assert page.inner_text("#verdict") in ("FAKE", "REAL") and page.is_hidden("#chart")
            page.locator("#stage").screenshot(path=str(tmp_path / "boxes.png"))
            page.set_input_files("#file", str(tmp_path / "clip.avi"))
            page.wait_for_function("document.getElementById('chart').dataset.points === '6'", timeout=60_000)
            assert page.locator("#chart .point").count() == 6  # one point per sampled frame
            assert page.locator("#chart .point.no-face").count() == 2 and page.locator("#threshold-line").count() == 1
            widths = page.eval_on_selector_all("#faces tr", "rows => rows.map(row => row.children.length)")
            assert len(widths) == 7 and set(widths) == {5}  # the header lines up with the columns
            page.locator("#chart").screenshot(path=str(tmp_path / "chart.png"))
        finally:
            browser.close()

    def share(path: Path, colour: tuple[int, int, int]) -> float:
        """The share of pixels within a few levels of `colour`."""
        with Image.open(path) as shot:
            pixels = np.asarray(shot.convert("RGB")).astype(int)
        return float(np.mean(np.abs(pixels - colour).max(axis=-1) <= 12))

    # The two boxes are stroked red (fake) or green (real); the frames are red or green points, those without a
    # face grey crosses; the threshold is purple (its line and its name).
    assert share(tmp_path / "boxes.png", (231, 76, 60)) + share(tmp_path / "boxes.png", (46, 204, 113)) > 0.002
    assert share(tmp_path / "chart.png", (231, 76, 60)) + share(tmp_path / "chart.png", (46, 204, 113)) > 0.001
    assert share(tmp_path / "chart.png", (127, 140, 141)) > 0.0003 and share(tmp_path / "chart.png", (142, 68, 173)) > 0.0005


@pytest.mark.timeout(180)
def test_monitor_report_reads_the_log_against_validation_and_the_corrections(server, tmp_path):
    root = server["root"]
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "monitor_report.py"), "--log", str(root / "logs"),
         "--feedback", str(root / "feedback"), "--checkpoint", str(server["checkpoint"]), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "MONITORING.md").read_text()
    answers = len(read_log(root / "logs"))
    assert f"{answers} answers from" in report and "## Over time" in report
    corrected = len(read_feedback(root / "feedback"))
    assert f"| answers corrected by users | {corrected} |" in report
    for plot in ("scores_over_time.png", "fake_rate.png", "drift.png", "accuracy.png"):
        assert (tmp_path / plot).read_bytes()[:4] == b"\x89PNG", plot


@pytest.mark.long  # a Ray Train run beside the server: `make test-long`, to keep `make test` under 15 minutes
@pytest.mark.timeout(600)
def test_corrections_sent_to_the_server_fine_tune_a_model_that_is_judged_and_promoted_by_the_rule(
        server, data_root, tmp_path):
    url, feedback = server["url"], server["root"] / "feedback"
    for i, data in enumerate(face_pictures()[2:8]):
        answer = post(url, data).json()
        sent = httpx.post(f"{url}/feedback", data={"request_id": answer["request_id"], "label": ("real", "fake")[i % 2]},
                          files={"file": ("face.jpg", data)}, timeout=TIMEOUT)
        assert sent.status_code == 200, sent.text
    records = [record for record in read_feedback(feedback) if record.get("image")]
    served = {record["request_id"]: record["answer"]["fake_probability"] for record in records}

    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        returncode = subprocess.run(
            [sys.executable, str(REPO / "experiments" / "fine_tune.py"), "--from", str(server["checkpoint"]),
             "--feedback", str(feedback), "--data", str(data_root), "--epochs", "1", "--name", "ft"],
            cwd=tmp_path, env=user_env(), stdout=out, stderr=err, timeout=400).returncode
    stdout, stderr = (tmp_path / "stdout.txt").read_text(), (tmp_path / "stderr.txt").read_text()
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "ft" / "fine_tune.json").read_text())
    used = summary["feedback"]
    assert used["train_images"] + used["held_back_images"] == len({record["image_sha256"] for record in records})
    assert used["held_back_images"] >= 1 and used["crops"]["real"] + used["crops"]["fake"] >= 1
    # The old model is judged the way the server answered those very images.
    for request_id, answer in zip(used["held_back"], summary["before"]["feedback"]["answers"], strict=True):
        assert answer["fake_probability"] == pytest.approx(served[request_id], abs=1e-4)
    promote, reason = decide(summary["before"], summary["after"], summary["margin"])
    assert summary["decision"] == ("promote" if promote else "keep") and summary["reason"] == reason
    assert reason in (tmp_path / "runs" / "ft" / "FINE_TUNE.md").read_text() and reason in stdout
    new = read_checkpoint(summary["new_checkpoint"], DetectorCheckpoint)
    old = read_checkpoint(server["checkpoint"], DetectorCheckpoint)
    assert {key: new.faces[key] for key in FACES} == FACES  # still scores faces cropped the same way
    assert any(not torch.equal(new.model_state_dict[key], value) for key, value in old.model_state_dict.items())
    promoted = tmp_path / "artifacts" / "best.pth"
    if promote:  # the served file is now the fine-tuned model
        assert summary["promoted"] == str(promoted)
        served = read_checkpoint(promoted, DetectorCheckpoint)
        assert all(torch.equal(served.model_state_dict[key], value) for key, value in new.model_state_dict.items())
    else:
        assert summary["promoted"] is None and not promoted.exists()
