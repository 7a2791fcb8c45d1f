"""The Serve app over HTTP on 127.0.0.1: deployed as the platform builds it, then loaded by HTTP clients."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from benchmarks.http_load import concurrent_load, single_request_latencies
from benchmarks.process_cpu import CpuWindow
from benchmarks.settings import Settings
from benchmarks.timing import percentile

# An env var nobody sets: the benchmark's Serve app runs without API-token authentication.
NO_TOKEN_ENV = "DEEPFAKE_BENCHMARK_NO_TOKEN"
# Seconds the deployed app is watched with no request, for what it costs by itself.
IDLE_WINDOW_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deploy_serve(checkpoint: Path, port: int, app_args: dict[str, Any]) -> str:
    """Start Serve on 127.0.0.1:`port` with the platform's app (serve.app.build_app); its base URL."""
    from ray import serve  # ray:

    from serve.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": port})  # ray:
    # serve.run returns once every replica has loaded its model.
    serve.run(build_app({"model": str(checkpoint), **app_args}), name="benchmark", route_prefix="/")  # ray:
    return f"http://127.0.0.1:{port}"


def measure_serve(checkpoint: Path, image: bytes, s: Settings, workdir: Path) -> dict[str, dict[str, Any]]:
    """The Serve app over HTTP: warm-up, sequential single requests, then concurrent clients."""
    # The prediction log and feedback in the temporary folder, never in the directory it was started from.
    base = deploy_serve(checkpoint, free_port(), {"token_env": NO_TOKEN_ENV, "log_dir": str(workdir / "logs"),
                                                  "feedback_dir": str(workdir / "feedback")})
    url = f"{base}/predict"
    # Warm-up: every dynamic batch size (1 .. max_batch_size) builds its kernels once.
    single_request_latencies(url, image, 2, timeout_s=120)
    concurrent_load(url, image, s.serve_warmup, s.serve_concurrency, timeout_s=300)
    latencies = single_request_latencies(url, image, s.serve_single, timeout_s=120)
    single = {"p50_ms": 1000 * percentile(latencies, 50), "p90_ms": 1000 * percentile(latencies, 90),
              "requests": float(len(latencies))}
    # Where the cores go: with the app deployed and idle (what Serve, Ray and the app's pollers cost by
    # themselves), then under the clients' load (the replicas, the proxy, the clients).
    with CpuWindow() as idle:
        time.sleep(IDLE_WINDOW_S)
    with CpuWindow() as busy:
        load = concurrent_load(url, image, s.serve_requests, s.serve_concurrency, timeout_s=300)
    return {"serve_single": single, "serve_load": load, "cpu_serve_idle": idle.cores, "cpu_serve_load": busy.cores}
