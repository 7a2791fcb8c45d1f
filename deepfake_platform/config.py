"""One config system for every job: pydantic models loaded from YAML, overridden with `key=value`.

Experiment, sweep, ensemble and Serve-app configs are all `Section` models: unknown keys and values of
the wrong type are `ConfigError`s naming the key and the file, lists and nested records are typed like
everything else, and each default lives in its model. `load_yaml` is the one YAML reader. The resolved
experiment config is saved with every run and inside every checkpoint.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deepfake_platform.errors import UserError
from deepfake_platform.files import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used as written."""


class Section(BaseModel):
    """A typed config record: unknown keys are errors, types are strict, assignments are checked."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML-, JSON- and weights_only-checkpoint-safe)."""
        return self.model_dump(mode="python")


SectionT = TypeVar("SectionT", bound=Section)


# ---- the experiment ---------------------------------------------------------------------------------


class ModelConfig(Section):
    """Which detector to build and how to initialise it."""

    name: str = "hybrid_resnet18_vit_b16"
    # auto: ImageNet weights when found, else a loud warning and random initialisation; required: fail; off: never.
    pretrained: Literal["auto", "required", "off"] = "auto"
    # none | cnn | vit | backbones | lastK (models/freezing.py)
    freeze: str = "none"
    # Extra keyword arguments of the detector, e.g. cnn_weights / vit_weights (local weight files).
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DataConfig(Section):
    """Where the images are and how they are fed."""

    # Empty: the embedded data set named by `embedded`, built on first use.
    root: str = ""
    # full: the reference recipe's set (data/embedded); smoke: a few tiny images (data/smoke).
    embedded: Literal["full", "smoke"] = "full"
    # 0: the detector's own default input size.
    image_size: int = Field(0, ge=0)
    loader_workers: int = Field(0, ge=0)
    # Self-Blended Images on the fly: every real training image also yields a fresh pseudo-fake each epoch.
    self_blend: bool = False


class TrainConfig(Section):
    """The optimisation recipe."""

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # auto: bf16 autocast where the hardware runs bf16 natively (AVX-512 BF16, AMX, recent GPUs), else fp32;
    # bf16 forces it (emulated, and many times slower, on other CPUs); fp32: the strict reference arithmetic.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    compile: bool = False
    seed: int = 42
    # Batches per epoch cap, 0 for all (smoke runs and benchmarks).
    max_steps_per_epoch: int = Field(0, ge=0)


class ScalingConfig(Section):
    """How the work is spread over Ray."""

    num_workers: int = Field(1, ge=1)
    # 0: split the node's CPUs evenly between the workers.
    cpus_per_worker: float = Field(0.0, ge=0)
    use_gpu: bool = False
    # Worker-group restarts (a killed worker or a lost node) before the run is declared failed.
    max_failures: int = Field(2, ge=0)


class OutputConfig(Section):
    """Where a run writes what it produces."""

    checkpoints_dir: str = "checkpoints"
    runs_dir: str = "runs"
    artifacts_dir: str = "artifacts"
    # Ray Train's own storage (its checkpoint copies and state); a shared path or a URI on a cluster.
    storage_path: str = "ray_results"
    promote: bool = True


class CalibrationConfig(Section):
    """How a trained model's probabilities are calibrated and its operating points chosen, on validation."""

    # temperature: one temperature minimising the log loss; isotonic: a non-decreasing map; none: the plain sigmoid.
    method: Literal["temperature", "isotonic", "none"] = "temperature"
    # The high_precision operating point keeps the false-positive rate at most this; high_recall the false-negative.
    target_fpr: float = Field(0.01, ge=0, lt=1)
    target_fnr: float = Field(0.01, ge=0, lt=1)


class ExperimentConfig(Section):
    """Everything one training run needs."""

    name: str = "baseline"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)


# ---- reading and checking ---------------------------------------------------------------------------


def load_yaml(path: str | Path, what: str, example: str) -> dict[str, Any]:
    """The mapping in a YAML file; a missing file, bad YAML or a non-mapping is a ConfigError sentence."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; see {example} for an example.")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not a {type(loaded).__name__}.")
    return loaded


def build(model: type[SectionT], data: Any, source: str, *, prefix: str = "") -> SectionT:
    """`model` built from `data`; the first mistake becomes a ConfigError naming the key (under `prefix`,
    for a section read on its own) and `source`."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        error = err.errors()[0]
        if prefix:
            error = {**error, "loc": (prefix, *error["loc"])}
        raise ConfigError(f"{source}: {_sentence(model, error, skip=1 if prefix else 0)}") from None


def _sentence(model: type[Section], error: dict[str, Any], skip: int = 0) -> str:
    key = dotted(error["loc"]) or "the top level"
    value = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key {key}; known keys here: {', '.join(_known_keys(model, error['loc'][skip:-1]))}."
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{key} must be a mapping, got {value!r}."
    if kind == "missing":
        return f"{key} is required."
    message = error["msg"][0].lower() + error["msg"][1:]
    message = message.removeprefix("value error, ")
    if isinstance(value, dict):  # a check of a whole section: the section, then what is wrong in it
        return f"{key}: {message}."
    return f"{key}: {message}, got {value!r} ({type(value).__name__})."


def dotted(loc: tuple) -> str:
    """A pydantic location as the user writes the key: train.lr, members[0].checkpoint."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _known_keys(model: type[Section], loc: tuple) -> list[str]:
    """The field names of the (nested) model at `loc`; lists of records are followed through their index."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        current = _record_type(field.annotation)
    return sorted(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _record_type(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return annotation


def parse_override(text: str) -> tuple[str, Any]:
    """Split `key.sub=value`; the value is read as YAML (so 1e-4, true, [1, 2] have their types)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.lr=3e-4.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({err}).") from err
    # YAML 1.1 reads 1e-4 as a string (it wants 1.0e-4); a number is what users mean.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `data` with each `key=value` override applied."""
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


def load(model: type[SectionT], path: str | Path | None, overrides: list[str] | None = None, *,
         what: str = "config file", example: str = "experiments/configs/") -> SectionT:
    """A `model` from a YAML file (or its defaults when `path` is None) with `key=value` overrides applied."""
    data = load_yaml(path, what, example) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    return build(model, data, source)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """An experiment config from YAML (or the defaults when `path` is None), with `key=value` overrides."""
    return load(ExperimentConfig, path, overrides)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """An ExperimentConfig from a nested dict (a checkpoint's, a sweep's)."""
    return build(ExperimentConfig, data, source)


def with_changes(config: SectionT, **sections: dict[str, Any]) -> SectionT:
    """A checked copy of `config` with some keys of some sections changed, e.g. train={"lr": 1e-3}."""
    data = config.to_dict()
    for section, values in sections.items():
        if isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    return build(type(config), data, "changed config")


def save_config(config: Section, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    return write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
