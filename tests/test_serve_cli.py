"""`serve run serve.config` as a user runs it, in a fresh shell: a missing model is one sentence and a
non-zero exit within seconds; Ctrl-C stops the server and the Ray it started; so does SIGTERM (what
`docker stop`, systemd and Kubernetes send) when started as docs/serving.md says for production.

Each test runs its own Ray (its own temp root: `serve run` joins a Ray whose address file it finds there)
on a free port, so tests and other users of the machine's port 8000 or /tmp/ray do not meet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.factories import free_port, tiny_checkpoint
from tests.proctools import descendants, user_env

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.ray]


@pytest.fixture
def ray_temp_root() -> Iterator[Path]:
    """A short temp root of this test's own (Ray's socket paths must stay under 108 characters)."""
    with tempfile.TemporaryDirectory(prefix="ray-cli-", dir="/tmp") as root:
        yield Path(root)


def serve_run(workdir: Path, ray_temp_root: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """`serve run serve.config` in `workdir` with the repository's serve.config on a free port; the process and
    its health URL."""
    config = yaml.safe_load((REPO / "serve.config").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    (workdir / "serve.config").write_text(yaml.safe_dump(config, sort_keys=False))
    process = subprocess.Popen(["serve", "run", "serve.config"], cwd=workdir,
                               env=user_env(RAY_TMPDIR=str(ray_temp_root), **env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return process, f"http://127.0.0.1:{port}/healthz"


def wait_until_healthy(process: subprocess.Popen, healthz: str, timeout_s: float = 150) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the server never became healthy"
        try:
            if httpx.get(healthz, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)


@pytest.mark.timeout(180)
def test_serve_run_without_a_model_says_so_once_and_exits(tmp_path, ray_temp_root):
    started = time.monotonic()
    process, _ = serve_run(tmp_path, ray_temp_root)
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0, output[-3000:]
    assert time.monotonic() - started < 90
    assert output.count("no model at") == 1, output[-3000:]
    assert "reproduce_baseline.py" in output
    assert "Traceback" not in output and "Hangup" not in output, output[-3000:]
    assert not descendants(process.pid)


@pytest.mark.long
@pytest.mark.timeout(240)
def test_ctrl_c_stops_serve_run_and_its_ray_within_seconds(tmp_path, ray_temp_root):
    tiny_checkpoint(tmp_path / "artifacts" / "best.pth", 0.5)
    process, healthz = serve_run(tmp_path, ray_temp_root)
    try:
        wait_until_healthy(process, healthz)
        children = descendants(process.pid)
        assert children, "serve run started no processes"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        stopped = time.monotonic()
        process.wait(timeout=60)
        assert time.monotonic() - stopped < 30
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    time.sleep(2)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not alive, f"processes of serve run are still alive: {alive}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(healthz, timeout=2)


@pytest.mark.long
@pytest.mark.timeout(240)
def test_sigterm_stops_serve_run_started_for_production_quietly(tmp_path, ray_temp_root):
    tiny_checkpoint(tmp_path / "artifacts" / "best.pth", 0.5)
    process, healthz = serve_run(tmp_path, ray_temp_root, RAY_DISABLE_FAILURE_SIGNAL_HANDLER="1")
    try:
        wait_until_healthy(process, healthz)
        children = descendants(process.pid)
        process.send_signal(signal.SIGTERM)  # to the command alone, as `docker stop` signals PID 1
        stopped = time.monotonic()
        output, _ = process.communicate(timeout=60)
        assert time.monotonic() - stopped < 30
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == signal.SIGTERM, output[-3000:]  # Ray's driver exits with the signal number
    assert "SIGTERM received" not in output and "Traceback" not in output, output[-3000:]
    # Ray's replicas and agents notice their node has gone and exit by themselves, within seconds.
    deadline = time.monotonic() + 20
    while (alive := [pid for pid in children if Path(f"/proc/{pid}").exists()]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"processes of serve run are still alive: {alive}"
