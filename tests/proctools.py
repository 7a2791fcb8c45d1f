"""Finding and killing the processes a test started, by walking /proc (Linux), without psutil."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def _parent_map() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Field 4 of /proc/PID/stat is the parent; the command name (field 2) may hold spaces.
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return parents


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...)."""
    parents = _parent_map()
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found


def command_line(pid: int) -> str:
    """The process title (Ray renames its workers, e.g. `ray::RayTrainWorker...`), or '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def find_descendant(pid: int, marker: str) -> int | None:
    """The first process below `pid` whose command line contains `marker`."""
    for child in descendants(pid):
        if marker in command_line(child):
            return child
    return None


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything below it (all started by the test)."""
    for target in [*descendants(pid), pid]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def interrupt(job: subprocess.Popen, *, twice: bool = False) -> list[int]:
    """Ctrl-C in a terminal: SIGINT to `job`'s whole process group (started with start_new_session=True), and
    with `twice` an impatient second one. Asserts that the job ends with status 130 within 20 s and that every
    process that was below it is gone 10 s later; returns those processes."""
    processes = descendants(job.pid)
    os.killpg(job.pid, signal.SIGINT)
    if twice:
        time.sleep(0.3)
        os.killpg(job.pid, signal.SIGINT)
    stopped = time.monotonic()
    assert job.wait(timeout=60) == 130
    assert time.monotonic() - stopped < 20, "the command took more than 20 s to stop"
    deadline = time.monotonic() + 10
    while alive := [pid for pid in processes if os.path.exists(f"/proc/{pid}")]:
        assert time.monotonic() < deadline, f"processes {alive} outlived the stopped command by more than 10 s"
        time.sleep(0.2)
    return processes


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (a temp dir only one test's Ray uses), and their children."""
    found = [int(entry.name) for entry in Path("/proc").iterdir()
             if entry.name.isdigit() and text in command_line(int(entry.name))]
    return sorted({pid for root in found for pid in [root, *descendants(root)]})


def stop_processes(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM `pids` (all started by the test), then SIGKILL what is left after `grace_s` seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell with the venv active: no RAY_* variables (Ray's defaults apply)."""
    import sys

    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **extra}


def wait_until(condition, process, log: Path, timeout_s: float, interval_s: float = 0.2) -> None:
    """Poll `condition()` until it holds; fail with the end of `log` if `process` exits or `timeout_s` passes."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(interval_s)
