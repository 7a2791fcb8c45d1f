"""Where a job writes: the output home, a run's folders, Ray's storage.

Outputs go under the output home: `--output-root`, else `$DEEPFAKE_HOME`, else the current directory
(under `ray job submit`, whose working directory is a temporary copy that vanishes with the job,
`~/deepfake-platform`). Every path is made absolute here, so Ray workers, whose working directory
differs, write where the user looks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfake_platform.config import ExperimentConfig
from deepfake_platform.files import write_text_atomic

HOME_ENV = "DEEPFAKE_HOME"
# Beside a run's checkpoints when it stopped for a reason that repeats (diverged, bad data): for the
# launcher's sentence and the sweep table.
STATUS_FILE = "run_status.json"
JOB_HOME = Path("~/deepfake-platform")


def in_ray_job() -> bool:
    """Whether this process is a `ray job submit` entrypoint (its working dir is a temporary copy)."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def output_home(explicit: str | None = None) -> Path:
    """--output-root, else $DEEPFAKE_HOME, else ~/deepfake-platform under a Ray job, else the current directory."""
    chosen = explicit or os.environ.get(HOME_ENV)
    if chosen:
        return Path(chosen).expanduser().resolve()
    return JOB_HOME.expanduser().resolve() if in_ray_job() else Path.cwd().resolve()


def is_uri(path: str) -> bool:
    """Whether a storage path is a URI (s3://, gs://, ...) rather than a local or NFS path."""
    return "://" in path


def join_storage(storage: str, *parts: str) -> str:
    """Path parts joined onto a local path or a URI."""
    return "/".join([storage.rstrip("/"), *parts])


def anchor_outputs(config: ExperimentConfig, home: Path, storage: str | None = None) -> ExperimentConfig:
    """A copy of `config` whose output paths are absolute under `home` (Ray storage: `storage` if given)."""
    out = config.output
    chosen = storage or out.storage_path
    anchored = out.model_copy(update={
        "checkpoints_dir": str(home / Path(out.checkpoints_dir).expanduser()),
        "runs_dir": str(home / Path(out.runs_dir).expanduser()),
        "artifacts_dir": str(home / Path(out.artifacts_dir).expanduser()),
        "storage_path": chosen if is_uri(chosen) else str(home / Path(chosen).expanduser()),
    })
    return config.model_copy(deep=True, update={"output": anchored})


@dataclass
class RunPaths:
    """Where one run writes: checkpoints/<run>, runs/<run> (report + TensorBoard), artifacts/, Ray's storage."""

    checkpoints: Path
    run_dir: Path
    artifacts: Path
    storage: str

    @classmethod
    def for_config(cls, config: ExperimentConfig) -> RunPaths:
        """The run's folders from its (anchored) config."""
        out = config.output

        def absolute(path: str) -> Path:
            return Path(path).expanduser().resolve()

        storage = out.storage_path if is_uri(out.storage_path) else str(absolute(out.storage_path))
        return cls(checkpoints=absolute(out.checkpoints_dir) / config.name,
                   run_dir=absolute(out.runs_dir) / config.name,
                   artifacts=absolute(out.artifacts_dir), storage=storage)

    def to_dict(self) -> dict[str, str]:
        """Strings, for a Ray loop config."""
        return {key: str(value) for key, value in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> RunPaths:
        """The inverse of to_dict."""
        return cls(checkpoints=Path(data["checkpoints"]), run_dir=Path(data["run_dir"]),
                   artifacts=Path(data["artifacts"]), storage=data["storage"])


def write_status(paths: RunPaths, status: dict[str, Any]) -> None:
    """Record how a run ended (diverged, error) beside its checkpoints."""
    write_text_atomic(paths.checkpoints / STATUS_FILE, json.dumps(status, indent=2))


def clear_status(paths: RunPaths) -> None:
    """Forget how an earlier attempt of this run ended (it is running again)."""
    (paths.checkpoints / STATUS_FILE).unlink(missing_ok=True)


def read_status(checkpoints_dir: Path) -> dict[str, Any] | None:
    """The status a stopped run left, or None for a run that ended normally (or is still running)."""
    path = Path(checkpoints_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
