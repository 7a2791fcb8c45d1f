"""Which registered model versions a server runs: `artifacts/serving.json`, beside the champion's best.pth.

The model registry (deepfake_platform/registry.py, `experiments/models.py`) writes it on every promote,
challenge and rollback; a running server reads it every second and switches without a restart; the server
writes it back only to withdraw a challenger that crossed a limit. It imports neither MLflow nor Ray, so
the Serve replicas read it cheaply.

    {
      "registered_model": "deepfake-detector",
      "champion":   {"version": 3, "file": "models/v3.pth", "sha256": "...", "run_id": "..."},
      "challenger": {"version": 4, "file": "models/v4.pth", "sha256": "...", "run_id": "...",
                     "mode": "shadow" | "canary" | null, "fraction": 0.25 | null} | null,
      "history": [1, 2, 3],                 champions in the order they answered (rollback pops the last)
      "withdrawn": {"version": 4, "reason": "...", "time": "..."} | null,
      "updated": "2026-12-05T12:00:00+00:00"
    }

`file` is relative to the state file's folder (so a copied or NFS-mounted output home still works); each
version's file is written once and never changed, so a replica that reads the state and then the file never
sees a half-switched model. `mode`/`fraction` null: the Serve config's `challenger` settings decide.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfake_platform.files import write_text_atomic

STATE_FILE = "serving.json"
MODES = ("shadow", "canary")


def state_path(artifacts: str | Path) -> Path:
    """The serving state file of an artifacts folder."""
    return Path(artifacts) / STATE_FILE


def now() -> str:
    """The time, as the state file writes it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Slot:
    """One role's model: its registry version, its file (absolute) and the file's SHA-256."""

    role: str
    version: int
    path: Path
    sha256: str
    run_id: str | None = None
    mode: str | None = None
    fraction: float | None = None

    def identity(self, name: str) -> dict[str, Any]:
        """What an answer says about the model that gave it."""
        return {"registered_model": name, "version": self.version, "role": self.role, "sha256": self.sha256}


def read_state(path: str | Path, *, strict: bool = True) -> dict[str, Any] | None:
    """The state file's content, or None when there is none (no registry in use: a plain checkpoint). A file
    that is not a JSON object raises ValueError, or with `strict` off (a server's replicas) reads as none."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        if strict:
            raise
        return None
    if not isinstance(state, dict):
        if strict:
            raise ValueError(f"{path} holds no JSON object")
        return None
    return state


def slot(state: dict[str, Any] | None, role: str, path: str | Path) -> Slot | None:
    """The `role` ("champion" or "challenger") of a state read from `path`, or None when the role is empty or
    its entry is malformed."""
    entry = (state or {}).get(role)
    if not isinstance(entry, dict) or not entry:
        return None
    try:
        return Slot(role=role, version=int(entry["version"]), path=(Path(path).parent / entry["file"]).resolve(),
                    sha256=str(entry["sha256"]), run_id=entry.get("run_id"), mode=entry.get("mode"),
                    fraction=entry.get("fraction"))
    except (KeyError, TypeError, ValueError):
        return None


def write_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write the state atomically (a reader sees the old or the new one, never half of either)."""
    return write_text_atomic(path, json.dumps({**state, "updated": now()}, indent=2) + "\n")


def withdraw(path: str | Path, version: int, reason: str) -> bool:
    """Take challenger `version` off the state with the reason (the server's automatic withdrawal); False
    when it is no longer the challenger (someone changed the state meanwhile)."""
    state = read_state(path, strict=False)
    entry = (state or {}).get("challenger")
    if not isinstance(entry, dict) or entry.get("version") != int(version):
        return False
    state["challenger"] = None
    state["withdrawn"] = {"version": int(version), "reason": reason, "time": now()}
    write_state(path, state)
    return True
