"""Two Ray Train workers keep one worker's training semantics: DDP, a distributed sampler, every
validation image scored exactly once, and losses close to the one-worker run on the same data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from deepfake_platform.checkpoints import read_checkpoint
from deepfake_platform.config import load_config
from deepfake_platform.data import build_dataset
from deepfake_platform.orchestration.cluster import ensure_ray
from deepfake_platform.orchestration.train import build_trainer

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, VAL_IMAGES = 16, 9


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """16 training images and 9 validation images: 9 does not divide by 2 workers."""
    root = tmp_path_factory.mktemp("data") / "set"
    build_dataset(root, counts={"train": TRAIN_IMAGES, "val": VAL_IMAGES + 1, "test": 8}, size=64)
    sorted((root / "val" / "fake").iterdir())[-1].unlink()
    return root


@pytest.fixture(scope="module")
def local_ray():
    """A fresh local Ray for this module (never another test's cluster on this machine)."""
    import ray

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_ADDRESS", "local")
        ensure_ray()
        yield
        ray.shutdown()


def train(data_root: Path, out: Path, num_workers: int) -> list[dict[str, float]]:
    """Two epochs of the smoke experiment with `num_workers` x 1 CPU; the per-epoch metrics of rank 0."""
    config = load_config(REPO / "experiments" / "configs" / "smoke.yaml")
    config.name = f"workers{num_workers}"
    config.scaling.num_workers = num_workers
    config.scaling.cpus_per_worker = 1
    config.train.precision = "fp32"
    # The same global batch: 16 images per step either way, so one step per epoch in both runs.
    config.train.batch_size = TRAIN_IMAGES // num_workers
    for key in ("checkpoints_dir", "runs_dir", "artifacts_dir", "storage_path"):
        setattr(config.output, key, str(out / key))
    build_trainer(config, data_root).fit()
    last = sorted((out / "checkpoints_dir" / config.name).glob("epoch_*.pth"))[-1]
    return read_checkpoint(last).history


@pytest.mark.ray
@pytest.mark.long
@pytest.mark.timeout(300)
def test_two_workers_match_one_worker(tmp_path, data_root, local_ray):
    one = train(data_root, tmp_path, 1)
    two = train(data_root, tmp_path, 2)

    assert [row["world_size"] for row in one] == [1, 1] and [row["world_size"] for row in two] == [2, 2]
    # The distributed sampler gives each worker half of the training set (rank 0 reports its share).
    assert [row["train_images"] for row in one] == [TRAIN_IMAGES] * 2
    assert [row["train_images"] for row in two] == [TRAIN_IMAGES // 2] * 2
    # Validation gathers every worker's share: all 9 images, each once (a padding sampler would score 10).
    assert [row["val_images"] for row in one] == [row["val_images"] for row in two] == [VAL_IMAGES] * 2
    for single, pair in zip(one, two, strict=True):
        # DDP averages the two workers' gradients: one step on 16 images either way, so the models and
        # their losses stay close (not equal: BatchNorm statistics and crops are per worker).
        assert math.isclose(single["val_loss"], pair["val_loss"], abs_tol=0.02), (single, pair)
        assert math.isclose(single["train_loss"], pair["train_loss"], abs_tol=0.02), (single, pair)
