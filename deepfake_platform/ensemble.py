"""Ensembles at run time: the combiners, the ensemble spec, and loading any model file as a predictor.

Three combiners, pure functions over an (images x members) matrix of fake probabilities: `mean`,
`weighted` (weights from the config) and `stacking` (a logistic regression on the members' logits,
fitted on validation by `orchestration.ensemble_build` and stored as plain coef/intercept lists).
An ensemble spec is a checkpoint of kind `ensemble`: its members' files with their SHA-256, the
combiner and the validation-chosen threshold. `load_predictor` opens any model file the platform
writes (a detector checkpoint, a frequency detector, an ensemble spec) behind one interface:
`predict_images(images) -> probabilities` and `info`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from deepfake_platform.calibration import Calibration
from deepfake_platform.checkpoints import (
    Checkpoint,
    CheckpointError,
    DetectorCheckpoint,
    EnsembleCheckpoint,
    FrequencyCheckpoint,
    file_sha256,
    read_checkpoint,
    write_checkpoint,
)
from deepfake_platform.predict import DEFAULT_PRECISION, FrequencyPredictor, ModelInfo, Predictor

COMBINERS = ("mean", "weighted", "stacking")
# Probabilities are clipped this far from 0 and 1 before taking logits, so a saturated member stays finite.
_EPS = 1e-6


def logit(probabilities: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), with p clipped away from 0 and 1."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _matrix(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"member probabilities must be a 2-D (images, members) array, got shape {p.shape}.")
    return p


def mean_combine(probabilities: np.ndarray) -> np.ndarray:
    """The mean of the members' fake probabilities, per image (rows: images, columns: members)."""
    return _matrix(probabilities).mean(axis=1)


def weighted_combine(probabilities: np.ndarray, weights: list[float]) -> np.ndarray:
    """The weighted mean of the members' fake probabilities; weights are normalised to sum to 1."""
    p = _matrix(probabilities)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (p.shape[1],):
        raise ValueError(f"{w.size} weights for {p.shape[1]} members: give one weight per member.")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"ensemble weights must be non-negative with a positive sum, got {w.tolist()}.")
    return p @ (w / w.sum())


def stacking_combine(probabilities: np.ndarray, coef: list[float], intercept: float) -> np.ndarray:
    """A fitted logistic regression over the members' logits: sigmoid(logit(p) @ coef + intercept)."""
    p = _matrix(probabilities)
    c = np.asarray(coef, dtype=np.float64)
    if c.shape != (p.shape[1],):
        raise ValueError(f"{c.size} stacking coefficients for {p.shape[1]} members.")
    z = logit(p) @ c + float(intercept)
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Combiner:
    """How member probabilities become the ensemble's: the kind plus its fitted or configured parameters."""

    kind: str = "mean"
    weights: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in COMBINERS:
            raise ValueError(f"unknown combiner {self.kind!r}; choose one of {', '.join(COMBINERS)}.")

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """The ensemble's fake probability for each row of member probabilities."""
        if self.kind == "weighted":
            return weighted_combine(probabilities, self.weights)
        if self.kind == "stacking":
            return stacking_combine(probabilities, self.coef, self.intercept)
        return mean_combine(probabilities)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and floats: storable in a weights_only checkpoint and in JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Combiner:
        """The inverse of to_dict."""
        return cls(kind=str(data["kind"]), weights=[float(w) for w in data.get("weights", [])],
                   coef=[float(c) for c in data.get("coef", [])], intercept=float(data.get("intercept", 0.0)))


# ---- members -------------------------------------------------------------------------------------------


class Member(Protocol):
    """What an ensemble needs from a detector: its identity and fake probabilities for PIL images."""

    info: ModelInfo
    faces: dict[str, Any]
    calibration: Calibration  # how its probabilities relate to its raw logits (the identity when it has none)

    def predict_images(self, images: list[Image.Image]) -> np.ndarray: ...


def safe_name(text: str) -> str:
    """A member name usable as a Serve deployment name and a table column: letters, digits, _ and -."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "member"


def load_member(path: str | Path, precision: str = DEFAULT_PRECISION, device: str = "cpu", *, record: Any = None) -> Member:
    """A single detector: a platform checkpoint (Predictor) or a saved frequency detector."""
    record = record if record is not None else read_checkpoint(path)
    if isinstance(record, FrequencyCheckpoint):
        return FrequencyPredictor(record, path=path)
    if isinstance(record, DetectorCheckpoint):
        return Predictor(record, device=device, precision=precision, path=path)
    raise CheckpointError(f"{path} is an ensemble spec, not a single detector: deploy or score it as a whole.")


def model_faces(records: Iterable[Checkpoint]) -> dict[str, Any]:
    """The face preset a model was trained with, from its detectors' records (one detector, or an ensemble's
    members, which share one preset: the build checks it); empty for a model of whole pictures."""
    return next((dict(record.faces) for record in records if getattr(record, "faces", None)), {})


def save_frequency_member(detector: Any, path: str | Path, val_threshold: float, val_auc: float,
                          val_scores: dict[str, list[float]] | None = None) -> Path:
    """Save a fitted FrequencyDetector as a weights_only-loadable member file."""
    return write_checkpoint(FrequencyCheckpoint(state=detector.to_state(), val_threshold=float(val_threshold),
                                                val_auc=float(val_auc), val_scores=val_scores or {}), path)


# ---- the ensemble spec ---------------------------------------------------------------------------------


@dataclass
class MemberSpec:
    """One member of a built ensemble: a name, its file and the file's SHA-256 when the ensemble was fitted."""

    name: str
    path: str
    sha256: str


@dataclass
class EnsembleSpec:
    """A built ensemble: members, combiner, the validation-chosen threshold and validation AUC."""

    name: str
    members: list[MemberSpec]
    combiner: Combiner
    threshold: float
    val_auc: float
    val_scores: dict[str, list[float]] = field(default_factory=dict)
    operating_points: dict[str, dict[str, float]] = field(default_factory=dict)

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """The combiner applied to member probabilities (columns in member order)."""
        return self.combiner.apply(probabilities)


def save_ensemble(spec: EnsembleSpec, path: str | Path) -> Path:
    """Write the spec as a weights_only-loadable checkpoint; member paths are stored relative to its folder."""
    path = Path(path).resolve()
    members = [{"name": m.name, "path": os.path.relpath(Path(m.path).resolve(), path.parent), "sha256": m.sha256}
               for m in spec.members]
    return write_checkpoint(EnsembleCheckpoint(name=spec.name, members=members, combiner=spec.combiner.to_dict(),
                                               threshold=float(spec.threshold), val_auc=float(spec.val_auc),
                                               val_scores=spec.val_scores,
                                               operating_points=spec.operating_points), path)


def load_ensemble(path: str | Path) -> EnsembleSpec:
    """Read an ensemble spec and check that every member file is there, unchanged since it was fitted."""
    path = Path(path).resolve()
    if not path.is_file():
        raise CheckpointError(
            f"ensemble spec {path} does not exist. Build one with "
            "`python experiments/build_ensemble.py --config experiments/configs/ensemble.yaml`."
        )
    record = read_checkpoint(path, EnsembleCheckpoint)
    members = []
    for entry, member_path in zip(record.members, member_paths(path, record), strict=True):
        if not member_path.is_file():
            raise CheckpointError(
                f"ensemble member {entry['name']} ({member_path}) is missing; restore it or rebuild the ensemble "
                "with experiments/build_ensemble.py."
            )
        if file_sha256(member_path) != entry["sha256"]:
            raise CheckpointError(
                f"ensemble member {entry['name']} ({member_path}) changed since the ensemble was fitted; its "
                "combiner and threshold no longer apply. Rebuild with experiments/build_ensemble.py."
            )
        members.append(MemberSpec(name=entry["name"], path=str(member_path), sha256=entry["sha256"]))
    return EnsembleSpec(name=record.name, members=members, combiner=Combiner.from_dict(record.combiner),
                        threshold=record.threshold, val_auc=record.val_auc, val_scores=record.val_scores,
                        operating_points=record.operating_points)


def member_paths(path: str | Path, record: EnsembleCheckpoint) -> list[Path]:
    """Where an ensemble spec's member files are (stored relative to the spec's folder)."""
    folder = Path(path).resolve().parent
    return [(folder / entry["path"]).resolve() for entry in record.members]


def member_records(path: str | Path, record: Checkpoint) -> list[Checkpoint]:
    """The detector records a model file is made of: its own, or an ensemble's members' (read, not checked:
    `load_ensemble` checks them)."""
    if isinstance(record, EnsembleCheckpoint):
        return [read_checkpoint(member) for member in member_paths(path, record)]
    return [record]


class EnsemblePredictor:
    """An ensemble spec with its members loaded: member probabilities, combined."""

    def __init__(self, path: str | Path, precision: str = DEFAULT_PRECISION, device: str = "cpu"):
        self.spec = load_ensemble(path)
        self.record = read_checkpoint(path, EnsembleCheckpoint)
        self.members = {m.name: load_member(m.path, precision, device) for m in self.spec.members}
        self.faces: dict[str, Any] = model_faces(member.record for member in self.members.values())
        # Its members' probabilities are calibrated; the combined one is read as it comes.
        self.calibration = Calibration()
        self.info = ModelInfo(name=self.spec.name, checkpoint=Path(path).name, sha256=file_sha256(path),
                              threshold=self.record.decision_threshold, image_size=0, val_auc=self.spec.val_auc,
                              epoch=0)

    def predict_members(self, images: list[Image.Image]) -> np.ndarray:
        """(images x members) fake probabilities, columns in member order."""
        if not images:
            return np.zeros((0, len(self.members)))
        return np.stack([member.predict_images(images) for member in self.members.values()], axis=1)

    def predict_images(self, images: list[Image.Image]) -> np.ndarray:
        """The ensemble's fake probabilities for RGB PIL images."""
        if not images:
            return np.zeros(0, dtype=np.float32)
        return self.spec.apply(self.predict_members(images)).astype(np.float32)


def load_predictor(path: str | Path, precision: str = DEFAULT_PRECISION, device: str = "cpu") -> Member:
    """Any model file the platform writes, ready to score images: a checkpoint, a frequency detector or an ensemble."""
    record = read_checkpoint(path)
    if isinstance(record, EnsembleCheckpoint):
        return EnsemblePredictor(path, precision, device)
    return load_member(path, precision, device, record=record)
