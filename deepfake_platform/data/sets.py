"""The data a run trains and validates on, and where it is: the PyTorch datasets of a data root, the data
root a job uses, and what an extracted-faces data set says about itself (its face preset, each crop's video).

A data set written by `experiments/extract_faces.py` carries `faces.json` (the face preset: detector,
margin, crop size) and `faces.parquet` (one row per crop: its source file and frame); training records the
preset in every checkpoint, and evaluation scores videos by their frames.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deepfake_platform.data.scan import DatasetError, load_split
from deepfake_platform.errors import MissingInput

FACES_PRESET_FILE = "faces.json"
FACES_MANIFEST_FILE = "faces.parquet"


def build_training_set(data_root: Path, image_size: int, *, self_blend: bool = False, seed: int = 0):
    """The training split with the train preset; with `self_blend`, every real image also yields a fresh
    self-blended pseudo-fake each epoch (Self-Blended Images), so real faces alone are enough."""
    from deepfake_platform.data.dataset import ImageDataset
    from deepfake_platform.data.transforms import build_transform

    transform = build_transform("train", image_size)
    if self_blend:
        from deepfake_platform.data.blend import SelfBlendDataset

        return SelfBlendDataset(load_split(data_root, "train", require_classes=("real",)), transform=transform,
                                seed=seed)
    return ImageDataset(load_split(data_root, "train"), transform)


def build_validation_set(data_root: Path, image_size: int, *, self_blend: bool = False, seed: int = 0):
    """The validation split with the eval preset (what test and serving use too). With `self_blend` and a
    validation split of real faces only, each real face also gets one pseudo-fake, the same every epoch."""
    from deepfake_platform.data.dataset import ImageDataset
    from deepfake_platform.data.transforms import build_transform

    transform = build_transform("eval", image_size)
    if self_blend:
        samples = load_split(data_root, "val", require_classes=("real",))
        if not any(label == 1 for _, label in samples):
            from deepfake_platform.data.blend import SelfBlendDataset

            return SelfBlendDataset(samples, transform=transform, seed=seed + 1)  # epoch 0 forever: fixed
    return ImageDataset(load_split(data_root, "val"), transform)


def face_preset_of(data_root: Path) -> dict[str, Any]:
    """The face preset an extracted-faces data set was cropped with; empty for a set of whole images."""
    path = Path(data_root) / FACES_PRESET_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())["preset"])
    except (ValueError, TypeError, KeyError) as err:
        raise DatasetError(f"{path} is not an extraction record ({err}); re-run experiments/extract_faces.py.") from err


def video_sampling_of(data_root: Path) -> dict[str, int]:
    """How an extracted data set sampled its videos' frames (num_frames, every); empty for a set of images."""
    path = Path(data_root) / FACES_PRESET_FILE
    if not path.is_file():
        return {}
    sampling = json.loads(path.read_text()).get("sampling") or {}
    return {key: int(sampling[key]) for key in ("num_frames", "every") if key in sampling}


def source_videos(data_root: Path, paths: list[str]) -> list[str] | None:
    """The source file of each crop path, from the set's faces.parquet; None when the set has no such manifest."""
    manifest = Path(data_root) / FACES_MANIFEST_FILE
    if not manifest.is_file():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(manifest, columns=["crop", "source"]).to_pylist()
    by_crop = {str((Path(data_root) / row["crop"]).resolve()): row["source"] for row in table}
    sources = [by_crop.get(str(Path(path).resolve())) for path in paths]
    # Crops added by hand after extraction have no source: score them as videos of their own.
    return [source if source is not None else str(path) for source, path in zip(sources, paths, strict=True)]


def resolve_data_root(data: str | None, config_root: str, embedded: str, home: Path) -> Path:
    """--data, else the config's data.root (relative paths under `home`), else the embedded set named by
    `embedded`, built under home/data on first use."""
    from deepfake_platform.data.synth import EMBEDDED_SETS, ensure_embedded_dataset

    chosen = data or config_root
    if chosen:
        root = (home / Path(chosen).expanduser()).resolve()
        if not root.is_dir():
            raise MissingInput(
                f"data root {root} does not exist. Point --data at a folder with train/, val/ and test/, each "
                "holding real/ and fake/, or omit it to use the embedded data set."
            )
        return root
    spec = EMBEDDED_SETS[embedded]
    return ensure_embedded_dataset(home / "data" / Path(spec["path"]).name, counts=spec["counts"], size=spec["size"])
