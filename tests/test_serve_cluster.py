"""Switching without a restart on a cluster: a head and a second node on one machine (`ray start`, token
authentication on, as tests/test_cluster.py builds them), `serve run CONFIG` joining it with RAY_ADDRESS, the
Detector replica placed on the second node, and `experiments/models.py promote` / `rollback` run as a user
runs them while 16 clients send 300 requests. The output home is the shared storage both nodes read (here
one machine's disk, as NFS would be on a real cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from deepfake_platform.registry import Registry
from deepfake_platform.tracking import RunRecord
from tests.factories import encoded, free_port, photo, tiny_record
from tests.test_cluster import Cluster, driver_env

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 16

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.long, pytest.mark.timeout(600)]


def register(home: Path, name: str, record, *, champion: bool) -> int:
    """Track a run holding `record` and register it, as training does; its version."""
    from deepfake_platform.checkpoints import write_checkpoint

    registry = Registry(home)
    model = write_checkpoint(record, home / "runs" / name / "model" / "best.pth")
    run_id = registry.tracking.log_run(RunRecord(name, {}, [{"epoch": 0, "val_auc": 0.7}], {}, [], model=model))
    return registry.register(model, run_id=run_id, summary={"run": name}, champion=champion,
                             tags={"kind": "train", "run": name}).version


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A two-node cluster, versions 1 (champion) and 2 registered, `serve run` of a config whose Detector can
    only run on the second node."""
    home = tmp_path_factory.mktemp("home")
    cluster = Cluster(home)
    serve_run = None
    try:
        cluster.start_head()
        cluster._ray_start([f"--address=127.0.0.1:{cluster.port}", "--dashboard-agent-listen-port=0",
                            '--resources={"model": 1}'])
        deadline = time.monotonic() + 60
        while len(cluster.alive_nodes()) < 2:
            assert time.monotonic() < deadline, "the second node never joined"
            time.sleep(1)
        assert register(home, "v1", tiny_record(seed=0), champion=True) == 1
        record = tiny_record(seed=0)  # version 2 answers near 1 where version 1 answers near 0.5
        record.model_state_dict["head.4.bias"] = record.model_state_dict["head.4.bias"] + 4.0
        assert register(home, "v2", record, champion=False) == 2
        port = free_port()
        config = {
            "proxy_location": "HeadOnly",  # both nodes share one machine's ports
            "http_options": {"host": "127.0.0.1", "port": port},
            "applications": [{
                "name": "deepfake", "route_prefix": "/", "import_path": "serve.app:build_app",
                # Absolute: the app is built on the cluster, not where `serve run` runs.
                "args": {"model": str(home / "artifacts" / "best.pth"), "state_poll_s": 0.2,
                         "log_dir": str(home / "logs"), "feedback_dir": str(home / "feedback")},
                "deployments": [
                    {"name": "DeepfakeAPI", "ray_actor_options": {"num_cpus": 0.25}},
                    {"name": "Detector", "num_replicas": 1,
                     "ray_actor_options": {"num_cpus": 0.5, "resources": {"model": 0.5}}},
                ],
            }],
        }
        (home / "serve.cluster.config").write_text(yaml.safe_dump(config))
        log = (home / "serve.log").open("w")
        # Ray's own CLI joins a token-authenticated cluster with RAY_AUTH_MODE=token, as Ray's docs tell users.
        serve_run = subprocess.Popen([f"{Path(sys.executable).parent}/serve", "run", "serve.cluster.config"],
                                     cwd=home, env={**driver_env(cluster), "RAY_AUTH_MODE": "token"}, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            assert serve_run.poll() is None, (home / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (home / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield {"home": home, "url": url, "cluster": cluster}
    finally:
        if serve_run is not None and serve_run.poll() is None:
            os.killpg(serve_run.pid, 9)
        cluster.stop()


def models_command(served, *args: str) -> str:
    result = subprocess.run([sys.executable, str(REPO / "experiments" / "models.py"), "--home", str(served["home"]),
                             *args], env=driver_env(served["cluster"]), capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_promote_and_rollback_switch_a_replica_on_another_node_without_losing_a_request(served):
    images = [encoded(photo(300 + i), "JPEG") for i in range(4)]
    answers: list[dict] = []
    failures: list[str] = []

    def ask(i: int, client: httpx.Client) -> None:
        response = client.post("/predict", files={"file": ("a.jpg", images[i % len(images)], "image/jpeg")})
        if response.status_code != 200:
            failures.append(f"{response.status_code} {response.text[:200]}")
        else:
            answers.append(response.json())

    def switch() -> None:
        time.sleep(2)
        models_command(served, "promote", "2")
        deadline = time.monotonic() + 60
        while not any(answer["model"]["version"] == 2 for answer in answers[-10:]) and time.monotonic() < deadline:
            time.sleep(0.2)
        models_command(served, "rollback")

    with httpx.Client(base_url=served["url"], timeout=60) as client:
        switcher = threading.Thread(target=switch)
        switcher.start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(lambda i: ask(i, client), range(300)))
        switcher.join(timeout=240)
        assert not failures, failures[:3]
        assert len(answers) == 300
        versions = [answer["model"]["version"] for answer in answers]
        assert 2 in versions, "the promotion never reached the replica on the second node"
        for answer in answers:  # each answer names the model whose probability it carries
            assert answer["model"]["version"] == (2 if answer["fake_probability"] > 0.9 else 1)
        deadline = time.monotonic() + 60  # the rollback, too, without a restart
        while client.post("/predict", files={"file": ("a.jpg", images[0], "image/jpeg")}).json()["model"]["version"] != 1:
            assert time.monotonic() < deadline, "the rollback never reached the replica on the second node"
            time.sleep(0.5)
    state = json.loads((served["home"] / "artifacts" / "serving.json").read_text())
    assert state["champion"]["version"] == 1 and state["history"] == [1]
