"""The Serve config files the platform writes for a model other than artifacts/best.pth (an ensemble)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def ensemble_serve_config(ensemble: str | Path, member_names: list[str], app_name: str = "deepfake") -> dict[str, Any]:
    """A multi-application Serve config deploying an ensemble spec, on 2 CPUs in all."""
    # The ingress takes 0.25 CPU; the detectors share 1.5 so the whole app fits a 2-CPU machine.
    member_cpus = math.floor(min(0.5, 1.5 / max(len(member_names), 1)) * 100) / 100
    deployments = [{"name": "DeepfakeAPI", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}}]
    deployments += [{"name": f"Detector_{name}", "num_replicas": 1,
                     "ray_actor_options": {"num_cpus": member_cpus}} for name in member_names]
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": [{
            "name": app_name,
            "route_prefix": "/",
            "import_path": "serve.app:build_app",
            "args": {"model": str(ensemble), "token_env": "DEEPFAKE_API_TOKEN"},
            "deployments": deployments,
        }],
    }
