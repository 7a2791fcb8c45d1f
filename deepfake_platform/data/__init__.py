"""The data layer: find and check images, decode them, preprocess them, and build the default set.

`ImageDataset` and the transform presets need torch; they load on first use so that scanning and
building data sets (experiments/check_dataset.py, make_dataset.py) start without importing it.
"""

from __future__ import annotations

import importlib

from deepfake_platform.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, BadImageError, load_image
from deepfake_platform.data.scan import (
    CLASSES,
    EXPECTED_LAYOUT,
    MANIFEST_NAME,
    SPLITS,
    DatasetError,
    ImageRecord,
    ScanResult,
    load_split,
    scan_dataset,
)
from deepfake_platform.data.sets import (
    FACES_MANIFEST_FILE,
    FACES_PRESET_FILE,
    build_training_set,
    build_validation_set,
    face_preset_of,
    resolve_data_root,
    source_videos,
    video_sampling_of,
)
from deepfake_platform.data.synth import (
    DEFAULT_COUNTS,
    DEFAULT_DATA_DIR,
    EMBEDDED_SETS,
    build_dataset,
    ensure_embedded_dataset,
)

_NEEDS_TORCH = {
    "ImageDataset": "deepfake_platform.data.dataset",
    "build_transform": "deepfake_platform.data.transforms",
    "IMAGENET_MEAN": "deepfake_platform.data.transforms",
    "IMAGENET_STD": "deepfake_platform.data.transforms",
}

__all__ = [
    "CLASSES", "DEFAULT_COUNTS", "DEFAULT_DATA_DIR", "EMBEDDED_SETS", "DEFAULT_MAX_PIXELS", "EXPECTED_LAYOUT",
    "IMAGE_EXTENSIONS", "MANIFEST_NAME", "SPLITS", "BadImageError", "DatasetError", "ImageRecord",
    "ScanResult", "build_dataset", "ensure_embedded_dataset", "load_image", "load_split", "scan_dataset",
    "FACES_MANIFEST_FILE", "FACES_PRESET_FILE", "build_training_set", "build_validation_set", "face_preset_of",
    "resolve_data_root", "source_videos", "video_sampling_of",
    *_NEEDS_TORCH,
]


def __getattr__(name: str):
    if name in _NEEDS_TORCH:
        return getattr(importlib.import_module(_NEEDS_TORCH[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
