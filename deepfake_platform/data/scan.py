"""Finding a data set's images, checking that each one decodes, and remembering the answer.

A data root holds train/, val/ and test/, each with real/ (label 0) and fake/ (label 1). Every image is
decoded once; the result (size, mtime, content hash, dimensions, or why it failed) goes to a Parquet
manifest, so reruns and the other workers of a distributed run only decode new or changed files.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from deepfake_platform.data.images import BadImageError, is_image_name, load_image
from deepfake_platform.errors import UserError
from deepfake_platform.files import write_to_path_atomic

SPLITS = ("train", "val", "test")
CLASSES = ("real", "fake")  # the position is the label: 1 means fake
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
CLASS_ALIASES = {"real": ("real", "0_real"), "fake": ("fake", "1_fake")}
MANIFEST_NAME = ".manifest.parquet"

EXPECTED_LAYOUT = """\
DATA_ROOT/
├── train/
│   ├── real/   photographs (label 0)
│   └── fake/   generated or manipulated images (label 1)
├── val/        real/ and fake/ as above (valid/ and validation/ also work)
└── test/       real/ and fake/ as above
Folder names are case-insensitive; real/ and fake/ may also be called 0_real/ and 1_fake/."""

_MANIFEST_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("split", pa.string()),
    ("label", pa.int8()),
    ("size", pa.int64()),
    ("mtime", pa.float64()),
    ("sha256", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("error", pa.string()),
])


class DatasetError(UserError, ValueError):
    """A data root that cannot be trained or evaluated on: missing or empty splits or classes."""


@dataclass(frozen=True)
class ImageRecord:
    """One file of the data set as the manifest stores it; `error` is set when it does not decode."""

    path: str  # relative to the data root, with forward slashes
    split: str
    label: int
    size: int
    mtime: float
    sha256: str
    width: int | None
    height: int | None
    error: str | None


@dataclass
class ScanResult:
    """What a scan found: readable images, unreadable files with reasons, and layout problems."""

    root: Path
    splits: tuple[str, ...]
    folders: dict[str, dict[int, Path]]
    records: list[ImageRecord]
    bad_records: list[ImageRecord]
    ignored: list[str] = field(default_factory=list)
    layout_problems: list[str] = field(default_factory=list)

    @property
    def bad_files(self) -> list[tuple[str, str]]:
        """(path relative to the root, reason) of every file that did not decode."""
        return [(record.path, record.error or "") for record in self.bad_records]

    def counts(self) -> dict[str, dict[str, int]]:
        """Readable images per split and class: {"train": {"real": n, "fake": n}, ...}."""
        counts = {split: dict.fromkeys(CLASSES, 0) for split in self.splits}
        for record in self.records:
            counts[record.split][CLASSES[record.label]] += 1
        return counts

    @property
    def problems(self) -> list[str]:
        """Sentences saying why the data set cannot be used; empty when it can."""
        problems = list(self.layout_problems)
        counts = self.counts()
        for split, by_label in self.folders.items():
            for label, folder in by_label.items():
                if counts[split][CLASSES[label]] == 0:
                    problems.append(f"{folder.relative_to(self.root).as_posix()}/ holds no readable images.")
        return problems

    @property
    def usable(self) -> bool:
        """True when every scanned split has readable real and fake images."""
        return not self.problems

    def samples(self, split: str) -> list[tuple[str, int]]:
        """(absolute path, label) of the readable images of one split, in a stable order."""
        return [(str(self.root / r.path), r.label) for r in self.records if r.split == split]

    def raise_if_unusable(self) -> None:
        """Raise DatasetError naming every problem and drawing the expected layout."""
        if self.problems:
            listed = "\n".join(f"  - {problem}" for problem in self.problems)
            raise DatasetError(
                f"The data set at {self.root} cannot be used:\n{listed}\nExpected layout:\n{EXPECTED_LAYOUT}"
            )


def resolve_layout(
    root: Path, splits: tuple[str, ...] = SPLITS, classes: tuple[str, ...] = CLASSES
) -> tuple[dict[str, dict[int, Path]], list[str]]:
    """Map each split and label to its folder under `root`, accepting the usual name variants; a class
    not in `classes` may be missing (real faces alone, for training on self-blended pseudo-fakes)."""
    folders: dict[str, dict[int, Path]] = {}
    problems: list[str] = []
    for split in splits:
        split_dir = _find_child(root, SPLIT_ALIASES[split], "the data root", problems)
        if split_dir is None:
            continue
        folders[split] = {}
        for label, name in enumerate(CLASSES):
            found: list[str] = []
            class_dir = _find_child(split_dir, CLASS_ALIASES[name], f"{split_dir.name}/", found)
            if name in classes or class_dir is not None:
                problems += found
            if class_dir is not None:
                folders[split][label] = class_dir
    return folders, problems


def _find_child(parent: Path, aliases: tuple[str, ...], where: str, problems: list[str]) -> Path | None:
    matches = sorted(child for child in parent.iterdir() if child.is_dir() and child.name.lower() in aliases)
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = " and ".join(f"{match.name}/" for match in matches)
        problems.append(f"{where} has both {names}; keep one of them.")
    else:
        variants = ", ".join(f"{alias}/" for alias in aliases[1:])
        problems.append(f"{where} has no {aliases[0]}/ folder (also accepted: {variants}).")
    return None


def scan_dataset(
    root: str | Path, manifest_path: str | Path | None = None, *, splits: tuple[str, ...] = SPLITS,
    write_manifest: bool = True, classes: tuple[str, ...] = CLASSES,
) -> ScanResult:
    """Scan `root`, decoding only files that are new or changed since the manifest was written."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"The data root {root} is not a folder.\nExpected layout:\n{EXPECTED_LAYOUT}")
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from {', '.join(SPLITS)}.")
    manifest_path = Path(manifest_path) if manifest_path else root / MANIFEST_NAME
    previous = read_manifest(manifest_path)
    folders, layout_problems = resolve_layout(root, splits, classes)

    found: list[ImageRecord] = []
    ignored: list[str] = []
    for split, by_label in folders.items():
        for label, folder in by_label.items():
            for path in sorted(folder.rglob("*")):
                relative = path.relative_to(root)
                if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
                    continue
                if not is_image_name(path):
                    ignored.append(relative.as_posix())
                    continue
                found.append(_reuse_or_inspect(path, relative.as_posix(), split, label, previous))

    # Rows of splits this scan did not look at stay in the manifest as they were.
    carried = [record for record in previous.values() if record.split not in splits]
    if write_manifest and set(found) | set(carried) != set(previous.values()):
        _write_manifest(manifest_path, carried + found)
    return ScanResult(
        root=root,
        splits=tuple(splits),
        folders=folders,
        records=[record for record in found if record.error is None],
        bad_records=[record for record in found if record.error is not None],
        ignored=ignored,
        layout_problems=layout_problems,
    )


def _reuse_or_inspect(path: Path, relative: str, split: str, label: int,
                      previous: dict[str, ImageRecord]) -> ImageRecord:
    stat = path.stat()
    known = previous.get(relative)
    if known is not None and (known.size, known.mtime, known.split, known.label) == (
        stat.st_size, stat.st_mtime, split, label
    ):
        return known
    return inspect_image(path, relative, split, label)


def inspect_image(path: Path, relative: str, split: str, label: int) -> ImageRecord:
    """Hash and fully decode one file; a file that does not decode gets its reason in `error`."""
    stat = path.stat()
    content = path.read_bytes()
    width = height = error = None
    try:
        width, height = load_image(content).size
    except BadImageError as bad:
        error = bad.reason
    return ImageRecord(
        path=relative, split=split, label=label, size=stat.st_size, mtime=stat.st_mtime,
        sha256=hashlib.sha256(content).hexdigest(), width=width, height=height, error=error,
    )


def read_manifest(path: str | Path) -> dict[str, ImageRecord]:
    """The records of a manifest by relative path; empty when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return {}  # a half-written or foreign file: rescanning is always safe
    if set(table.column_names) != {f.name for f in fields(ImageRecord)}:
        return {}
    return {row["path"]: ImageRecord(**row) for row in table.to_pylist()}


def _write_manifest(path: Path, records: list[ImageRecord]) -> None:
    table = pa.Table.from_pylist([asdict(record) for record in records], schema=_MANIFEST_SCHEMA)
    try:
        # Atomic: workers scanning the same root never read a half-written file.
        write_to_path_atomic(path, lambda temporary: pq.write_table(table, temporary))
    except OSError as error:
        warnings.warn(
            f"could not write the manifest {path} ({error}); the next run will decode every image again. "
            "Pass a writable manifest path to avoid that.",
            stacklevel=3,
        )


def load_split(root: str | Path, split: str, manifest: str | Path | None = None, *,
               require_classes: tuple[str, ...] = CLASSES) -> list[tuple[str, int]]:
    """(absolute path, label) of one split's readable images; unreadable ones are skipped with a warning."""
    result = scan_dataset(root, manifest, splits=(split,), classes=require_classes)
    if result.bad_files:
        shown = "; ".join(f"{path}: {reason}" for path, reason in result.bad_files[:20])
        more = f"; and {len(result.bad_files) - 20} more" if len(result.bad_files) > 20 else ""
        warnings.warn(
            f"skipped {len(result.bad_files)} unreadable file(s) in the {split} split of {result.root}: "
            f"{shown}{more}. Run experiments/check_dataset.py {result.root} for the full list.",
            stacklevel=2,
        )
    result.raise_if_unusable()
    return result.samples(split)
