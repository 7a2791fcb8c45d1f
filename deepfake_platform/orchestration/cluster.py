"""Connecting to Ray: join the cluster the user points at, or start a local one, with a quiet console.

`ensure_ray` is the one place a job meets Ray: under `ray job submit` it joins the job's cluster; with
`RAY_ADDRESS` set it joins that cluster (shipping this project's packages, so a clone runs on a
cluster where nothing is installed); otherwise it joins a cluster started on this machine with
`ray start --head`, or starts a private local Ray. A cluster that wants an authentication token the
client does not send is a sentence saying what to set.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from deepfake_platform.config import REPO_ROOT
from deepfake_platform.errors import UserError

# What each Ray worker needs to know about the console: tqdm_ray bars, no print patch (it doubles lines).
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


class ClusterError(UserError, RuntimeError):
    """A Ray cluster that cannot be joined as configured."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def auth_hint(address: str | None) -> str:
    """The sentence for a cluster that refused this client's (missing) token."""
    where = f"the Ray cluster at {address}" if address else "the running Ray cluster"
    return (
        f"{where} refused this client: it requires Ray's authentication token and none was sent. Copy the "
        "cluster's token to ~/.ray/auth_token (or set RAY_AUTH_TOKEN), run `export RAY_AUTH_MODE=token`, and rerun "
        "the command (or check that a Ray cluster runs at that address)."
    )


def token_available() -> bool:
    """Whether this machine holds a Ray authentication token for clients to send."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path("~/.ray/auth_token").expanduser())
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


def ensure_ray(*, verbose: bool = False, num_cpus: int | None = None) -> bool:
    """Join or start Ray as described above; True when this call started a local Ray (stop it when done).

    `num_cpus` sizes a local Ray this call starts (default: the machine's CPUs)."""
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local" and "RAY_AUTH_MODE" not in os.environ and token_available():
        # What Ray does itself when joining a cluster found on this machine: send the token it holds. Set
        # before Ray is imported, which reads it then.
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray  # ray:

    if ray.is_initialized():
        return False
    os.environ.update(WORKER_ENV)  # inherited by a local Ray's workers
    options: dict[str, Any] = {"log_to_driver": True}
    if not verbose:
        # Ray's own INFO lines go to its log files; warnings and errors still reach the console.
        options["logging_level"] = "WARNING"
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # A `ray job submit` entrypoint: the job's working dir already carries the code to every node.
        _init(ray, None, verbose, {**options, "runtime_env": {"env_vars": WORKER_ENV}})
        return False
    if address and address != "local":
        # A cluster that refuses the client retries for a minute by default: ten seconds say as much.
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "10")
        # Ship the project's packages, so a clone runs on a cluster where nothing is installed.
        packages = [str(REPO_ROOT / name) for name in ("deepfake_platform", "models")]
        _init(ray, address, verbose, {**options, "runtime_env": {"py_modules": packages, "env_vars": WORKER_ENV}})
        return False
    started = started_cluster_address() if address != "local" else None
    if started:
        try:  # a cluster started on this machine with `ray start --head`
            _init(ray, started, verbose, {**options, "runtime_env": {"env_vars": WORKER_ENV}}, local_cluster=True)
            return False
        except ConnectionError:
            pass
    # A private local Ray. Ray Train's placement-group cleaner asks the State API for "the" Ray on this
    # machine; with several running it gives up and a stopped trial's placement group leaks: point it here.
    port = free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    if num_cpus:
        options["num_cpus"] = num_cpus
    _init(ray, "local", verbose, {**options, "include_dashboard": True, "dashboard_port": port,
                         "runtime_env": {"env_vars": {**WORKER_ENV, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}})
    return True


def started_cluster_address() -> str | None:
    """The address `ray start --head` on this machine recorded (Ray's `ray_current_cluster` file), or None.

    Only such a cluster is joined: Ray's own `address="auto"` joins any Ray it finds running here, a Serve's or
    another job's private one too, whose CPUs are taken (the run's controller is then cancelled unstarted)."""
    from ray._common.utils import get_ray_address_file  # ray:

    try:
        return Path(get_ray_address_file(None)).read_text().strip() or None
    except OSError:
        return None


def _init(ray: Any, address: str | None, verbose: bool, options: dict[str, Any], *,
          local_cluster: bool = False) -> None:
    from ray.exceptions import AuthenticationError  # ray:

    if not verbose:
        # "Token authentication is enabled for this Ray cluster": Ray's default, said on every start.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(address=address, **options)  # ray:
        if not verbose:
            quiet_console()
    except AuthenticationError as err:
        raise ClusterError(auth_hint(address)) from err
    except (RuntimeError, ConnectionError) as err:
        text = f"{err} {err.__cause__}"
        if (address is None or local_cluster) and isinstance(err, ConnectionError) and "authenticat" not in text.lower():
            raise  # no cluster on this machine: the caller starts one
        if os.environ.get("RAY_AUTH_MODE") != "token" or "authenticat" in text.lower():
            raise ClusterError(auth_hint(address)) from err
        raise ClusterError(f"could not join the Ray cluster at {address}: {err}") from err


# Ray's internals that reach the console from its own processes: C++ log lines (`[2026-12-05 08:33:34,811 E
# 9612 9700] core_worker.cc:2465: ...`) and whatever the Train controller logs (transient resource-request
# tracebacks under load). They stay in Ray's log files under its session folder, and --verbose shows them.
RAY_INTERNAL_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+ [DIWEF] \d+ \d+\] \S+\.(cc|h):\d+")
RAY_INTERNAL_ACTORS = ("TrainController",)


def is_ray_internal(data: dict[str, Any]) -> bool:
    """Whether a batch of worker output (Ray's dict: lines, actor_name, ...) comes from Ray's own controller."""
    return any(actor in (data.get("actor_name") or "") for actor in RAY_INTERNAL_ACTORS)


def console_lines(data: dict[str, Any]) -> list[str]:
    """The lines of a batch of worker output that belong on the console."""
    if is_ray_internal(data):
        return []
    return [line for line in data.get("lines", []) if not RAY_INTERNAL_LINE.match(line)]


def quiet_console() -> None:
    """Filter what Ray forwards from its workers to this console through `console_lines`."""
    # ray: no public hook filters worker output; this wraps the handler ray.init(log_to_driver=True) installed.
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    for name, handler in list(dispatcher.handlers):
        if name == "ray_print_logs" and not isinstance(handler, _Filtered):
            dispatcher.remove_handler(name)
            dispatcher.add_handler(name, _Filtered(handler))


class _Filtered:
    def __init__(self, handler: Any):
        self.handler = handler

    def __call__(self, data: dict[str, Any]) -> None:
        lines = console_lines(data)
        if lines:
            self.handler({**data, "lines": lines})


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of every alive node of the connected Ray cluster."""
    import ray  # ray:

    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]  # ray:


def cpus_per_worker(configured: float, num_workers: int) -> float:
    """The configured CPUs per worker, or the cluster's free CPUs split evenly between the workers.

    Free, not total: on a cluster that also serves (a Serve app holds CPUs for its replicas) workers sized
    from the total could never be placed, and Ray Train would wait for them forever."""
    import ray  # ray:

    if configured:
        return configured
    total = ray.cluster_resources().get("CPU", 1.0)  # ray:
    free = min(total, ray.available_resources().get("CPU", 0.0))  # ray:
    if free < num_workers:
        print(f"Only {free:g} of the cluster's {total:g} CPUs are free (other work, a Serve app for one, holds the "
              f"rest): the run's {num_workers} worker(s) start when 1 CPU each is free.", file=sys.stderr, flush=True)
        return 1.0
    return max(1.0, math.floor(free / num_workers))
