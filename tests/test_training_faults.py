"""Faults during training: a killed driver and a killed Ray Train worker lose no epoch and duplicate none."""

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


@pytest.mark.timeout(900)
def test_a_killed_driver_continues_when_rerun_and_a_killed_worker_is_restored_from_the_latest_checkpoint(
        tmp_path, data_root):
    # One run meets both faults (each costs a whole run when tested alone): its driver is killed after two
    # epochs; the rerun with the same name continues, and its Ray Train worker is killed as soon as it resumed.
    log_path = tmp_path / "F.log"
    job = start_job(tmp_path, data_root, "F")
    try:
        wait_for(lambda: len(epoch_files(tmp_path, "F")) >= 2 or job.poll() is not None, 300, "two checkpoints")
        assert len(epoch_files(tmp_path, "F")) < EPOCHS, "the run finished before the driver could be killed"
    finally:
        kill_tree(job.pid)
    job.wait(timeout=60)
    done = {p.name: p.stat().st_mtime_ns for p in epoch_files(tmp_path, "F")}
    first_run = len(log_path.read_text())

    def rerun_log() -> str:
        return log_path.read_text()[first_run:]

    rerun = start_job(tmp_path, data_root, "F")
    try:
        wait_for(lambda: "Resuming after epoch" in rerun_log() or rerun.poll() is not None, 300, "the rerun to resume")
        worker = find_descendant(rerun.pid, "RayTrainWorker")
        assert worker is not None, "no Ray Train worker process found below the driver"
        assert len(epoch_files(tmp_path, "F")) < EPOCHS, "the run finished before the worker could be killed"
        os.kill(worker, 9)
        assert rerun.wait(timeout=400) == 0, log_path.read_text()[-3000:]
    finally:
        if rerun.poll() is None:
            kill_tree(rerun.pid)
    # Resumed twice: the rerun from the killed driver's checkpoints, then the restored worker group.
    assert rerun_log().count("Resuming after epoch") >= 2, rerun_log()[-3000:]
    files = epoch_files(tmp_path, "F")
    # Finished epochs are not trained again: their files are untouched (a half-done epoch may be redone).
    unchanged = [name for name, mtime in done.items() if any(p.name == name and p.stat().st_mtime_ns == mtime for p in files)]
    assert len(unchanged) >= len(done) - 1 and unchanged
    assert_complete_and_consistent(tmp_path, "F")
