"""HTTP clients that load a `POST /predict` endpoint: sequential single requests and concurrent clients."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from benchmarks.timing import percentile


def single_request_latencies(url: str, body: bytes, count: int, timeout_s: float) -> list[float]:
    """Seconds per request for `count` sequential single-image POSTs (one client, one connection)."""
    import httpx

    latencies = []
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=timeout_s) as client:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            response = client.post(url, content=body, headers={"Content-Type": "image/jpeg"})
            latencies.append(time.perf_counter() - start)
            _check(response)
    return latencies


def concurrent_load(url: str, body: bytes, requests: int, concurrency: int, timeout_s: float) -> dict[str, float]:
    """`requests` single-image POSTs from `concurrency` concurrent clients (httpx async); images/s and latency."""
    latencies, wall = asyncio.run(asyncio.wait_for(_load(url, body, requests, concurrency, timeout_s), timeout_s))
    return {
        "images_per_s": len(latencies) / wall,
        "requests": float(len(latencies)),
        "concurrency": float(concurrency),
        "seconds": wall,
        "p50_ms": percentile(latencies, 50) * 1000.0,
        "p90_ms": percentile(latencies, 90) * 1000.0,
    }


async def _load(url: str, body: bytes, requests: int, concurrency: int,
                timeout_s: float) -> tuple[list[float], float]:
    import httpx

    latencies: list[float] = []
    issued = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def client_loop() -> None:
            # A closed loop: each client sends its next request when the previous one is answered.
            while next(issued) < requests:
                start = time.perf_counter()
                response = await client.post(url, content=body, headers={"Content-Type": "image/jpeg"})
                latencies.append(time.perf_counter() - start)
                _check(response)

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        return latencies, time.perf_counter() - start


def _check(response: Any) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"the Serve app answered {response.status_code}: {response.text[:300]}")
