"""Faults during training: a killed Ray Train worker and a killed driver lose no epoch and duplicate none."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepfake_platform.checkpoints import read_checkpoint
from deepfake_platform.data import build_dataset
from tests.proctools import find_descendant, kill_tree, user_env

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "reproduce_baseline.py"
EPOCHS = 4

pytestmark = [pytest.mark.ray, pytest.mark.fault, pytest.mark.long]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Enough tiny images that an epoch lasts a couple of seconds: time to kill something mid-run."""
    root = tmp_path_factory.mktemp("data") / "set"
    build_dataset(root, counts={"train": 160, "val": 10, "test": 8}, size=64)
    return root


def start_job(workdir: Path, data_root: Path, name: str) -> subprocess.Popen:
    env = user_env()
    log = open(workdir / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--smoke", "--data", str(data_root), "--name", name,
         "--epochs", str(EPOCHS), "--set", "train.batch_size=4", "--no-promote"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def epoch_files(workdir: Path, name: str) -> list[Path]:
    return sorted((workdir / "checkpoints" / name).glob("epoch_*_auc_*.pth"))


def assert_complete_and_consistent(workdir: Path, name: str) -> None:
    files = epoch_files(workdir, name)
    assert [p.name[:9] for p in files] == [f"epoch_{e:03d}" for e in range(EPOCHS)]  # none lost or duplicated
    for epoch, path in enumerate(files):
        record = read_checkpoint(path)
        assert record.epoch == epoch
        assert [int(row["epoch"]) for row in record.history] == list(range(epoch + 1))
    best = read_checkpoint(workdir / "checkpoints" / name / "best.pth")
    assert best.val_auc == max(read_checkpoint(p).val_auc for p in files)
    assert (workdir / "runs" / name / "RESULTS.md").is_file()


@pytest.mark.timeout(600)
def test_a_killed_worker_is_restored_from_the_latest_checkpoint(tmp_path, data_root):
    job = start_job(tmp_path, data_root, "K")
    try:
        wait_for(lambda: len(epoch_files(tmp_path, "K")) >= 1 or job.poll() is not None, 300, "the first checkpoint")
        worker = find_descendant(job.pid, "RayTrainWorker")
        assert worker is not None, "no Ray Train worker process found below the driver"
        assert len(epoch_files(tmp_path, "K")) < EPOCHS, "the run finished before the worker could be killed"
        os.kill(worker, 9)
        assert job.wait(timeout=400) == 0, (tmp_path / "K.log").read_text()[-3000:]
    finally:
        if job.poll() is None:
            kill_tree(job.pid)
    log = (tmp_path / "K.log").read_text()
    assert "Resuming after epoch" in log
    assert_complete_and_consistent(tmp_path, "K")


@pytest.mark.timeout(600)
def test_a_killed_driver_continues_when_rerun_with_the_same_name(tmp_path, data_root):
    job = start_job(tmp_path, data_root, "D")
    try:
        wait_for(lambda: len(epoch_files(tmp_path, "D")) >= 2 or job.poll() is not None, 300, "two checkpoints")
        assert len(epoch_files(tmp_path, "D")) < EPOCHS, "the run finished before the driver could be killed"
    finally:
        kill_tree(job.pid)
    job.wait(timeout=60)
    done = {p.name: p.stat().st_mtime_ns for p in epoch_files(tmp_path, "D")}

    rerun = start_job(tmp_path, data_root, "D")
    try:
        assert rerun.wait(timeout=400) == 0, (tmp_path / "D.log").read_text()[-3000:]
    finally:
        if rerun.poll() is None:
            kill_tree(rerun.pid)
    assert "Resuming after epoch" in (tmp_path / "D.log").read_text()
    files = epoch_files(tmp_path, "D")
    # Finished epochs are not trained again: their files are untouched (a half-done epoch may be redone).
    unchanged = [name for name, mtime in done.items() if any(p.name == name and p.stat().st_mtime_ns == mtime for p in files)]
    assert len(unchanged) >= len(done) - 1 and unchanged
    assert_complete_and_consistent(tmp_path, "D")
