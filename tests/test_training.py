"""The main job end to end on a real local Ray: checkpoints, resume, TensorBoard, report, promotion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_platform.checkpoints import read_checkpoint
from deepfake_platform.orchestration.report import SECTIONS
from deepfake_platform.training import ShardSampler

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "reproduce_baseline.py"


def run_job(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the main job as a user would, in `workdir`, on a fresh local Ray of its own."""
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_shard_sampler_covers_every_index_once():
    shards = [list(ShardSampler(9, rank, 2)) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(9))
    assert (len(shards[0]), len(shards[1])) == (5, 4)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_smoke_run_then_resume(tmp_path, data_root):
    run_job(tmp_path, "--smoke", "--data", str(data_root), "--name", "X", "--epochs", "2")
    checkpoints = tmp_path / "checkpoints" / "X"
    epoch_files = sorted(checkpoints.glob("epoch_*_auc_*.pth"))
    assert [p.name[:9] for p in epoch_files] == ["epoch_000", "epoch_001"]
    for path in [*epoch_files, checkpoints / "best.pth"]:
        record = read_checkpoint(path)  # weights_only=True inside
        assert record.optimizer_state_dict and record.detector == "hybrid_tiny" and record.config["name"] == "X"
        assert record.parameters["total"] > 0 and len(record.val_scores["real"]) + len(record.val_scores["fake"]) == 9
        assert f"{record.val_auc:.4f}" in path.name or path.name == "best.pth"
    best = read_checkpoint(checkpoints / "best.pth")
    assert best.val_auc == max(read_checkpoint(p).val_auc for p in epoch_files)

    run_dir = tmp_path / "runs" / "X"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    report = (run_dir / "RESULTS.md").read_text()
    for section in SECTIONS:
        assert section in report
    assert (run_dir / "roc_test.png").stat().st_size > 0 and (run_dir / "training_curves.png").stat().st_size > 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["metrics"]["n"] == 8
    assert [row["epoch"] for row in results["history"]] == [0, 1]
    promoted = read_checkpoint(tmp_path / "artifacts" / "best.pth")
    assert promoted.optimizer_state_dict is None and promoted.epoch == best.epoch
    assert json.loads((tmp_path / "artifacts" / "best.json").read_text())["run"] == "X"

    before = {p.name: p.stat().st_mtime_ns for p in epoch_files}
    resumed = run_job(tmp_path, "--smoke", "--data", str(data_root), "--resume", str(epoch_files[-1]), "--epochs", "3")
    assert "Resuming after epoch 1" in resumed.stdout + resumed.stderr
    after = sorted(checkpoints.glob("epoch_*_auc_*.pth"))
    assert [p.name[:9] for p in after] == ["epoch_000", "epoch_001", "epoch_002"]
    assert {p.name: p.stat().st_mtime_ns for p in after if p.name in before} == before  # 0 and 1 not retrained
    third = read_checkpoint(after[-1])
    assert third.epoch == 2
    assert [row["epoch"] for row in third.history] == [0, 1, 2]
    assert "## Training by epoch" in (run_dir / "RESULTS.md").read_text()


def test_resume_past_the_last_epoch_is_a_sentence(tmp_path):
    from deepfake_platform.checkpoints import CheckpointError
    from deepfake_platform.orchestration.train import check_resume
    from tests.factories import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "e1.pth", epoch=1)
    with pytest.raises(CheckpointError, match="pass --epochs above 2"):
        check_resume(str(path), epochs=2)
    check_resume(str(path), epochs=3)


def test_bad_cli_input_is_one_line_not_a_traceback(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "local"}
    for args, message in [
        (["--data", str(tmp_path / "missing")], "does not exist"),
        (["--set", "train.lr"], "key=value"),
        (["--resume", str(tmp_path / "nope.pth")], "does not exist"),
    ]:
        result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
