"""The main job end to end on a real local Ray: checkpoints, resume, TensorBoard, report, promotion."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_platform.checkpoints import read_checkpoint
from deepfake_platform.orchestration.report import SECTIONS
from deepfake_platform.training import ShardSampler
from tests.proctools import user_env

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "reproduce_baseline.py"


def run_job(workdir: Path, *args: str, timeout: int = 300, temp: Path | None = None) -> subprocess.CompletedProcess:
    """Run the main job as a user would, in `workdir`, on a fresh local Ray of its own (under TMPDIR `temp`)."""
    env = user_env(**({"TMPDIR": str(temp)} if temp else {}))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Invalid cross-device link" not in result.stdout + result.stderr
    return result


def test_shard_sampler_covers_every_index_once():
    shards = [list(ShardSampler(9, rank, 2)) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(9))
    assert (len(shards[0]), len(shards[1])) == (5, 4)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_smoke_run_then_resume(split_filesystems, data_root):
    # Outputs on another filesystem than TMPDIR where the machine has one (tests/test_filesystems.py): every
    # staging copy, rename and link of a run must work there (EXDEV), as on a tmpfs /tmp or an NFS home.
    home, temp = split_filesystems
    first = run_job(home, "--smoke", "--data", str(data_root), "--name", "X", "--epochs", "2",
                    "--set", "train.precision=fp32", temp=temp)
    # A clean console: one summary line per epoch and the report; Ray's per-report chatter is in its logs.
    console = first.stdout + first.stderr
    assert len(re.findall(r"epoch \d: train loss", console)) == 2, console[-3000:]
    for chatter in ("Reporting training result", "Checkpoint successfully created", "Started training worker group",
                    "Token authentication is enabled", "core_worker.cc", "TrainController"):
        assert chatter not in console
    assert "Report: " in console and "Wall time" in console
    checkpoints = home / "checkpoints" / "X"
    epoch_files = sorted(checkpoints.glob("epoch_*_auc_*.pth"))
    assert [p.name[:9] for p in epoch_files] == ["epoch_000", "epoch_001"]
    for path in [*epoch_files, checkpoints / "best.pth"]:
        record = read_checkpoint(path)  # weights_only=True inside
        assert record.optimizer_state_dict and record.detector == "hybrid_tiny" and record.config["name"] == "X"
        assert record.parameters["total"] > 0 and len(record.val_scores["real"]) + len(record.val_scores["fake"]) == 9
        assert f"{record.val_auc:.4f}" in path.name or path.name == "best.pth"
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]  # no staging file left behind
    # Ray's own copy of the latest checkpoint, made from the staging folder beside the epoch files.
    assert list((home / "ray_results").rglob("checkpoint.pth"))
    best = read_checkpoint(checkpoints / "best.pth")
    assert best.val_auc == max(read_checkpoint(p).val_auc for p in epoch_files)

    run_dir = home / "runs" / "X"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    report = (run_dir / "RESULTS.md").read_text()
    for section in SECTIONS:
        assert section in report
    assert (run_dir / "roc_test.png").stat().st_size > 0 and (run_dir / "training_curves.png").stat().st_size > 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["metrics"]["n"] == 8
    # The threads the worker really ran (Ray reserves the node's CPUs for one worker), not a config's 0.
    threads = results["hardware"]["threads_per_worker"]
    assert threads == int(results["hardware"]["cpus_per_worker"]) >= 1
    assert f"| threads_per_worker | {threads} |" in report
    assert [row["epoch"] for row in results["history"]] == [0, 1]
    promoted = read_checkpoint(home / "artifacts" / "best.pth")
    assert promoted.optimizer_state_dict is None and promoted.epoch == best.epoch
    assert json.loads((home / "artifacts" / "best.json").read_text())["run"] == "X"
    assert json.loads((home / "artifacts" / "best.json").read_text())["best"]["epoch"] == best.epoch
    # Tracked in the home's MLflow store and registered as the champion (the first version).
    assert "Registered as version 1 of the detector, the champion." in console
    client, run = tracked_run(home, "X")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [0, 1]
    assert run.data.params["train.precision"] == "fp32" and run.data.metrics["test_auc"] == results["test"]["metrics"]["auc"]
    logged = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"RESULTS.md", "results.json", "roc_test.png", "model"} <= logged
    assert (home / "artifacts" / "best.pth").read_bytes() == (home / "artifacts" / "models" / "v1.pth").read_bytes()
    assert client.get_model_version_by_alias("deepfake-detector", "champion").run_id == run.info.run_id
    # One predict path: evaluate.py on the validation split finds the AUC training recorded.
    evaluated = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "evaluate.py"), "--checkpoint", str(checkpoints / "best.pth"),
         "--data", str(data_root), "--split", "val", "--out", str(home / "val.json")],
        cwd=home, env=user_env(), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((home / "val.json").read_text())["metrics"]["auc"] == pytest.approx(best.val_auc, abs=1e-9)

    before = {p.name: p.stat().st_mtime_ns for p in epoch_files}
    resumed = run_job(home, "--smoke", "--data", str(data_root), "--resume", str(epoch_files[-1]), "--epochs", "3",
                      temp=temp)
    assert "Resuming after epoch 1" in resumed.stdout + resumed.stderr
    after = sorted(checkpoints.glob("epoch_*_auc_*.pth"))
    assert [p.name[:9] for p in after] == ["epoch_000", "epoch_001", "epoch_002"]
    assert {p.name: p.stat().st_mtime_ns for p in after if p.name in before} == before  # 0 and 1 not retrained
    third = read_checkpoint(after[-1])
    assert third.epoch == 2
    assert [row["epoch"] for row in third.history] == [0, 1, 2]
    assert "## Training by epoch" in (run_dir / "RESULTS.md").read_text()


def tracked_run(home: Path, name: str):
    """The MLflow client of the output home's store and the (one) run named `name` in it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("deepfake-platform")
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def test_resume_past_the_last_epoch_is_a_sentence(tmp_path):
    from deepfake_platform.checkpoints import CheckpointError
    from deepfake_platform.orchestration.train import check_resume
    from tests.factories import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "e1.pth", epoch=1)
    with pytest.raises(CheckpointError, match="pass --epochs above 2"):
        check_resume(str(path), epochs=2)
    check_resume(str(path), epochs=3)


def test_bad_cli_input_is_one_line_not_a_traceback(tmp_path):
    env = user_env()
    for args, message in [
        (["--data", str(tmp_path / "missing")], "does not exist"),
        (["--set", "train.lr"], "key=value"),
        (["--resume", str(tmp_path / "nope.pth")], "does not exist"),
    ]:
        result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.ray
@pytest.mark.long
@pytest.mark.timeout(300)
def test_a_diverging_run_stops_with_one_sentence_and_is_not_retried(tmp_path, data_root):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--data", str(data_root), "--name", "D", "--set", "train.lr=1e6",
         "--verbose"], cwd=tmp_path, env=user_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(r"error: training diverged at epoch 0, step \d+: the loss became nan at learning rate 1e\+06", last)
    assert "Traceback" not in result.stderr
    # --verbose shows Ray's INFO lines: the worker group started once, so the failure was not retried.
    assert (result.stdout + result.stderr).count("Started training worker group") == 1
    assert not list((tmp_path / "checkpoints" / "D").glob("*.pth"))  # nothing non-finite was written
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.ray
@pytest.mark.fault
@pytest.mark.long
@pytest.mark.timeout(300)
def test_ctrl_c_stops_the_run_keeps_its_checkpoints_and_says_how_to_continue(tmp_path, data_root):
    from deepfake_platform.checkpoints import epoch_checkpoints
    from tests.proctools import interrupt, wait_until

    log = tmp_path / "run.log"
    with log.open("w") as output:
        job = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--smoke", "--data", str(data_root), "--name", "C", "--epochs", "50"],
            cwd=tmp_path, env=user_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoints = tmp_path / "checkpoints" / "C"
    try:
        wait_until(lambda: epoch_checkpoints(checkpoints, epoch=0), job, log, 200)
        interrupt(job, twice=True)  # Ctrl-C, and an impatient second one: Ray's processes go with the run
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("Stopped: kept ") and "--name=C" in last and "Continue with: python " in last
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]  # no half-written file
    for path in checkpoints.glob("*.pth"):
        assert read_checkpoint(path).detector == "hybrid_tiny"


def test_the_epoch_loop_runs_without_ray(tmp_path, data_root):
    """The core's epoch loop trains, checkpoints each epoch, keeps the best and reports, with Ray unimportable."""
    script = f"""
import sys
sys.modules["ray"] = None  # any `import ray` below raises ImportError
from pathlib import Path
import torch
from deepfake_platform.config import config_from_dict
from deepfake_platform.epoch_loop import run_epochs, start_from
from deepfake_platform.outputs import RunPaths
from deepfake_platform.checkpoints import input_size
from deepfake_platform.training import build_optimizer, make_loaders, prepare_detector
config = config_from_dict({{"name": "plain", "model": {{"name": "hybrid_tiny", "pretrained": "off"}},
                            "train": {{"epochs": 2, "precision": "fp32"}}}}, "test")
paths = RunPaths(checkpoints=Path({str(tmp_path)!r}) / "ck", run_dir=Path({str(tmp_path)!r}) / "run",
                 artifacts=Path({str(tmp_path)!r}) / "art", storage="")
paths.checkpoints.mkdir(parents=True)
model = prepare_detector(config, torch.device("cpu"))
optimizer = build_optimizer(model, config)
history, start = start_from(model, optimizer, None, None, "hybrid_tiny", announce=False)
loaders = make_loaders(config, Path({str(data_root)!r}), input_size(config, model), 0, 1)
reports = []
run_epochs(config, model, model, optimizer, loaders, torch.device("cpu"), "fp32", paths=paths, history=history,
           start_epoch=start, rank=0, world_size=1, faces={{}}, videos=None,
           report=lambda metrics, path: reports.append((metrics["epoch"], path.name)))
print(reports)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from deepfake_platform.checkpoints import epoch_checkpoints

    files = epoch_checkpoints(tmp_path / "ck")
    assert [p.name[:9] for p in files] == ["epoch_000", "epoch_001"]
    assert f"[(0, '{files[0].name}'), (1, '{files[1].name}')]" in result.stdout
    best = read_checkpoint(tmp_path / "ck" / "best.pth")
    assert best.val_auc == max(read_checkpoint(p).val_auc for p in files)
    assert best.history[-1]["threads"] == float(best.history[-1]["threads"]) >= 1
