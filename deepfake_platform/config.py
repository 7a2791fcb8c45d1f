"""One typed configuration for every job: dataclasses loaded from YAML, overridden with `key=value`.

Unknown keys and values of the wrong type are errors that name the key and the file, so a typo in a
config never silently falls back to a default. The resolved config is saved with every run and inside
every checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A config file or override that cannot be used as written."""


@dataclass
class ModelConfig:
    """Which detector to build and how to initialise it."""

    name: str = "hybrid_resnet18_vit_b16"
    # auto: use ImageNet weights when found, else warn and start from random; required: fail; off: never.
    pretrained: str = "auto"
    freeze: str = "none"
    # Extra keyword arguments of the detector, e.g. cnn_weights / vit_weights (local weight files).
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the images are and how they are fed."""

    # Empty: the embedded data set named by `embedded`, built on first use.
    root: str = ""
    # full: the reference recipe's set (data/embedded); smoke: a few tiny images (data/smoke).
    embedded: str = "full"
    # 0: the detector's own default input size.
    image_size: int = 0
    loader_workers: int = 0


@dataclass
class TrainConfig:
    """The optimisation recipe."""

    epochs: int = 5
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    # bf16: autocast on CPUs with AMX / GPUs; fp32: the strict reference arithmetic.
    precision: str = "bf16"
    channels_last: bool = True
    compile: bool = False
    seed: int = 42
    # Batches per epoch cap, 0 for all (smoke runs and benchmarks).
    max_steps_per_epoch: int = 0


@dataclass
class ScalingConfig:
    """How the work is spread over Ray."""

    num_workers: int = 1
    # 0: split the node's CPUs evenly between the workers.
    cpus_per_worker: float = 0.0
    use_gpu: bool = False
    # Worker-group restarts from the latest checkpoint before the run is declared failed.
    max_failures: int = 2


@dataclass
class OutputConfig:
    """Where a run writes what it produces."""

    checkpoints_dir: str = "checkpoints"
    runs_dir: str = "runs"
    artifacts_dir: str = "artifacts"
    # Ray Train's own storage (its checkpoint copies and state); a shared path on a cluster.
    storage_path: str = "ray_results"
    promote: bool = True


@dataclass
class ExperimentConfig:
    """Everything one training run needs."""

    name: str = "baseline"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML-, JSON- and weights_only-checkpoint-safe)."""
        return dataclasses.asdict(self)

    def validate(self) -> ExperimentConfig:
        """Check values whose type alone does not make them valid; return self."""
        checks = [
            (self.model.pretrained in {"auto", "required", "off"}, "model.pretrained", "auto, required or off"),
            (self.data.embedded in {"full", "smoke"}, "data.embedded", "full or smoke"),
            (self.train.precision in {"bf16", "fp32"}, "train.precision", "bf16 or fp32"),
            (self.train.epochs >= 1, "train.epochs", "at least 1"),
            (self.train.batch_size >= 1, "train.batch_size", "at least 1"),
            (self.train.lr > 0, "train.lr", "positive"),
            (self.scaling.num_workers >= 1, "scaling.num_workers", "at least 1"),
            (self.scaling.cpus_per_worker >= 0, "scaling.cpus_per_worker", "0 (auto) or positive"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"{key} must be {expected}, got {_get(self, key)!r}.")
        return self


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Return `value` as `annotation`, or raise ConfigError naming the key and the file."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {key} has the wrong type: {value!r} is not {annotation}.")
    if annotation is Any:
        return value
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}.")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, source, prefix=key + ".")
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is type(None) and value is None:
        return None
    raise ConfigError(
        f"{source}: {key} must be {getattr(annotation, '__name__', annotation)}, got {value!r} "
        f"({type(value).__name__})."
    )


def build_dataclass(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking keys and types; errors name the key and `source`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the top level'} must be a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; known keys here: {', '.join(sorted(known))}."
        )
    values = {name: _coerce(value, hints[name], prefix + name, source) for name, value in data.items()}
    return cls(**values)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Build and validate an ExperimentConfig from a nested dict."""
    return build_dataclass(ExperimentConfig, data, source).validate()


def parse_override(text: str) -> tuple[str, Any]:
    """Split `key.sub=value`; the value is read as YAML (so 1e-4, true, [1, 2] have their types)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.lr=3e-4.")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    # YAML reads 1e-4 as a string (it wants 1.0e-4); numbers are what users mean.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `key=value` override applied."""
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section.")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config (or the defaults when `path` is None) and apply `key=value` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; see experiments/configs/ for examples.")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (model, data, train, ...).")
        data = loaded or {}
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    return config_from_dict(data, source)


def save_config(config: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path
