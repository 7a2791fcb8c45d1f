"""A two-node Ray cluster on one machine, as `ray start` builds one: a head and a second node, each with one
CPU and a temp dir of its own, token authentication on. A two-worker training run spreads over both nodes,
loses the second node mid-run and finishes every epoch once a replacement joins; a sweep runs one trial
per node. The commands are the user's, joining the cluster with RAY_ADDRESS."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from deepfake_platform.checkpoints import epoch_checkpoints, read_checkpoint
from deepfake_platform.data import build_dataset
from tests.factories import free_port
from tests.proctools import processes_mentioning, stop_processes, user_env, wait_until

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
EPOCHS = 4

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.fault, pytest.mark.long]


class Cluster:
    """The head and the nodes started by this test, stopped by process id (never `ray stop`)."""

    def __init__(self, home: Path):
        self.home = home
        self.env = user_env(HOME=str(home), RAY_AUTH_MODE="token")
        self.port = free_port()
        self.dashboard = free_port()
        self.temp_dirs: list[Path] = []

    def _temp(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths have a length limit
        self.temp_dirs.append(path)
        return path

    def start_head(self) -> None:
        subprocess.run([f"{VENV_BIN}/ray", "get-auth-token", "--generate"], env=self.env, check=True,
                       capture_output=True, timeout=60)
        self._ray_start(["--head", f"--port={self.port}", f"--dashboard-port={self.dashboard}",
                         "--include-dashboard=true", f"--ray-client-server-port={free_port()}",
                         f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"])

    def add_node(self) -> Path:
        """Start another node with one CPU; returns its temp dir (which names its processes)."""
        temp = self._ray_start([f"--address=127.0.0.1:{self.port}", "--dashboard-agent-listen-port=0"])
        deadline = time.monotonic() + 60
        while len(self.alive_nodes()) < len(self.temp_dirs) - len(self.lost):
            assert time.monotonic() < deadline, "the new node never joined"
            time.sleep(1)
        return temp

    lost: list[Path] = []

    def lose_node(self, temp: Path) -> None:
        """Kill every process of the node whose temp dir is `temp`: its raylet, agents and workers."""
        pids = processes_mentioning(str(temp))
        assert pids, f"no process of the node in {temp}"
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.lost = [*self.lost, temp]

    def alive_nodes(self) -> list[str]:
        result = subprocess.run([f"{VENV_BIN}/ray", "status", f"--address=127.0.0.1:{self.port}"], env=self.env,
                                capture_output=True, text=True, timeout=60)
        return [line for line in result.stdout.splitlines() if line.strip().startswith("1 node_")]

    def _ray_start(self, args: list[str]) -> Path:
        temp = self._temp()
        result = subprocess.run([f"{VENV_BIN}/ray", "start", "--num-cpus=1", f"--temp-dir={temp}", *args],
                                env={**self.env, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{self.dashboard}"},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return temp

    def stop(self) -> None:
        stop_processes(sorted({pid for temp in self.temp_dirs for pid in processes_mentioning(str(temp))}))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("home"))
    try:
        cluster.start_head()
        cluster.second = cluster.add_node()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Enough tiny images that an epoch of two workers lasts a few seconds: time to lose a node mid-run."""
    root = tmp_path_factory.mktemp("data") / "set"
    build_dataset(root, counts={"train": 240, "val": 10, "test": 8}, size=64)
    return root


def driver_env(cluster: Cluster) -> dict[str, str]:
    # RAY_ADDRESS only: the platform sends the token this machine holds, as `ray.init()` itself does.
    env = {key: value for key, value in cluster.env.items() if key != "RAY_AUTH_MODE"}
    return {**env, "RAY_ADDRESS": f"127.0.0.1:{cluster.port}"}


@pytest.mark.timeout(600)
def test_a_lost_node_is_replaced_and_the_run_finishes_every_epoch(cluster, data_root, tmp_path):
    log_path = tmp_path / "run.log"
    with log_path.open("w") as log:
        driver = subprocess.Popen(
            [sys.executable, str(REPO / "experiments" / "reproduce_baseline.py"), "--smoke", "--data", str(data_root),
             "--name", "spread", "--num-workers", "2", "--set", "scaling.cpus_per_worker=1", "--epochs", str(EPOCHS),
             "--set", "train.batch_size=4", "--no-promote"],
            cwd=tmp_path, env=driver_env(cluster), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoints = tmp_path / "checkpoints" / "spread"
    try:
        wait_until(lambda: epoch_checkpoints(checkpoints, epoch=0), driver, log_path, 300)
        assert len(list(checkpoints.glob("epoch_*.pth"))) < EPOCHS, "the run finished before a node could be lost"
        cluster.lose_node(cluster.second)
        wait_until(lambda: "Waiting for nodes" in log_path.read_text(), driver, log_path, 120, 0.5)
        cluster.second = cluster.add_node()  # the replacement
        assert driver.wait(timeout=400) == 0, log_path.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
    output = log_path.read_text()
    assert "A node joined: the run continues from its latest checkpoint." in output
    assert "Resuming after epoch" in output
    files = sorted(checkpoints.glob("epoch_*_auc_*.pth"))
    assert [p.name[:9] for p in files] == [f"epoch_{e:03d}" for e in range(EPOCHS)]  # each epoch once
    for epoch, path in enumerate(files):
        record = read_checkpoint(path)
        assert record.epoch == epoch
        assert [int(row["epoch"]) for row in record.history] == list(range(epoch + 1))
        assert {int(row["world_size"]) for row in record.history} == {2}  # both nodes' workers, every epoch
    assert (tmp_path / "runs" / "spread" / "RESULTS.md").is_file()


@pytest.mark.timeout(480)
def test_a_sweep_on_the_cluster_runs_one_trial_per_node(cluster, data_root, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "tune_sweep.py"), "--config",
         str(REPO / "experiments" / "configs" / "sweep_smoke.yaml"), "--set", "tune.num_samples=2",
         "--data", str(data_root), "--output-root", str(tmp_path), "--name", "pair", "--no-promote"],
        cwd=tmp_path, env=driver_env(cluster), capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "up to 2 trial(s) at once, each 1 worker(s) x 1 CPU" in result.stdout
    # Each node's own worker logs hold one trial's epochs: the trials ran side by side, one per node.
    for temp in (cluster.temp_dirs[0], cluster.second):
        logs = b"".join(path.read_bytes() for path in temp.glob("session_*/logs/worker-*.out"))
        assert b"epoch 1: train loss" in logs, f"no trial trained on the node in {temp}"
    assert (tmp_path / "runs" / "pair" / "SWEEP.md").is_file()


@pytest.mark.timeout(400)
def test_batch_scoring_uses_both_nodes(cluster, data_root, tmp_path):
    from tests.factories import tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path / "best.pth", 0.5)
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "score.py"), "--input", str(data_root / "train"),
         "--out", str(tmp_path / "scores.parquet"), "--checkpoint", str(checkpoint)],
        cwd=tmp_path, env=driver_env(cluster), capture_output=True, text=True, timeout=360)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "with 2 model actor(s)" in result.stdout and "240 scored now" in result.stdout
    # A model actor on each node: each node's own worker logs name one.
    for temp in (cluster.temp_dirs[0], cluster.second):
        titles = b"".join(path.read_bytes() for path in temp.glob("session_*/logs/worker-*.out"))
        assert b"MapBatches(Score)" in titles, f"no model actor ran on the node in {temp}"
