"""Checkpoints: one typed record per kind, written by one function and read by one loader.

Three kinds of `.pth` file exist: a detector checkpoint (weights of a registered detector plus what
it was trained with and how well it did), a fitted frequency detector, and an ensemble spec. Each is
a plain dict of tensors, numbers, strings, lists and dicts, written atomically by `write_checkpoint`
and read by `read_checkpoint` with `torch.load(..., weights_only=True)`: a `.pth` from a stranger
cannot run code. A detector checkpoint alone rebuilds its model and carries what reports need
(parameter counts, pretrained status, the validation scores), so nothing rebuilds a model to
describe it. Files of the first format (no `format` key) still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from deepfake_platform.config import ConfigError, ExperimentConfig, config_from_dict
from deepfake_platform.errors import UserError
from deepfake_platform.files import link_or_copy, write_atomic

FORMAT_VERSION = 2


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable, unsafe, of the wrong kind or incomplete."""


@dataclass
class DetectorCheckpoint:
    """A trained detector: its weights, how to rebuild it, what it was trained with and how it scored."""

    kind: ClassVar[str] = "detector"

    detector: str  # the registry name
    detector_kwargs: dict[str, Any]
    model_state_dict: dict[str, torch.Tensor]
    epoch: int
    val_auc: float
    val_threshold: float
    config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    pretrained_status: dict[str, str] = field(default_factory=dict)
    # models.parameter_table(): total, trainable, frozen and per module, counted when the model was built.
    parameters: dict[str, Any] = field(default_factory=dict)
    # The validation fake probabilities of each class, for drift monitoring: {"real": [...], "fake": [...]}.
    val_scores: dict[str, list[float]] = field(default_factory=dict)
    # The face preset of the data it was trained on (empty: whole images).
    faces: dict[str, Any] = field(default_factory=dict)
    # The arithmetic the weights were trained and validated in (train.precision resolved on the machine).
    precision: str = ""
    # Video-level validation AUC and threshold, when the validation crops knew their source videos.
    video: dict[str, float] = field(default_factory=dict)
    # The calibration fitted on validation (calibration.Calibration.to_dict()); empty: the identity, a plain sigmoid.
    calibration: dict[str, Any] = field(default_factory=dict)
    # Named thresholds on the calibrated scale (calibration.OPERATING_POINTS), chosen on validation: per name its
    # threshold, video_threshold when validation had videos, target rate and the rates reached on validation.
    operating_points: dict[str, dict[str, float]] = field(default_factory=dict)
    optimizer_state_dict: dict[str, Any] | None = None

    def without_optimizer(self) -> DetectorCheckpoint:
        """The same record without the optimizer state (what is promoted and served)."""
        return dataclasses.replace(self, optimizer_state_dict=None)

    @property
    def decision_threshold(self) -> float:
        """The threshold a picture's fake probability is labelled at, chosen on validation."""
        return float(self.val_threshold)

    @property
    def video_threshold(self) -> float:
        """The threshold a video's mean probability is labelled at: the one chosen on validation videos when
        training had them, else the picture threshold."""
        return float(self.video.get("threshold", self.val_threshold))

    @property
    def experiment_config(self) -> ExperimentConfig:
        """The typed config the detector was trained with."""
        try:
            return config_from_dict(self.config, "the checkpoint's config")
        except ConfigError as err:
            raise CheckpointError(f"{err} (the checkpoint was written by another version of this platform; "
                                  "fine-tune or retrain it with this one).") from err

    @property
    def trained_precision(self) -> str:
        """The arithmetic the weights were trained and validated in: the record's, else (first-format files)
        the config's train.precision."""
        return self.precision or self.experiment_config.train.precision

    @property
    def image_size(self) -> int:
        """The side, in pixels, of the square pictures the detector takes (see `input_size`)."""
        return input_size(self.experiment_config, _rebuild(self, "meta"))


class _PictureThresholdForVideos:
    """For records without a video threshold of their own: a video's mean is labelled at the picture one."""

    @property
    def video_threshold(self) -> float:
        """The threshold a video's mean probability is labelled at."""
        return self.decision_threshold


@dataclass
class FrequencyCheckpoint(_PictureThresholdForVideos):
    """A fitted frequency-domain detector (models/frequency.py) and its validation threshold."""

    kind: ClassVar[str] = "frequency"

    state: dict[str, Any]
    val_threshold: float
    val_auc: float
    val_scores: dict[str, list[float]] = field(default_factory=dict)

    @property
    def decision_threshold(self) -> float:
        """The threshold a fake probability is labelled at, chosen on validation."""
        return float(self.val_threshold)


@dataclass
class EnsembleCheckpoint(_PictureThresholdForVideos):
    """An ensemble spec: member files with their SHA-256, the combiner, the validation threshold and AUC."""

    kind: ClassVar[str] = "ensemble"

    name: str
    members: list[dict[str, str]]  # {"name", "path" (relative to the spec's folder), "sha256"}
    combiner: dict[str, Any]
    threshold: float
    val_auc: float
    # The ensemble's validation fake probabilities of each class, for drift monitoring.
    val_scores: dict[str, list[float]] = field(default_factory=dict)
    # Named thresholds chosen on the ensemble's validation probabilities (see DetectorCheckpoint).
    operating_points: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def decision_threshold(self) -> float:
        """The threshold the combined fake probability is labelled at, chosen on validation."""
        return float(self.threshold)


Checkpoint = DetectorCheckpoint | FrequencyCheckpoint | EnsembleCheckpoint
KINDS: dict[str, type] = {cls.kind: cls for cls in (DetectorCheckpoint, FrequencyCheckpoint, EnsembleCheckpoint)}


# ---- writing ------------------------------------------------------------------------------------------


def to_payload(record: Checkpoint) -> dict[str, Any]:
    """The plain dict stored on disk. Detector files keep the first format's top-level keys
    (`model_state_dict`, `val_threshold`, `detector`...), so `torch.load(path, weights_only=True)` reads
    them as before."""
    payload: dict[str, Any] = {"format": FORMAT_VERSION, "kind": record.kind}
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    if isinstance(record, DetectorCheckpoint):
        payload["detector"] = {"name": values.pop("detector"), "kwargs": values.pop("detector_kwargs")}
        if values["optimizer_state_dict"] is None:
            values.pop("optimizer_state_dict")
    payload.update(values)
    return payload


def write_checkpoint(record: Checkpoint, path: str | Path) -> Path:
    """Write `record` to `path` atomically: a crash or a Ctrl-C mid-write leaves the previous file intact."""
    return _write_atomic(to_payload(record), Path(path))


def _write_atomic(payload: dict[str, Any], path: Path) -> Path:
    return write_atomic(path, lambda handle: torch.save(payload, handle))


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in `folder` (never a finished checkpoint)."""
    removed = []
    for tmp in Path(folder).glob(".*.pth.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def link_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Make `target` the same checkpoint as `source`, atomically: a hard link where possible (no second
    1 GB write), else a copy (another filesystem, or one without hard links)."""
    return link_or_copy(source, target)


# ---- reading ------------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path, expect: type | None = None) -> Checkpoint:
    """The record in `path`, loaded with weights_only=True; `expect` names the kind the caller needs.

    Every problem is a CheckpointError sentence: a missing file, a pickle payload, a truncated or
    foreign file, a record of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist. Train one with `python experiments/reproduce_baseline.py` "
            "(it writes checkpoints/<run>/best.pth and promotes artifacts/best.pth), or pass the path of an "
            "existing .pth file."
        )
    try:
        # mmap: reading the metadata of a 1 GB checkpoint does not read all of it into memory.
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} was refused: it is not a plain-tensor checkpoint (it holds Python objects that would "
            f"run code when unpickled, or it is corrupt). Only load checkpoints this platform wrote. ({err})"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} could not be read as a checkpoint (truncated or not a .pth): {err}") from err
    record = from_payload(payload, path)
    if expect is not None and not isinstance(record, expect):
        raise CheckpointError(
            f"{path} is a {record.kind} file, not a {expect.kind} file"
            + (": deploy or score an ensemble spec as a whole." if record.kind == "ensemble" else ".")
        )
    return record


def from_payload(payload: Any, path: str | Path = "<payload>") -> Checkpoint:
    """The typed record of a loaded payload (either format); missing keys are a CheckpointError."""
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict.")
    kind = str(payload.get("kind", "detector"))  # first-format detector files had no kind
    if kind == "torch":
        kind = "detector"
    cls = KINDS.get(kind)
    if cls is None:
        raise CheckpointError(f"{path} is a {kind!r} file; this platform knows {', '.join(KINDS)} files.")
    data = {key: value for key, value in payload.items() if key not in ("format", "kind")}
    if cls is DetectorCheckpoint:
        detector = data.pop("detector", None)
        if not isinstance(detector, dict) or "name" not in detector:
            raise CheckpointError(
                f"{path} lacks detector: it was not written by this platform, so the model cannot be rebuilt."
            )
        data["detector"], data["detector_kwargs"] = str(detector["name"]), dict(detector.get("kwargs", {}))
        data.setdefault("val_threshold", 0.5)
    names = {f.name for f in dataclasses.fields(cls)}
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: it was not written by this platform (or is damaged), so it "
            "cannot be used."
        )
    return cls(**{key: value for key, value in data.items() if key in names})


# ---- what a record says -----------------------------------------------------------------------------


def operating_thresholds(record: Checkpoint, name: str = "balanced") -> tuple[float, float]:
    """(picture threshold, video threshold) of the operating point `name` the record chose on validation:
    `balanced` is the decision threshold (every record has it); the others need a record that stores them."""
    from deepfake_platform.calibration import OPERATING_POINTS

    if name not in OPERATING_POINTS:
        raise CheckpointError(f"unknown operating point {name!r}; choose one of {', '.join(OPERATING_POINTS)}.")
    if name == "balanced":
        return record.decision_threshold, record.video_threshold
    point = (getattr(record, "operating_points", None) or {}).get(name)
    if point is None:
        raise CheckpointError(
            f"this {record.kind} file records no {name} operating point (it predates them, or its validation split "
            "held one class); use the balanced one, or calibrate it with `python experiments/evaluate.py "
            "--checkpoint FILE --data DIR --calibrate OUT.pth`."
        )
    return float(point["threshold"]), float(point.get("video_threshold", point["threshold"]))




def build_model(record: DetectorCheckpoint, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the detector a checkpoint describes and load its weights (never looks for ImageNet weights)."""
    model = _rebuild(record, device)
    model.load_state_dict(record.model_state_dict)
    return model


def _rebuild(record: DetectorCheckpoint, device: str | torch.device) -> torch.nn.Module:
    from models import create_detector

    kwargs = dict(record.detector_kwargs)
    # The weights come from the checkpoint: never look for ImageNet files or caches again.
    for key in [k for k in kwargs if k.endswith("pretrained")]:
        kwargs[key] = False
    for key in [k for k in kwargs if k.endswith("weights")]:
        kwargs[key] = None
    kwargs["pretrained_policy"] = "off"
    with torch.device(device):
        return create_detector(record.detector, **kwargs)


def input_size(config: ExperimentConfig, model: torch.nn.Module) -> int:
    """The side, in pixels, of the square pictures a detector takes: the config's data.image_size when set,
    else the detector's own default. Training, the predict path and batch scoring all ask here."""
    return int(config.data.image_size or model.default_image_size)


def describe_parameters(record: DetectorCheckpoint) -> dict[str, Any]:
    """The record's parameter table (total, trainable, frozen, per module); for a first-format file, counted
    on a weightless (meta-device) rebuild of its model, which costs no memory."""
    from models import parameter_table

    if record.parameters:
        return dict(record.parameters)
    return parameter_table(_rebuild(record, "meta"))


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_filename(epoch: int, val_auc: float) -> str:
    """The per-epoch file name, e.g. epoch_003_auc_0.9932.pth (auc_nan when undefined)."""
    return f"epoch_{epoch:03d}_auc_{'nan' if math.isnan(val_auc) else f'{val_auc:.4f}'}.pth"


def epoch_checkpoints(folder: str | Path, *, epoch: int | None = None) -> list[Path]:
    """A run's per-epoch checkpoint files in epoch order (only `epoch`'s when given): the one place that knows
    the `epoch_XXX_auc_Y.pth` pattern besides checkpoint_filename."""
    pattern = f"epoch_{epoch:03d}_auc_*.pth" if epoch is not None else "epoch_*_auc_*.pth"
    return sorted(Path(folder).glob(pattern))
