"""The benchmark's CPU breakdown: who used the cores during a phase, by role, from /proc."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmarks.process_cpu import CpuWindow, role_of
from benchmarks.summary import cpu_figures, role_key
from benchmarks.tables import cpu_lines

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_roles_from_command_lines():
    assert role_of("ray::ServeReplica:benchmark:Detector.handle_request") == "serve replica Detector"
    assert role_of("ray::ServeReplica:deepfake:DeepfakeAPI") == "serve replica DeepfakeAPI"
    assert role_of("ray::ProxyActor.receive_asgi_messages") == "serve proxy"
    assert role_of("ray::RayTrainWorker.run") == "train worker"
    assert role_of("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=x") == "raylet"
    assert role_of("/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --log_dir=x") == "gcs"
    # A worker's arguments name the raylet: it is a worker all the same.
    assert role_of("/venv/bin/python -u /venv/lib/ray/_private/workers/default_worker.py --raylet-name=x") \
        == "other ray actors"
    assert role_of("ray::IDLE") == "other ray actors"
    assert role_of("/usr/bin/vim notes.txt") is None


BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def test_window_counts_children_that_start_and_end_inside_it():
    """A process started and finished inside the window counts what it used; an idle one next to nothing."""
    with CpuWindow(interval_s=0.1) as window:
        idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
        burner = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.0)])
        burner.wait(timeout=60)
        idle.wait(timeout=60)
        time.sleep(0.3)
    cores = window.cores
    wall = cores.pop("wall_s")
    assert wall >= 1.0
    used = sum(cores.values()) * wall  # CPU seconds of this process and its children
    # The burner's 1.0 CPU s counted although it had exited before the window closed (plus interpreter starts).
    assert 1.0 <= used <= 1.0 + 0.2 + 2 * 0.5, cores
    assert all(role == "benchmark driver" or role.startswith("other") for role in cores), cores


def test_breakdown_figures_and_lines():
    raw = {
        "serve_load": {"images_per_s": 2.0, "requests": 100.0},
        "cpu_serve_idle": {"serve controller": 0.05, "serve replica DeepfakeAPI": 0.01, "serve proxy": 0.01,
                           "benchmark driver": 0.01, "wall_s": 10.0},
        "cpu_serve_load": {"serve replica Detector": 1.7, "serve replica DeepfakeAPI": 0.11, "serve proxy": 0.06,
                           "serve controller": 0.05, "benchmark driver": 0.04, "wall_s": 50.0},
        "cpu_train_ray": {"train worker": 1.8, "train controller": 0.02, "raylet": 0.01, "benchmark driver": 0.01,
                          "wall_s": 30.0},
    }
    figures = cpu_figures(raw)
    # Proxy and ingress: (0.11 - 0.01 + 0.06 - 0.01) cores over 50 s, for 100 requests: 75 ms each.
    assert figures["serve_front_cpu_ms_per_request"] == pytest.approx(75.0)
    assert figures["serve_idle_cores"] == pytest.approx(0.07)
    assert figures["serve_detector_cores"] == pytest.approx(1.7)
    assert figures["ray_train_other_cores"] == pytest.approx(0.03)
    assert figures[role_key("cpu_serve_load", "serve replica Detector")] == pytest.approx(1.7)
    lines = "\n".join(cpu_lines({k: float(v) for k, v in figures.items()}, {"cores": "2"}))
    assert "serve under load (50 s): serve replica detector 85.0 %" in lines
    assert "75 ms CPU per request" in lines
    assert cpu_figures({})["serve_front_cpu_ms_per_request"] is None
    assert cpu_lines({}, {"cores": "2"}) == []
