"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from deepfake_platform.data import build_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A tiny real/fake set (16 train, 9 val, 8 test at 64 px); 9 does not divide by 2 workers."""
    root = tmp_path_factory.mktemp("data") / "set"
    build_dataset(root, counts={"train": 16, "val": 10, "test": 8}, size=64)
    sorted((root / "val" / "fake").iterdir())[-1].unlink()
    return root


REPO = Path(__file__).resolve().parents[1]


def device(path: Path) -> int:
    """The filesystem a path is on."""
    return os.stat(path).st_dev


@pytest.fixture
def split_filesystems(tmp_path):
    """(outputs, temporary folder) on two different filesystems where the machine has two: /dev/shm (tmpfs) or
    the repository's disk for the outputs, /tmp for TMPDIR (Fedora, Arch, containers, a home on NFS: a hard link
    or rename between them fails with EXDEV). Elsewhere both are folders of tmp_path: the jobs run as before and
    tests/test_filesystems.py skips what needs two filesystems. The main job (tests/test_training.py) and the
    resumed sweep (tests/test_tuning.py) run with their outputs here, so that each job is run once."""
    temp = Path(tempfile.mkdtemp(prefix="xfs-", dir="/tmp"))  # short: Ray's socket paths live under it
    candidates = [Path("/dev/shm"), REPO]
    base = next((c for c in candidates if c.is_dir() and os.access(c, os.W_OK) and device(c) != device(temp)), None)
    outputs = Path(tempfile.mkdtemp(prefix=".xfs-outputs-", dir=base or tmp_path))
    try:
        yield outputs, temp
    finally:
        shutil.rmtree(outputs, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)
