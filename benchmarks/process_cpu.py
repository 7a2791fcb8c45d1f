"""Where a phase's CPU goes: CPU seconds per process of this machine's Ray (and the benchmark's own), by role.

A throughput says how fast; this says who else used the cores meanwhile. Read from /proc (Linux), so it
costs nothing during the phase and is robust to a busy machine: CPU seconds are what a process used, not
what it waited for. Elsewhere (no /proc) the breakdown is empty and the figures still count.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

# The role of a process by what its command line holds: first match wins (Serve's replicas name themselves
# `ray::ServeReplica:<app>:<deployment>`, Ray Train's actors by their class).
ROLES = (
    ("ServeReplica", "serve replica"),
    ("ProxyActor", "serve proxy"),
    ("ServeController", "serve controller"),
    ("RayTrainWorker", "train worker"),
    ("TrainController", "train controller"),
    ("MapWorker", "data actor"),
    ("dashboard", "dashboard and agents"),
    ("DashboardAgent", "dashboard and agents"),
    ("RuntimeEnvAgent", "dashboard and agents"),
    ("log_monitor", "log monitor"),
    ("monitor.py", "autoscaler monitor"),
    ("ray::", "other ray actors"),
)

UNKNOWN = "other: exited"


def role_of(cmdline: str) -> str | None:
    """The role of a process of this machine's Ray from its command line; None for anything else."""
    if "ServeReplica" in cmdline:  # ray::ServeReplica:<app>:<deployment>[.method]: one role per deployment
        deployment = cmdline.split("ServeReplica:", 1)[1].split()[0].split(".")[0].split(":")[-1]
        return f"serve replica {deployment}"
    executable = Path(cmdline.split(" ", 1)[0]).name
    if executable in ("raylet", "gcs_server"):
        return {"raylet": "raylet", "gcs_server": "gcs"}[executable]
    if "default_worker.py" in cmdline:  # a worker before it names itself
        return "other ray actors"
    for needle, role in ROLES:
        if needle in cmdline and ("ray" in cmdline or needle.startswith("ray::")):
            return role
    return None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process (all its threads), or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _processes() -> dict[int, str]:
    """pid -> role of this process (`benchmark driver`) and of every process it started, directly or not: the
    benchmark's own local Ray (its GCS and raylet are the driver's children, the workers the raylet's); another
    program's Ray on the same machine is left out."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    me = os.getpid()
    parents = {int(entry.name): _parent_of(int(entry.name)) for entry in proc.iterdir() if entry.name.isdigit()}
    found = {me: "benchmark driver"}
    for pid in parents:
        ancestor, hops = parents.get(pid), 0
        while ancestor not in (None, 0, 1, me) and hops < 16:
            ancestor, hops = parents.get(ancestor), hops + 1
        if pid == me or ancestor != me:
            continue
        try:
            cmdline = (proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[pid] = role_of(cmdline) or (f"other: {Path(cmdline.split(' ', 1)[0]).name}"
                                                     if cmdline.strip() else UNKNOWN)
    return found


class CpuWindow:
    """CPU seconds per role while the block runs, as cores used on average (CPU seconds / wall seconds).

    Polled every `interval_s` in a thread, so a process that starts or ends inside the window (a Ray Train
    worker, a Ray Data actor) counts for what it used while it was seen.
    """

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.cores: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="cpu-window", daemon=True)
        self._started = 0.0

    def _sample(self, first: bool = False) -> None:
        for pid, role in _processes().items():
            cpu = _cpu_seconds(pid)
            if cpu is None:
                continue
            # A process first seen after the start counts from 0: it started inside the window.
            self.first.setdefault(pid, cpu if first else 0.0)
            known = self.last.get(pid, (None, 0.0))[0]
            # An exiting process's command line reads empty: it keeps the role it was seen with.
            self.last[pid] = (known if known and role == UNKNOWN else role, cpu)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> CpuWindow:
        self._sample(first=True)
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        wall_s = time.perf_counter() - self._started
        seconds: dict[str, float] = {}
        for pid, (role, cpu) in self.last.items():
            seconds[role] = seconds.get(role, 0.0) + max(cpu - self.first.get(pid, 0.0), 0.0)
        self.cores = {role: spent / wall_s for role, spent in sorted(seconds.items(), key=lambda item: -item[1])
                      if wall_s > 0}
        self.cores["wall_s"] = wall_s


def breakdown_text(cores: dict[str, float] | None, machine_cores: int) -> str:
    """One line: each role's share of the machine's cores, largest first (roles under 0.5 % left out)."""
    if not cores:
        return "not measured"
    parts = [f"{role} {100 * share / machine_cores:.1f} %" for role, share in cores.items()
             if role != "wall_s" and share / machine_cores >= 0.005]
    return ", ".join(parts) or "nothing above 0.5 %"
