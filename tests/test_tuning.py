"""Ray Tune sweeps: the sweep file, trial sizing, the results, and the smoke sweep end to end on a real
Ray, stopped and resumed without rerunning finished trials (`ray job submit`: tests/test_jobs.py)."""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from deepfake_platform.checkpoints import read_checkpoint
from deepfake_platform.config import ConfigError
from deepfake_platform.orchestration.sweep_config import experiment_config, load_sweep_config
from deepfake_platform.orchestration.sweep_report import (
    best_healthy,
    plot_auc_vs_lr,
    sort_rows,
    trial_row,
    write_table,
)
from deepfake_platform.orchestration.tuner import size_trials, total_trials
from deepfake_platform.outputs import output_home
from tests.proctools import interrupt, user_env

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "tune_sweep.py"
SMOKE = REPO / "experiments" / "configs" / "sweep_smoke.yaml"
FULL = REPO / "experiments" / "configs" / "sweep.yaml"
VENV_BIN = str(Path(sys.executable).parent)


# ---------------------------------------------------------------------------------------------
# The sweep file, sizing, output locations, results (no Ray)
# ---------------------------------------------------------------------------------------------


def test_shipped_sweep_files_load():
    smoke = load_sweep_config(SMOKE)
    assert experiment_config(smoke, SMOKE).model.name == "hybrid_tiny"
    assert 2 <= smoke.tune.num_samples <= 3 and smoke.search.epochs == [2]
    full = load_sweep_config(FULL)
    assert experiment_config(full, FULL).model.name == "hybrid_resnet18_vit_b16"
    assert {"none", "cnn", "vit", "backbones"} <= set(full.search.freeze)
    assert any(mode.startswith("last") for mode in full.search.freeze)
    assert (full.tune.metric, full.tune.mode) == ("val_auc", "max")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("tune:\n  grace: 1\n", "unknown key tune.grace"),
        ("search:\n  freeze: [none, last0]\n", "search.freeze"),
        ("search:\n  epochs: 3\n", "search.epochs"),
        ("tune:\n  metric: val_loss\n  mode: min\n", "tune.metric"),
        ("experiment: missing.yaml\n", "missing.yaml"),
    ],
)
def test_sweep_file_errors_name_the_key_and_the_file(tmp_path, edit, message):
    path = tmp_path / "bad_sweep.yaml"
    path.write_text("name: bad\nexperiment: {model: {name: hybrid_tiny}}\n" + edit)
    with pytest.raises(ConfigError, match=message) as error:
        experiment_config(load_sweep_config(path), path)
    assert str(path) in str(error.value)


def test_trials_are_sized_to_the_nodes():
    one_node = [{"CPU": 2.0, "memory": 8e9}]
    # 1 CPU per worker: two trials at once on a 2-CPU node.
    sizing = size_trials(one_node, num_workers=1, cpus_per_worker=1, use_gpu=False, max_concurrent_trials=0,
                         num_samples=3)
    assert (sizing.cpus_per_worker, sizing.max_concurrent_trials) == (1, 2)
    # Auto: a trial takes a whole node; two 1-CPU workers fill the node, so one trial at a time.
    assert size_trials(one_node, num_workers=1, cpus_per_worker=0, use_gpu=False, max_concurrent_trials=0,
                       num_samples=3).max_concurrent_trials == 1
    assert size_trials(one_node, num_workers=2, cpus_per_worker=1, use_gpu=False, max_concurrent_trials=5,
                       num_samples=3).max_concurrent_trials == 1
    # A cluster: one trial per 8-CPU node (a 0-CPU head runs drivers only), never more than the samples.
    cluster = [{"CPU": 0.0}, {"CPU": 8.0}, {"CPU": 8.0}, {"CPU": 8.0}]
    sizing = size_trials(cluster, num_workers=1, cpus_per_worker=0, use_gpu=False, max_concurrent_trials=0,
                         num_samples=12)
    assert (sizing.cpus_per_worker, sizing.max_concurrent_trials) == (8, 3)
    assert size_trials(cluster, num_workers=1, cpus_per_worker=0, use_gpu=False, max_concurrent_trials=0,
                       num_samples=2).max_concurrent_trials == 2
    gpus = [{"CPU": 4.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
    assert size_trials(gpus, num_workers=1, cpus_per_worker=0, use_gpu=True, max_concurrent_trials=0,
                       num_samples=8).max_concurrent_trials == 2
    # Requests no node can hold are refused with what to change, instead of waiting forever.
    with pytest.raises(ValueError, match="at most 2"):
        size_trials(one_node, num_workers=1, cpus_per_worker=4, use_gpu=False, max_concurrent_trials=0,
                    num_samples=1)
    with pytest.raises(ValueError, match="Lower scaling.num_workers"):
        size_trials(one_node, num_workers=3, cpus_per_worker=1, use_gpu=False, max_concurrent_trials=0,
                    num_samples=1)
    with pytest.raises(ValueError, match="no CPUs"):
        size_trials([{"CPU": 0.0}], num_workers=1, cpus_per_worker=0, use_gpu=False, max_concurrent_trials=0,
                    num_samples=1)


def test_output_home(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPFAKE_HOME", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert output_home() == tmp_path.resolve()
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # a `ray job submit` entrypoint
    assert output_home() == (tmp_path / "user" / "deepfake-platform").resolve()
    monkeypatch.setenv("DEEPFAKE_HOME", str(tmp_path / "shared"))
    assert output_home() == (tmp_path / "shared").resolve()
    assert output_home(str(tmp_path / "flag")) == (tmp_path / "flag").resolve()


def test_table_and_plot(tmp_path):
    def epochs(*aucs):
        return [{"epoch": i, "val_auc": auc, "time_total_s": 10.0 * (i + 1)} for i, auc in enumerate(aucs)]

    rows = [
        trial_row("a", {"lr": 1e-4, "epochs": 3, "freeze": "none"}, epochs(0.6, 0.9, 0.8), error=False),
        trial_row("b", {"lr": 1e-3, "epochs": 3, "freeze": "backbones"}, epochs(0.5, 0.55), error=False),
        trial_row("c", {"lr": 3e-4, "epochs": 3, "freeze": "none"}, [], error=True),
    ]
    assert (rows[0]["best_val_auc"], rows[0]["best_epoch"], rows[0]["status"], rows[0]["time_s"]) == (0.9, 1, "finished", 30.0)
    assert rows[1]["status"] == "stopped early (ASHA)" and rows[1]["epochs_run"] == 2
    assert rows[2]["status"] == "error" and rows[2]["best_epoch"] is None
    csv_path, md_path = write_table(rows, tmp_path)
    with csv_path.open() as handle:
        assert [row["trial"] for row in csv.DictReader(handle)] == ["a", "b", "c"]
    assert "| a | 1.00e-04 | 3 | none | 0.9000 | 1 | 3 | finished | 30.0 |" in md_path.read_text()
    png = plot_auc_vs_lr(rows, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A trial that diverged after a good epoch says so, sorts after the healthy ones and is never promoted.
    diverged = trial_row("d", {"lr": 10.0, "epochs": 3, "freeze": "none"}, epochs(0.95),
                         run_status={"status": "diverged", "message": "training diverged at epoch 1"})
    assert diverged["status"] == "diverged" and diverged["best_val_auc"] == 0.95
    ordered = sort_rows([diverged, *rows])
    assert [row["trial"] for row in ordered] == ["a", "b", "d", "c"]
    assert best_healthy([diverged, *rows])["trial"] == "a"
    assert best_healthy([diverged]) is None


def test_a_learning_rate_grid_is_checked_and_counted(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("name: g\nexperiment: {model: {name: hybrid_tiny}}\nsearch: {lr: [1.0e-4, 1.0e-3]}\n"
                    "tune: {num_samples: 3}\n")
    sweep = load_sweep_config(path)
    assert sweep.search.lr == [1e-4, 1e-3]
    assert total_trials(sweep.search.to_dict(), sweep.tune.to_dict()) == 6
    path.write_text("name: g\nsearch: {lr: [1.0e-4, -1]}\n")
    with pytest.raises(ConfigError, match="search.lr: every learning rate must be positive"):
        load_sweep_config(path)


def test_cli_mistakes_are_one_sentence(tmp_path):
    for args, message in [
        (["--config", str(tmp_path / "missing.yaml")], "does not exist"),
        (["--config", str(SMOKE), "--set", "tune.grace=2"], "unknown key tune.grace"),
        (["--config", str(SMOKE), "--resume"], "no sweep sweep_smoke to resume"),
    ]:
        result = subprocess.run([sys.executable, str(SCRIPT), *args, "--output-root", str(tmp_path)],
                                env=sweep_env(), capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# The smoke sweep on a real Ray
# ---------------------------------------------------------------------------------------------


def sweep_command(out: Path, data_root: Path, name: str, config: Path = SMOKE) -> list[str]:
    return [sys.executable, str(SCRIPT), "--config", str(config), "--output-root", str(out),
            "--data", str(data_root), "--name", name]


def sweep_env(**extra: str) -> dict[str, str]:
    return user_env(**extra)


def trial_statuses(tune_dir: Path) -> dict[str, str]:
    """Trial id -> status as Tune last saved its experiment state (what a resume starts from)."""
    states = glob.glob(str(tune_dir / "experiment_state-*.json"))
    if not states:
        return {}
    try:
        trials = json.loads(Path(states[0]).read_text())["trial_data"]
    except (ValueError, OSError):  # caught mid-write
        return {}
    return {state["trial_id"]: state["status"] for state in (json.loads(trial[0]) for trial in trials)}


def mtimes(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def grid_sweep(path: Path, learning_rates: list[float]) -> Path:
    """The smoke sweep with a grid of learning rates instead of the log-uniform range."""
    data = yaml.safe_load(SMOKE.read_text())
    data["search"].update(lr=learning_rates, freeze=["none"])
    data["tune"]["num_samples"] = 1
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.long
@pytest.mark.timeout(480)
def test_a_stopped_sweep_resumes_keeps_finished_trials_and_records_a_diverged_one(tmp_path, data_root,
                                                                                 split_filesystems):
    # Outputs on another filesystem than TMPDIR where the machine has one (tests/test_filesystems.py): the trials'
    # checkpoints, Tune's state and the best trial's promotion must work there (EXDEV) as anywhere.
    out, temp = split_filesystems
    name = "resumable"
    # Two healthy trials run first (two at a time on 2 CPUs); the third one's learning rate diverges.
    command = sweep_command(out, data_root, name, grid_sweep(tmp_path / "grid.yaml", [1e-3, 3e-3, 1e6]))
    log_path = tmp_path / "first.log"
    with log_path.open("w") as log:
        driver = subprocess.Popen(command, env=sweep_env(TMPDIR=str(temp)), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                statuses = trial_statuses(out / "ray_results" / name / "tune")
                finished = [trial for trial, status in statuses.items() if status == "TERMINATED"]
                if finished and len(finished) < 3:
                    break
                assert driver.poll() is None, "the sweep ended before it could be stopped:\n" + log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no trial finished in time"
                time.sleep(0.5)
            interrupt(driver)  # Ctrl-C: the driver and the local Ray it started
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
    last = log_path.read_text().strip().splitlines()[-1]
    assert last.startswith(f"Stopped: the finished trials of sweep {name} are kept"), last
    assert f"--resume --name={name}" in last
    kept = {trial: mtimes(out / "checkpoints" / name / trial) for trial in finished}
    weights = {trial: read_checkpoint(out / "checkpoints" / name / trial / "best.pth") for trial in finished}
    kept_runs = {trial: mtimes(out / "ray_results" / name / "train" / trial) for trial in finished}

    resumed = subprocess.run([*command, "--resume"], env=sweep_env(TMPDIR=str(temp)), capture_output=True, text=True,
                             timeout=300, start_new_session=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Invalid cross-device link" not in log_path.read_text() + resumed.stdout + resumed.stderr
    assert f"Resuming sweep {name}" in resumed.stdout
    for trial in finished:
        # Neither the epoch files nor the Ray Train run of a finished trial were written again (best.pth of the
        # best trial is calibrated once the sweep ends: checked below).
        assert mtimes(out / "checkpoints" / name / trial) | {"best.pth": 0} == kept[trial] | {"best.pth": 0}
        assert mtimes(out / "ray_results" / name / "train" / trial) == kept_runs[trial]
    # One line per finished trial, the diverged one saying so; no Tune status tables.
    trial_lines = [line for line in resumed.stdout.splitlines() if line.startswith("trial ")]
    assert any("diverged: training diverged" in line for line in trial_lines), resumed.stdout[-3000:]
    assert "Trial status" not in resumed.stdout + resumed.stderr

    run_dir = out / "runs" / name
    with (run_dir / "sweep.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert sorted(row["status"] for row in table) == ["diverged", "finished", "finished"]
    diverged = next(row for row in table if row["status"] == "diverged")
    assert float(diverged["lr"]) == 1e6 and table[-1] is diverged  # healthy trials first
    assert "| diverged |" in (run_dir / "SWEEP.md").read_text()
    assert set(finished) <= {row["trial"] for row in table}
    best = table[0]
    assert best["status"] == "finished" and (run_dir / best["trial"] / "RESULTS.md").is_file()
    for trial in finished:  # the same trained weights; the best trial's now calibrated, the others untouched
        now = out / "checkpoints" / name / trial / "best.pth"
        if trial == best["trial"]:
            record = read_checkpoint(now)
            assert record.epoch == weights[trial].epoch and record.calibration and record.operating_points
            assert all(torch.equal(record.model_state_dict[key], value)
                       for key, value in weights[trial].model_state_dict.items())
        else:
            assert now.stat().st_mtime_ns == kept[trial]["best.pth"]
    promoted = read_checkpoint(out / "artifacts" / "best.pth")
    assert promoted.optimizer_state_dict is None
    assert promoted.config["name"] == f"{name}/{best['trial']}"
    assert promoted.val_auc == pytest.approx(float(best["best_val_auc"]))
    assert json.loads((out / "artifacts" / "best.json").read_text())["run"] == f"{name}/{best['trial']}"
    assert (run_dir / "val_auc_vs_lr.png").read_bytes()[:4] == b"\x89PNG"
    # MLflow: the sweep is a parent run with one child per trial (the stopped first attempt left none), the
    # best trial's child holds its model, registered as the champion since there was none yet.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("deepfake-platform").experiment_id
    parents = client.search_runs([experiment], f"attributes.run_name = '{name}'")
    assert len(parents) == 1 and parents[0].data.metrics["trials"] == 3
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert sorted(run.info.run_name for run in children) == sorted(f"{name}/{row['trial']}" for row in table)
    best_run = next(run for run in children if run.info.run_name == f"{name}/{best['trial']}")
    assert "model" in {item.path for item in client.list_artifacts(best_run.info.run_id)}
    assert len(client.get_metric_history(best_run.info.run_id, "val_auc")) >= 1
    assert client.get_model_version_by_alias("deepfake-detector", "champion").run_id == best_run.info.run_id
