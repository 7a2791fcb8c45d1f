"""`serve run serve.config` as a user runs it, in a fresh shell: a missing model is one sentence and a
non-zero exit within seconds; Ctrl-C stops the server and the Ray it started."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.factories import tiny_checkpoint
from tests.proctools import descendants, user_env

REPO = Path(__file__).resolve().parents[1]
HEALTHZ = "http://127.0.0.1:8000/healthz"  # serve.config's address

pytestmark = [pytest.mark.ray]


def serve_run(workdir: Path) -> subprocess.Popen:
    shutil.copy(REPO / "serve.config", workdir / "serve.config")
    return subprocess.Popen(["serve", "run", "serve.config"], cwd=workdir, env=user_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.timeout(180)
def test_serve_run_without_a_model_says_so_once_and_exits(tmp_path):
    started = time.monotonic()
    process = serve_run(tmp_path)
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert time.monotonic() - started < 90
    assert output.count("no model at") == 1, output[-3000:]
    assert "reproduce_baseline.py" in output and "Traceback" not in output
    assert not descendants(process.pid)


@pytest.mark.long
@pytest.mark.timeout(240)
def test_ctrl_c_stops_serve_run_and_its_ray_within_seconds(tmp_path):
    tiny_checkpoint(tmp_path / "artifacts" / "best.pth", 0.5)
    process = serve_run(tmp_path)
    try:
        deadline = time.monotonic() + 150
        while True:
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the server never became healthy"
            try:
                if httpx.get(HEALTHZ, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
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
        httpx.get(HEALTHZ, timeout=2)
