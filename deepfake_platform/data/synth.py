"""A forensic data set built offline from real photographs: real crops and self-blended fakes.

Fakes follow Face X-ray (Li et al., CVPR 2020) and Self-Blended Images (Shiohara & Yamasaki, CVPR
2022): a copy of a real crop is altered (colour, sharpness, resampling, a small warp) and blended back
through a soft, randomly shaped mask, leaving the blending boundary and resampling traces that real
face swaps leave. Real and fake images go through the same crop, resize and JPEG steps, so only the
blending tells them apart. Every random draw comes from a numpy Generator seeded with (seed, stream,
indices): the same seed gives byte-identical files, in any order of generation.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull

from deepfake_platform.data.images import IMAGE_EXTENSIONS, BadImageError, is_image_name, load_image
from deepfake_platform.data.scan import CLASSES, SPLITS, DatasetError

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "embedded"
# Sized from the reference hybrid's measured 2.6 images/s (bf16 training step, 2-core CPU; the same
# plain-PyTorch and through Ray Train): 5 epochs of 240 training + 80 validation images, then 100 test
# images, is about 10 minutes end to end.
DEFAULT_COUNTS = {"train": 240, "val": 80, "test": 100}
DEFAULT_SIZE = 256
DEFAULT_SEED = 0
# The embedded sets the recipes build on first use: `full` for the reference recipe (about ten minutes
# of training on a 2-core CPU), `smoke` for CI and a first check (seconds).
EMBEDDED_SETS = {
    "full": {"path": DEFAULT_DATA_DIR, "counts": DEFAULT_COUNTS, "size": DEFAULT_SIZE},
    "smoke": {"path": DEFAULT_DATA_DIR.parent / "smoke", "counts": {"train": 32, "val": 10, "test": 10}, "size": 64},
}
GENERATOR = "self-blended images, version 1"
INFO_NAME = "dataset.json"
HELD_OUT_FRACTION = 1 / 3

# Photographs bundled in the scikit-image wheel (no download); `cat` repeats chelsea and the right
# motorcycle view repeats the left one, so they are left out to keep held-out photos unseen.
SKIMAGE_PHOTOS = {
    "astronaut": "colour", "chelsea": "colour", "coffee": "colour", "hubble_deep_field": "colour",
    "immunohistochemistry": "colour", "motorcycle": "colour", "retina": "colour", "rocket": "colour",
    "brick": "grey", "camera": "grey", "clock": "grey", "coins": "grey", "grass": "grey", "moon": "grey",
}

_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RESAMPLING = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)
_BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # SBI's choice: mostly full blends, some partial
# Independent random streams, so adding draws to one never shifts another.
_PHOTO_SPLIT_STREAM, _ASSIGNMENT_STREAM, _SAMPLE_STREAM = 0, 1, 2


@dataclass(frozen=True)
class SourcePhoto:
    """A real photograph to cut crops from; `kind` groups photos (colour or grey) for a stratified split."""

    name: str
    kind: str
    load: Callable[[], Image.Image]


def skimage_photos() -> list[SourcePhoto]:
    """The real photographs that ship with scikit-image, loaded without network access."""
    from skimage import data

    def loader(name: str) -> Callable[[], Image.Image]:
        if name == "motorcycle":
            return lambda: Image.fromarray(data.stereo_motorcycle()[0]).convert("RGB")
        return lambda: Image.fromarray(getattr(data, name)()).convert("RGB")

    return [SourcePhoto(name, kind, loader(name)) for name, kind in SKIMAGE_PHOTOS.items()]


def folder_photos(real_dir: str | Path) -> list[SourcePhoto]:
    """Every readable image under `real_dir` (recursively); unreadable ones are skipped with a warning."""
    real_dir = Path(real_dir)
    if not real_dir.is_dir():
        raise DatasetError(f"{real_dir} is not a folder; pass a folder of real photographs to --real-dir.")
    photos, bad = [], []
    for path in sorted(p for p in real_dir.rglob("*") if p.is_file() and is_image_name(p)):
        name = path.relative_to(real_dir).as_posix()
        try:
            load_image(path)  # decoded now so a broken file is skipped before photos are assigned to splits
        except BadImageError as error:
            bad.append(f"{name}: {error.reason}")
            continue
        photos.append(SourcePhoto(name, "photo", functools.partial(load_image, path)))
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable file(s) in {real_dir}: {'; '.join(bad)}", stacklevel=2)
    if not photos:
        raise DatasetError(
            f"{real_dir} holds no readable images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    return photos


def split_photos(photos: list[SourcePhoto], seed: int) -> tuple[list[SourcePhoto], list[SourcePhoto]]:
    """Disjoint (train, held-out) photo groups, about a third held out, stratified by kind."""
    if len(photos) < 2:
        return photos, photos  # one photo cannot be split; dataset.json records the overlap
    rng = np.random.default_rng([seed, _PHOTO_SPLIT_STREAM])
    by_kind: dict[str, list[SourcePhoto]] = {}
    for photo in sorted(photos, key=lambda p: p.name):
        by_kind.setdefault(photo.kind, []).append(photo)
    shuffled = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_kind.items())]
    # Dealing kinds in turn keeps each kind's share alike in both groups.
    dealt = [group[i] for i in range(max(map(len, shuffled))) for group in shuffled if i < len(group)]
    held_out = max(1, round(len(dealt) * HELD_OUT_FRACTION))
    return dealt[held_out:], dealt[:held_out]


def random_crop(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A square crop of 35-100% of the short side, resized to `size`, avoiding near-uniform regions."""
    width, height = photo.size
    short = min(width, height)
    for _ in range(10):
        side = max(1, int(short * rng.uniform(0.35, 1.0)))
        left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        crop = photo.crop((left, top, left + side, top + side))
        # reducing_gap shrinks big crops by block averaging first: fast, and still antialiased.
        crop = crop.resize((size, size), _choice(rng, _RESAMPLING), reducing_gap=3.0)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # Black sky or a retina's border would give real and fake crops that nothing can tell apart.
        if np.asarray(crop.convert("L"), dtype=np.float32).std() > 10.0:
            break
    return crop


def self_blend(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Blend an altered copy of `image` back into it through a soft random mask."""
    source = np.asarray(image, dtype=np.float32) / 255.0
    altered = _alter(image, rng)
    mask = blend_mask(image.size[1], image.size[0], rng)[..., None]
    blended = mask * altered + (1.0 - mask) * source
    return Image.fromarray(np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8))


def _alter(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    steps = [step for step in (_warp, _resample, _colour, _sharpness) if rng.random() < 0.5]
    if not steps:
        steps = [(_warp, _resample, _colour, _sharpness)[int(rng.integers(4))]]
    for step in steps:
        image = step(image, rng)
    return np.asarray(image, dtype=np.float32) / 255.0


def _warp(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    # A few pixels of shift and a few percent of zoom misalign edges at the blending boundary.
    scale = rng.uniform(0.95, 1.05)
    shift_x, shift_y = rng.uniform(-4.0, 4.0, size=2)
    centre_x, centre_y = image.size[0] / 2, image.size[1] / 2
    matrix = (1 / scale, 0.0, centre_x - (centre_x + shift_x) / scale,
              0.0, 1 / scale, centre_y - (centre_y + shift_y) / scale)
    return image.transform(image.size, Image.Transform.AFFINE, matrix, _choice(rng, _RESAMPLING[:2]))


def _resample(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    factor = rng.uniform(0.3, 0.7)
    small = (max(1, round(image.size[0] * factor)), max(1, round(image.size[1] * factor)))
    return image.resize(small, _choice(rng, _RESAMPLING)).resize(image.size, _choice(rng, _RESAMPLING))


def _colour(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    # Hue rotation and saturation scaling as one linear map in YIQ space: the chroma plane (I, Q) is
    # turned and stretched while luma (Y) stays, ten times cheaper than a round trip through HSV.
    angle, saturation = rng.uniform(-0.4, 0.4), rng.uniform(0.8, 1.2)
    turn = np.array([[1.0, 0.0, 0.0],
                     [0.0, np.cos(angle), -np.sin(angle)],
                     [0.0, np.sin(angle), np.cos(angle)]]) * np.array([[1.0], [saturation], [saturation]])
    matrix = np.linalg.inv(_RGB_TO_YIQ) @ turn @ _RGB_TO_YIQ
    matrix = matrix * rng.uniform(0.9, 1.1, size=(3, 1))  # per-channel gain: a colour cast
    pixels = np.asarray(image, dtype=np.float32) / 255.0 @ matrix.T.astype(np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-0.08, 0.08)
    return Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8))


def _sharpness(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    blurred = ndimage.gaussian_filter(pixels, sigma=(rng.uniform(0.6, 2.0),) * 2 + (0.0,))
    if rng.random() < 0.5:
        pixels = blurred
    else:
        pixels = pixels + rng.uniform(0.5, 1.5) * (pixels - blurred)  # unsharp masking
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def blend_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A soft mask in [0, 1]: an ellipse or convex polygon, elastically deformed, blurred, scaled."""
    size = min(height, width)
    centre = np.array([width, height]) * rng.uniform(0.3, 0.7, size=2)
    radii = size * rng.uniform(0.15, 0.35, size=2)
    angle = rng.uniform(0.0, np.pi)
    canvas = Image.new("L", (width, height), 0)
    if rng.random() < 0.5:
        theta = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)
        points = np.stack([radii[0] * np.cos(theta), radii[1] * np.sin(theta)], axis=1)
    else:
        theta = rng.uniform(0.0, 2 * np.pi, size=int(rng.integers(5, 12)))
        spread = rng.uniform(0.5, 1.0, size=(theta.size, 1))
        points = spread * np.stack([radii[0] * np.cos(theta), radii[1] * np.sin(theta)], axis=1)
        points = points[ConvexHull(points).vertices]
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    polygon = points @ rotation.T + centre
    ImageDraw.Draw(canvas).polygon([tuple(point) for point in polygon], fill=255)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0

    # Smooth random displacements (coarse noise, upsampled) bend the straight outline into an organic one.
    strength = size * rng.uniform(0.0, 0.06)
    flows = [
        np.asarray(Image.fromarray(rng.uniform(-strength, strength, size=(6, 6)).astype(np.float32))
                   .resize((width, height), Image.Resampling.BICUBIC))
        for _ in range(2)
    ]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    mask = ndimage.map_coordinates(mask, [rows + flows[0], cols + flows[1]], order=1, mode="constant")

    mask = ndimage.gaussian_filter(mask, sigma=size * rng.uniform(0.01, 0.05))
    mask = mask / max(float(mask.max()), 1e-6)
    return (mask * _choice(rng, _BLEND_RATIOS)).astype(np.float32)


def _choice(rng: np.random.Generator, options: tuple):
    return options[int(rng.integers(len(options)))]


def _encode_jpeg(image: Image.Image, rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(90, 96)))
    return buffer.getvalue()


def build_dataset(
    out: str | Path, *, seed: int = DEFAULT_SEED, counts: Mapping[str, int] = DEFAULT_COUNTS,
    size: int = DEFAULT_SIZE, real_dir: str | Path | None = None,
) -> dict:
    """Write train/val/test real and fake JPEGs plus dataset.json under `out`; return that summary."""
    out = Path(out)
    if seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, not {seed}.")
    if size < 16:
        raise ValueError(f"the image size must be at least 16 pixels, not {size}.")
    for split in SPLITS:
        if counts.get(split, 0) < 2 or counts[split] % 2:
            raise ValueError(
                f"the {split} split needs an even number of at least 2 images so the classes balance, "
                f"not {counts.get(split, 0)}."
            )
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder or delete this one first.")

    photos = folder_photos(real_dir) if real_dir is not None else skimage_photos()
    train_photos, held_out_photos = split_photos(photos, seed)
    groups = {"train": train_photos, "val": held_out_photos, "test": held_out_photos}

    # Which photo each image comes from: every photo of a group serves each class equally often,
    # so the photo itself says nothing about the label.
    position = {photo.name: index for index, photo in enumerate(photos)}
    plan: dict[int, list[tuple[str, int, int]]] = {}
    sources: dict[str, str] = {}
    for split_index, split in enumerate(SPLITS):
        group = groups[split]
        for label, name in enumerate(CLASSES):
            rng = np.random.default_rng([seed, _ASSIGNMENT_STREAM, split_index, label])
            order = rng.permutation(len(group))
            for index in range(counts[split] // 2):
                photo = group[order[index % len(group)]]
                plan.setdefault(position[photo.name], []).append((split, label, index))
                sources[f"{split}/{name}/{name}_{index:05d}.jpg"] = photo.name

    for split in SPLITS:
        for name in CLASSES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
    # One photo in memory at a time, each decoded once, whatever the size of a --real-dir folder.
    for photo_index in sorted(plan):
        photo = photos[photo_index].load()
        for split, label, index in plan[photo_index]:
            rng = np.random.default_rng([seed, _SAMPLE_STREAM, SPLITS.index(split), label, index])
            image = random_crop(photo, size, rng)
            if label == 1:
                image = self_blend(image, rng)
            name = CLASSES[label]
            (out / split / name / f"{name}_{index:05d}.jpg").write_bytes(_encode_jpeg(image, rng))

    summary = {
        "generator": GENERATOR,
        "seed": seed,
        "size": size,
        "source": str(real_dir) if real_dir is not None else "skimage.data",
        "counts": {split: {name: counts[split] // 2 for name in CLASSES} for split in SPLITS},
        "photos": {split: sorted(photo.name for photo in group) for split, group in groups.items()},
        "photos_shared_between_train_and_held_out": len(photos) < 2,
        "files": dict(sorted(sources.items())),
    }
    (out / INFO_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def ensure_embedded_dataset(
    path: str | Path = DEFAULT_DATA_DIR, *, counts: Mapping[str, int] = DEFAULT_COUNTS, size: int = DEFAULT_SIZE,
) -> Path:
    """The embedded data set at `path`, built there first (seconds) when missing."""
    path = Path(path).expanduser().resolve()
    if (path / INFO_NAME).is_file():
        return path
    if path.exists() and any(path.iterdir()):
        raise DatasetError(
            f"{path} exists but holds no {INFO_NAME}, so it is not a finished embedded data set; "
            "delete it to have it rebuilt, or pass --data to use another data set."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed into place: a run that stops halfway or a second process building at
    # the same time never leaves a half-written set behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    print(f"Building the embedded data set at {path} (once, about 15 s).", flush=True)
    try:
        build_dataset(staging, counts=counts, size=size)
        if path.exists():
            path.rmdir()  # the empty folder found above
        staging.rename(path)
    except OSError:
        if not (path / INFO_NAME).is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
