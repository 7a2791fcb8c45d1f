"""Face extraction: folders of real and fake videos and images in, the platform's data layout of face crops out.

Read top to bottom: what the input holds (`find_sources`), which split each source goes to
(`assign_splits`: whole sources, seeded, stratified by label, so no video has frames in two splits), one
source's crops (`extract_source`: sampled frames, faces, crops written where the data set lives), then
`run_extraction`, which runs the sources in this process or as Ray tasks (`--num-workers`, or a
cluster named by RAY_ADDRESS) and keeps the manifests: faces.parquet (one row per crop), sources.parquet
(one row per source: done, no face, unreadable) and faces.json (the face preset, recorded by training in
every checkpoint). A rerun skips the sources already done; a source that cannot be read is named and
skipped; nothing stops the run.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepfake_platform.data.faces import FacePreset, build_face_detector, crop_face
from deepfake_platform.data.images import BadImageError, is_image_name, load_image
from deepfake_platform.data.scan import CLASS_ALIASES, CLASSES, SPLIT_ALIASES, SPLITS, DatasetError
from deepfake_platform.data.sets import FACES_MANIFEST_FILE, FACES_PRESET_FILE
from deepfake_platform.data.video import DEFAULT_NUM_FRAMES, BadVideoError, is_video_name, sample_frames
from deepfake_platform.errors import InvalidInput
from deepfake_platform.files import write_atomic, write_text_atomic, write_to_path_atomic

SOURCES_FILE = "sources.parquet"
CROP_COLUMNS = ("crop", "source", "frame", "x", "y", "width", "height", "score", "split", "label")
SOURCE_COLUMNS = ("source", "kind", "label", "split", "status", "frames", "crops", "error")


@dataclass(frozen=True)
class Source:
    """One input file: an image or a video, its label (1 = fake) and, when the input was split already, its split."""

    path: str  # absolute
    relative: str  # relative to the input folder, with forward slashes: the source's name everywhere
    label: int
    kind: str  # "image" or "video"
    split: str | None = None


@dataclass
class SourceResult:
    """What extracting one source gave: its crops (manifest rows) or why it gave none."""

    source: str
    kind: str
    label: int
    split: str
    status: str  # "done", "no_face" or "unreadable"
    frames: int = 0
    error: str = ""
    crops: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The source's row of sources.parquet."""
        return {"source": self.source, "kind": self.kind, "label": self.label, "split": self.split,
                "status": self.status, "frames": self.frames, "crops": len(self.crops), "error": self.error}


# ---- the input -------------------------------------------------------------------------------------------


def find_sources(input_dir: str | Path) -> list[Source]:
    """Every image and video under `input_dir`'s real/ and fake/ folders (or under train/, val/, test/ each
    holding real/ and fake/, whose splits are kept)."""
    root = Path(input_dir).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"--input {root} is not a folder; pass a folder holding real/ and fake/ (videos or images).")
    splits = {split: child for split in SPLITS for child in root.iterdir()
              if child.is_dir() and child.name.lower() in SPLIT_ALIASES[split]}
    groups = [(split, folder) for split, folder in splits.items()] if splits else [(None, root)]
    sources = []
    for split, folder in groups:
        for label, name in enumerate(CLASSES):
            matches = [child for child in folder.iterdir() if child.is_dir() and child.name.lower() in CLASS_ALIASES[name]]
            for class_dir in matches:
                for path in sorted(class_dir.rglob("*")):
                    if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
                        continue
                    kind = "video" if is_video_name(path) else "image" if is_image_name(path) else None
                    if kind is not None:
                        sources.append(Source(str(path), path.relative_to(root).as_posix(), label, kind, split))
    if not sources:
        raise DatasetError(
            f"{root} holds no videos or images under real/ and fake/ (or train/, val/, test/ with real/ and fake/); "
            "put the real ones in real/ and the manipulated ones in fake/."
        )
    return sources


def assign_splits(sources: list[Source], *, val: float = 0.15, test: float = 0.15, seed: int = 0) -> dict[str, str]:
    """Source name -> split, whole sources only, seeded and stratified by label; pre-split sources keep theirs.

    Each label's sources are shuffled and cut into train, val and test by the fractions; with at least three
    sources of a label, every split gets at least one.
    """
    chosen = {source.relative: source.split for source in sources if source.split is not None}
    for label in (0, 1):
        group = sorted(source.relative for source in sources if source.split is None and source.label == label)
        random.Random(f"{seed}:{label}").shuffle(group)
        n = len(group)
        n_val = max(1, round(n * val)) if n >= 3 and val > 0 else 0
        n_test = max(1, round(n * test)) if n >= 3 and test > 0 else 0
        for index, name in enumerate(group):
            chosen[name] = "val" if index < n_val else "test" if index < n_val + n_test else "train"
    return chosen


# ---- one source ------------------------------------------------------------------------------------------


def extract_source(source: Source, split: str, out_dir: str, preset: dict[str, Any], num_frames: int,
                   every: int) -> SourceResult:
    """Sample the source's frames, find faces, write one crop per face under out_dir/split/class/; never raises
    for a bad file (it comes back `unreadable` with the reason)."""
    face_preset = FacePreset.from_dict(preset)
    result = SourceResult(source.relative, source.kind, source.label, split, "done")
    try:
        if source.kind == "video":
            frames = sample_frames(source.path, num_frames=num_frames, every=every)
        else:
            frames = [(0, load_image(source.path))]
    except (BadVideoError, BadImageError) as err:
        result.status, result.error = "unreadable", getattr(err, "reason", str(err))
        return result
    except Exception as err:  # anything else a broken file can raise: named, skipped, the run goes on
        result.status, result.error = "unreadable", f"{type(err).__name__}: {err}"
        return result
    result.frames = len(frames)
    detector = build_face_detector(face_preset)
    folder = Path(out_dir) / split / CLASSES[source.label]
    folder.mkdir(parents=True, exist_ok=True)
    # The source's name, hashed, keeps crops of same-named files in different folders apart.
    stem = f"{Path(source.relative).stem[:40]}_{hashlib.sha1(source.relative.encode()).hexdigest()[:8]}"
    for frame_index, frame in frames:
        boxes = detector.detect(frame)
        if face_preset.mode == "largest":
            boxes = boxes[:1]
        for k, box in enumerate(boxes):
            crop = crop_face(frame, box, margin=face_preset.margin, crop_size=face_preset.crop_size)
            path = folder / f"{stem}_f{frame_index:06d}_{k}.png"
            write_atomic(path, lambda handle, crop=crop: crop.save(handle, format="PNG"))
            result.crops.append({"crop": path.relative_to(out_dir).as_posix(), "source": source.relative,
                                 "frame": int(frame_index), "x": box.x, "y": box.y, "width": box.width,
                                 "height": box.height, "score": float(box.score), "split": split,
                                 "label": source.label})
    if not result.crops:
        result.status = "no_face"
    return result


# ---- the run ---------------------------------------------------------------------------------------------


@dataclass
class ExtractionSummary:
    """What a run did, for the closing table."""

    sources: int
    skipped_done: int
    done: list[str]
    no_face: list[str]
    unreadable: list[tuple[str, str]]
    crops_by_split: dict[str, dict[str, int]]
    seconds: float
    frames: int

    def render(self) -> str:
        """The summary printed at the end of extract_faces.py."""
        lines = [f"{self.sources} source(s): {len(self.done)} extracted now, {self.skipped_done} done before, "
                 f"{len(self.no_face)} without a face, {len(self.unreadable)} unreadable; {self.frames} frame(s) "
                 f"in {self.seconds:.0f} s ({self.frames / max(self.seconds, 1e-9):.1f} frames/s)."]
        lines += [f"  {split:<5} " + ", ".join(f"{counts[name]} {name}" for name in CLASSES) + " crops"
                  for split, counts in self.crops_by_split.items()]
        if self.no_face:
            lines.append("No face found in: " + ", ".join(self.no_face[:20]) + (" ..." if len(self.no_face) > 20 else ""))
        if self.unreadable:
            lines.append("Unreadable (skipped): " + "; ".join(f"{name} ({why})" for name, why in self.unreadable[:20]))
        return "\n".join(lines)


def run_extraction(input_dir: str | Path, out_dir: str | Path, preset: FacePreset, *,
                   num_frames: int = DEFAULT_NUM_FRAMES,
                   every: int = 0, val: float = 0.15, test: float = 0.15, seed: int = 0, use_ray: bool = False,
                   progress: bool = True) -> ExtractionSummary:
    """Extract every source of `input_dir` not yet done into `out_dir`; see the module docstring."""
    if preset.mode == "off":
        raise InvalidInput("face extraction needs --faces largest or all (off keeps whole pictures: use the folder as is).")
    started = time.perf_counter()
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    sources = find_sources(input_dir)
    settings = {"preset": preset.to_dict(), "sampling": {"num_frames": num_frames, "every": every},
                "splits": {"val": val, "test": test, "seed": seed}, "input": str(Path(input_dir).resolve())}
    _check_or_write_settings(out, settings)
    splits = assign_splits(sources, val=val, test=test, seed=seed)
    previous = _read_rows(out / SOURCES_FILE)
    crops = [row for row in _read_rows(out / FACES_MANIFEST_FILE)]
    done_before = {row["source"] for row in previous}
    todo = [source for source in sources if source.relative not in done_before]
    rows = list(previous)
    for result in _results(todo, splits, out, preset.to_dict(), num_frames, every, use_ray, progress):
        rows.append(result.row())
        crops += result.crops
        if len(rows) % 20 == 0:  # a run stopped halfway keeps what it did
            _write_manifests(out, rows, crops)
    _write_manifests(out, rows, crops)
    new = [row for row in rows if row["source"] not in done_before]
    by_split = {split: dict.fromkeys(CLASSES, 0) for split in SPLITS}
    for row in crops:
        by_split[row["split"]][CLASSES[row["label"]]] += 1
    return ExtractionSummary(
        sources=len(sources), skipped_done=len(sources) - len(todo),
        done=[row["source"] for row in new if row["status"] == "done"],
        no_face=[row["source"] for row in rows if row["status"] == "no_face"],
        unreadable=[(row["source"], row["error"]) for row in rows if row["status"] == "unreadable"],
        crops_by_split=by_split, seconds=time.perf_counter() - started, frames=sum(row["frames"] for row in new))


def _results(todo: list[Source], splits: dict[str, str], out: Path, preset: dict[str, Any], num_frames: int,
             every: int, use_ray: bool, progress: bool) -> Iterator[SourceResult]:
    from tqdm import tqdm

    with tqdm(total=len(todo), unit="source", desc="extracting faces", file=sys.stderr,
              disable=not progress or not todo) as bar:
        if not use_ray:
            for source in todo:
                yield extract_source(source, splits[source.relative], str(out), preset, num_frames, every)
                bar.update(1)
            return
        import ray  # ray:

        task = ray.remote(num_cpus=1, max_retries=2)(extract_source)  # ray: a lost node's sources run again
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))  # ray: bounded in flight
        pending: dict[Any, Source] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < window:
                source = queue.pop(0)
                pending[task.remote(source, splits[source.relative], str(out), preset, num_frames, every)] = source
            ready, _ = ray.wait(list(pending), num_returns=1)  # ray:
            pending.pop(ready[0])
            yield ray.get(ready[0])  # ray:
            bar.update(1)


def _check_or_write_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / FACES_PRESET_FILE
    if path.is_file():
        existing = json.loads(path.read_text())
        if {key: existing.get(key) for key in ("preset", "sampling", "splits")} != {
                key: settings[key] for key in ("preset", "sampling", "splits")}:
            raise InvalidInput(
                f"{out} was extracted with other settings ({existing.get('preset')}, {existing.get('sampling')}, "
                f"{existing.get('splits')}); a rerun continues it with the same ones. Pass the same options, or "
                "choose a new --out."
            )
        return
    write_text_atomic(path, json.dumps(settings, indent=2) + "\n")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _write_manifests(out: Path, rows: list[dict[str, Any]], crops: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, records, columns in ((SOURCES_FILE, rows, SOURCE_COLUMNS), (FACES_MANIFEST_FILE, crops, CROP_COLUMNS)):
        table = pa.Table.from_pylist([{column: record[column] for column in columns} for record in records]) if records \
            else pa.table({column: pa.array([], type=pa.string()) for column in columns})
        write_to_path_atomic(out / name, lambda tmp, table=table: pq.write_table(table, tmp))


def source_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a data set's sources.parquet (what extraction did with each source)."""
    return _read_rows(Path(out_dir) / SOURCES_FILE)

