"""Checkpoints: plain tensors + metadata, written atomically, read with `weights_only=True`.

A checkpoint file alone rebuilds its model: it carries the detector's registry name and keyword
arguments next to the weights, the resolved config, the epoch, the validation AUC and the decision
threshold chosen on validation.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

REQUIRED_KEYS = ("model_state_dict", "epoch", "val_auc", "config", "detector")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, unsafe or incomplete."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write `payload` to `path` atomically: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def link_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Make `target` the same file as `source` (a hard link), atomically: no second 1 GB write."""
    source, target = Path(source), Path(target)
    staging = target.with_name(f".{target.name}.{os.getpid()}.link")
    staging.unlink(missing_ok=True)
    try:
        os.link(source, staging)
    except OSError:
        # File systems without hard links (some network mounts): copy through the atomic writer.
        return save_checkpoint(torch.load(source, map_location="cpu", weights_only=True), target)
    os.replace(staging, target)
    return target


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a pickle payload, a missing file or missing keys raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist. Train one with `python experiments/reproduce_baseline.py` "
            "(it writes checkpoints/<run>/best.pth and promotes artifacts/best.pth), or pass the path of an "
            "existing .pth file."
        )
    try:
        # mmap: reading the config of a 1 GB checkpoint should not load all of it into memory.
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} was refused: it is not a plain-tensor checkpoint (it holds Python objects that would "
            f"run code when unpickled, or it is corrupt). Only load checkpoints this platform wrote. ({err})"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} could not be read as a checkpoint (truncated or not a .pth): {err}") from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict.")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: it was not written by this platform, so the model "
            "cannot be rebuilt from it."
        )
    return payload


def build_model_from_checkpoint(payload: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the detector a checkpoint describes and load its weights (no pretrained download)."""
    from models import create_detector

    detector = payload["detector"]
    kwargs = dict(detector.get("kwargs", {}))
    # The weights come from the checkpoint: never look for ImageNet files or caches again.
    for key in [k for k in kwargs if k.endswith("pretrained")]:
        kwargs[key] = False
    for key in [k for k in kwargs if k.endswith("weights")]:
        kwargs[key] = None
    kwargs["pretrained_policy"] = "off"
    model = create_detector(detector["name"], **kwargs)
    model.load_state_dict(payload["model_state_dict"])
    return model


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_filename(epoch: int, val_auc: float) -> str:
    """The per-epoch file name, e.g. epoch_003_auc_0.9932.pth."""
    return f"epoch_{epoch:03d}_auc_{val_auc:.4f}.pth"
