"""The detector registry: short factory functions under `@register_detector`, one front door.

`create_detector(name, **kwargs)` builds a detector and records `detector_name` and
`detector_kwargs` on it, so a checkpoint that stores both can rebuild the same architecture with
`create_detector(model.detector_name, **model.detector_kwargs)`.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

_DETECTORS: dict[str, Callable[..., nn.Module]] = {}

FactoryT = TypeVar("FactoryT", bound=Callable[..., nn.Module])
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def register_detector(factory: FactoryT) -> FactoryT:
    """Register a detector factory under its function name."""
    name = factory.__name__
    if name in _DETECTORS:
        raise ValueError(f"A detector named {name!r} is already registered; pick another function name.")
    _DETECTORS[name] = factory
    return factory


def list_detectors() -> list[str]:
    """Return the names of all registered detectors, sorted."""
    return sorted(_DETECTORS)


def create_detector(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered detector `name`; kwargs override the factory's defaults."""
    if name not in _DETECTORS:
        raise ValueError(f"Unknown detector {name!r}. Known detectors: {', '.join(list_detectors())}.")
    detector_kwargs = _jsonable_kwargs(name, kwargs)
    model = _DETECTORS[name](**detector_kwargs)
    model.detector_name = name
    model.detector_kwargs = detector_kwargs
    return model


def build(cls: type[ModuleT], defaults: dict[str, Any], overrides: dict[str, Any]) -> ModuleT:
    """Instantiate `cls` with `defaults` updated by `overrides`, rejecting keywords `cls` does not take."""
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError(
            f"{cls.__name__} got unknown keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted)}."
        )
    return cls(**{**defaults, **overrides})


def _jsonable_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    # Paths become strings so the kwargs can be stored in a checkpoint and in a JSON/YAML config.
    converted = {
        key: os.fspath(value) if isinstance(value, os.PathLike) else value for key, value in kwargs.items()
    }
    try:
        json.dumps(converted)
    except TypeError as err:
        raise TypeError(
            f"Keyword arguments for detector {name!r} must be JSON-serialisable (numbers, strings, lists, "
            f"dicts) so a checkpoint can rebuild the model: {err}."
        ) from err
    return converted
