"""Finding and killing the processes a test started, by walking /proc (Linux), without psutil."""

from __future__ import annotations

import os
import signal
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
