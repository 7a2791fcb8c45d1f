"""The data layer on real files: layouts, broken images, colour modes, the manifest, the generator."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from deepfake_platform.data import (
    MANIFEST_NAME,
    BadImageError,
    DatasetError,
    build_dataset,
    ensure_embedded_dataset,
    load_image,
    load_split,
    scan_dataset,
    synth,
)
from deepfake_platform.data import scan as scan_module

REPO = Path(__file__).resolve().parents[1]
SMALL_COUNTS = {"train": 8, "val": 4, "test": 4}


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (24, 16), fmt: str = "JPEG") -> Path:
    """A small noisy RGB image on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_root(
    root: Path, split_names=("train", "val", "test"), class_names=("real", "fake"), per_class=2
) -> Path:
    """A data root with `per_class` readable JPEGs in every split/class folder."""
    seed = 0
    for split in split_names:
        for name in class_names:
            for index in range(per_class):
                seed += 1
                write_image(root / split / name / f"{index}.jpg", seed=seed)
    return root


def truncated_jpeg(path: Path) -> Path:
    write_image(path, size=(64, 64))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- layout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("split_names, class_names", [
    (("train", "val", "test"), ("real", "fake")),
    (("train", "valid", "test"), ("Real", "Fake")),
    (("Train", "Validation", "TEST"), ("0_real", "1_fake")),
])
def test_layout_variants_are_accepted(tmp_path, split_names, class_names):
    root = make_root(tmp_path, split_names, class_names)
    result = scan_dataset(root)
    assert result.usable, result.problems
    assert result.counts() == {split: {"real": 2, "fake": 2} for split in ("train", "val", "test")}
    val = load_split(root, "val")
    assert sorted(Path(path).parent.name for path, label in val if label == 1) == [class_names[1]] * 2
    assert all(Path(path).is_absolute() for path, _ in val)


def test_empty_class_raises_dataset_error_with_layout(tmp_path):
    root = make_root(tmp_path)
    for path in (root / "train" / "fake").iterdir():
        path.unlink()
    with pytest.raises(DatasetError) as caught:
        load_split(root, "train")
    message = str(caught.value)
    assert "train/fake/ holds no readable images" in message
    assert "├── train/" in message and "│   └── fake/" in message


def test_missing_split_is_a_problem(tmp_path):
    root = make_root(tmp_path, split_names=("train", "test"))
    result = scan_dataset(root)
    assert not result.usable
    assert any("no val/ folder" in problem for problem in result.problems)
    assert load_split(root, "train")  # the splits that exist still load


def test_load_split_skips_bad_files_with_a_warning(tmp_path):
    root = make_root(tmp_path)
    truncated_jpeg(root / "train" / "fake" / "cut.jpg")
    with pytest.warns(UserWarning, match=r"train/fake/cut\.jpg"):
        samples = load_split(root, "train")
    assert len(samples) == 4
    assert not any(path.endswith("cut.jpg") for path, _ in samples)


def test_check_dataset_names_unreadable_files_and_exits_zero(tmp_path):
    root = make_root(tmp_path)
    truncated_jpeg(root / "train" / "fake" / "truncated.jpg")
    (root / "val" / "real" / "notes.jpg").write_text("this is not a picture")
    run = subprocess.run([sys.executable, str(REPO / "experiments" / "check_dataset.py"), str(root)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "train/fake/truncated.jpg" in run.stdout and "truncated" in run.stdout.split("truncated.jpg")[1]
    assert "val/real/notes.jpg" in run.stdout
    assert "2 unreadable file(s)" in run.stdout
    assert "usable" in run.stdout


def test_check_dataset_exits_one_when_unusable(tmp_path):
    root = make_root(tmp_path, class_names=("real",))
    run = subprocess.run([sys.executable, str(REPO / "experiments" / "check_dataset.py"), str(root)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "cannot be used" in run.stdout and "train/ has no fake/ folder" in run.stdout


# --- decoding -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, fmt", [
    ("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("LA", "PNG"),
    ("1", "PNG"),
])
def test_every_mode_becomes_rgb(tmp_path, mode, fmt):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.full((12, 20), 32896, dtype=np.uint16))
    else:
        image = rgb.convert(mode)
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, format=fmt)
    with Image.open(path) as stored:
        assert stored.mode == mode  # the file really holds the mode under test
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (20, 12)
    if mode == "I;16":
        # 32896 of 65535 is mid-grey, not the white that clipping at 255 would give.
        assert np.asarray(loaded)[0, 0].tolist() == [128, 128, 128]


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert Image.open(path).size == (40, 20)
    assert load_image(path).size == (20, 40)


def test_load_image_rejects_garbage_truncation_and_bombs(tmp_path, monkeypatch):
    with pytest.raises(BadImageError, match="cannot be read as an image"):
        load_image(b"not an image at all")
    with pytest.raises(BadImageError, match="truncated"):
        load_image(truncated_jpeg(tmp_path / "cut.jpg"))
    encoded = io.BytesIO()
    Image.new("RGB", (100, 100)).save(encoded, format="PNG")
    assert load_image(encoded.getvalue()).size == (100, 100)
    with pytest.raises(BadImageError, match="more than the limit"):
        load_image(encoded.getvalue(), max_pixels=9_999)
    # Pillow's own guard fires first when its limit is the lower one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(BadImageError, match="too large to decode safely"):
        load_image(encoded.getvalue())


def test_image_dataset_and_transform_presets(tmp_path):
    from deepfake_platform.data import ImageDataset, build_transform

    path = write_image(tmp_path / "a.jpg", size=(50, 40))
    dataset = ImageDataset([(str(path), 1)], build_transform("eval", 32))
    tensor, label = dataset[0]
    assert tuple(tensor.shape) == (3, 32, 32) and label == 1.0 and isinstance(label, float)
    assert abs(float(tensor.mean())) < 3  # normalised, not raw 0-255 values
    assert tuple(build_transform("train", 32)(load_image(path)).shape) == (3, 32, 32)
    with pytest.raises(ValueError, match="unknown transform preset"):
        build_transform("augmented", 32)


# --- manifest -----------------------------------------------------------------------------------

def test_manifest_is_written_reused_and_notices_changes(tmp_path, monkeypatch):
    root = make_root(tmp_path)
    truncated_jpeg(root / "test" / "real" / "cut.jpg")
    first = scan_dataset(root)
    table = pq.read_table(root / MANIFEST_NAME).to_pylist()
    assert len(table) == 13
    assert {"path", "split", "label", "size", "mtime", "sha256", "width", "height"} <= set(table[0])
    bad = [row for row in table if row["path"] == "test/real/cut.jpg"]
    assert bad and "truncated" in bad[0]["error"]

    decoded = []
    original = scan_module.load_image
    monkeypatch.setattr(scan_module, "load_image", lambda source: decoded.append(source) or original(source))
    second = scan_dataset(root)
    assert decoded == []  # nothing rescanned, the bad file included
    assert second.counts() == first.counts() and second.bad_files == first.bad_files

    changed = root / "train" / "real" / "0.jpg"
    old_hash = next(r.sha256 for r in second.records if r.path == "train/real/0.jpg")
    write_image(changed, seed=99, size=(30, 30))
    os.utime(changed, (changed.stat().st_atime, changed.stat().st_mtime + 10))
    write_image(root / "val" / "fake" / "new.jpg", seed=7)
    third = scan_dataset(root)
    assert len(decoded) == 2
    record = next(r for r in third.records if r.path == "train/real/0.jpg")
    assert record.sha256 != old_hash and (record.width, record.height) == (30, 30)
    assert third.counts()["val"]["fake"] == 3


# --- generator ----------------------------------------------------------------------------------

def test_generator_is_deterministic_balanced_and_keeps_photos_apart(tmp_path):
    first = build_dataset(tmp_path / "a", seed=0, counts=SMALL_COUNTS, size=32)
    build_dataset(tmp_path / "b", seed=0, counts=SMALL_COUNTS, size=32)
    build_dataset(tmp_path / "c", seed=1, counts=SMALL_COUNTS, size=32)
    hashes = tree_hashes(tmp_path / "a")
    assert hashes == tree_hashes(tmp_path / "b")
    assert hashes != tree_hashes(tmp_path / "c")

    result = scan_dataset(tmp_path / "a", write_manifest=False)
    assert result.usable and not result.bad_files
    assert result.counts() == {split: {"real": n // 2, "fake": n // 2} for split, n in SMALL_COUNTS.items()}
    photos = first["photos"]
    assert photos["train"] and photos["val"]
    assert not set(photos["train"]) & (set(photos["val"]) | set(photos["test"]))
    info = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert info["seed"] == 0 and info["counts"]["val"] == {"real": 2, "fake": 2}
    for relative, photo in info["files"].items():
        assert photo in photos[relative.split("/")[0]]


def test_fakes_differ_from_their_source_crop_only_inside_a_soft_mask():
    rng = np.random.default_rng(3)
    mask = synth.blend_mask(64, 64, rng)
    assert mask.max() > 0.2 and mask.min() == 0.0
    assert 0 < np.mean((mask > 0.01) & (mask < 0.99 * mask.max()))  # a soft edge, not a hard cut-out
    crop = Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    fake = synth.self_blend(crop, np.random.default_rng(5))
    assert fake.size == crop.size and np.asarray(fake).tobytes() != np.asarray(crop).tobytes()


def test_real_dir_becomes_a_self_blended_set(tmp_path):
    photos = tmp_path / "photos"
    for index in range(4):
        folder = photos / "nested" if index % 2 else photos
        write_image(folder / f"p{index}.png", seed=index, size=(80, 60), fmt="PNG")
    (photos / "broken.jpg").write_text("no")
    with pytest.warns(UserWarning, match="broken.jpg"):
        summary = build_dataset(tmp_path / "out", counts=SMALL_COUNTS, size=32, real_dir=photos)
    assert sorted(summary["photos"]["train"] + summary["photos"]["val"]) == [
        "nested/p1.png", "nested/p3.png", "p0.png", "p2.png",
    ]
    assert not set(summary["photos"]["train"]) & set(summary["photos"]["test"])
    assert scan_dataset(tmp_path / "out").usable


def test_make_dataset_script_fills_every_folder(tmp_path):
    out = tmp_path / "set"
    run = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "make_dataset.py"), "--out", str(out),
         "--train", "8", "--val", "4", "--test", "4", "--size", "64"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for split, count in SMALL_COUNTS.items():
        for name in ("real", "fake"):
            files = sorted((out / split / name).glob("*.jpg"))
            assert len(files) == count // 2
            assert Image.open(files[0]).size == (64, 64)
    again = subprocess.run([sys.executable, str(REPO / "experiments" / "make_dataset.py"), "--out", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_ensure_embedded_dataset_builds_once(tmp_path, monkeypatch):
    builds = []
    monkeypatch.setattr(synth, "build_dataset", lambda out, **kw: builds.append(kw) or build_dataset(out, **kw))
    target = tmp_path / "data" / "embedded"
    assert ensure_embedded_dataset(target, counts=SMALL_COUNTS, size=32) == target.resolve()
    assert ensure_embedded_dataset(target, counts=SMALL_COUNTS, size=32) == target.resolve()
    assert builds == [{"counts": SMALL_COUNTS, "size": 32}]
    assert len(list((target / "train" / "fake").iterdir())) == SMALL_COUNTS["train"] // 2
    assert scan_dataset(target).usable
    assert not [p for p in target.parent.iterdir() if p.name != "embedded"]  # no staging folder left
    foreign = tmp_path / "foreign"
    write_image(foreign / "x.jpg")
    with pytest.raises(DatasetError, match="delete it"):
        ensure_embedded_dataset(foreign)
    assert synth.DEFAULT_DATA_DIR == REPO / "data" / "embedded"


# ---- bounded cost per image ------------------------------------------------------------------------


def adversarial_images(folder: Path) -> dict[str, Path]:
    """Valid images under the pixel limit whose shape or mode would make naive preprocessing explode."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = {"strip_wide.png": ("RGB", (20_000_000, 1)), "strip_tall.png": ("RGB", (1, 20_000_000)),
              "two_rows.png": ("L", (10_000_000, 2)), "band.jpg": ("RGB", (12_000, 300)),
              "grey16.png": ("I;16", (3000, 3000))}
    paths = {}
    for name, (mode, size) in shapes.items():
        Image.new(mode, size, 200 if mode != "I;16" else 50_000).save(folder / name)
        paths[name] = folder / name
    return paths


def test_preprocessing_cost_is_bounded_by_the_crop_not_the_image_shape(tmp_path):
    from deepfake_platform.data import ImageDataset, build_transform

    images = adversarial_images(tmp_path / "odd")
    for preset in ("eval", "train"):
        dataset = ImageDataset([(str(path), 0) for path in images.values()], build_transform(preset, 224))
        for index, name in enumerate(images):
            started = time.perf_counter()
            tensor, _ = dataset[index]
            # A naive Resize(256) of the 20,000,000 x 1 strip asks for 5e9 x 256 pixels (minutes, gigabytes);
            # the bound only tells that from a crop's cost (milliseconds), with room for a loaded machine.
            assert time.perf_counter() - started < 30.0, f"{preset} preset on {name}"
            assert tensor.shape == (3, 224, 224) and torch.isfinite(tensor).all(), name


def test_a_data_set_of_odd_shapes_scans_and_loads(tmp_path):
    root = tmp_path / "set"
    for split in ("train", "val", "test"):
        for label in ("real", "fake"):
            (root / split / label).mkdir(parents=True)
            Image.new("RGB", (32, 32), (9, 9, 9)).save(root / split / label / "plain.png")
    adversarial_images(root / "val" / "real")
    result = scan_dataset(root)
    assert result.usable and not result.bad_files
    assert sorted(record.width for record in result.records if record.split == "val" and record.label == 0) == [
        1, 32, 3000, 12_000, 10_000_000, 20_000_000]
