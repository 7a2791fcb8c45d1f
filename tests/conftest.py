"""Fixtures shared by the test modules."""

from __future__ import annotations

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
