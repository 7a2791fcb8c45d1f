"""How a command ends (deepfake_platform/orchestration/cli.py): a mistake the user can fix is one sentence
and exit status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_platform.checkpoints import CheckpointError
from deepfake_platform.config import ConfigError
from deepfake_platform.data import BadImageError, DatasetError
from deepfake_platform.data.faces import FaceDetectorError
from deepfake_platform.data.video import BadVideoError
from deepfake_platform.errors import InvalidInput, MissingInput, UserError
from deepfake_platform.fine_tuning.feedback_split import FeedbackError
from deepfake_platform.orchestration.cli import load_experiment_config, run_command
from deepfake_platform.orchestration.cluster import ClusterError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("error", [ConfigError, CheckpointError, DatasetError, ClusterError, FeedbackError,
                                   FaceDetectorError, BadImageError, BadVideoError, InvalidInput, MissingInput])
def test_every_sentence_error_is_a_user_error(error):
    assert issubclass(error, UserError)


def test_a_user_error_is_its_sentence_on_one_line_and_status_2(capsys):
    def main():
        raise ConfigError("override 'lr' must look like key=value, e.g. train.lr=3e-4.")

    with pytest.raises(SystemExit) as ended:
        run_command(main)
    assert ended.value.code == 2
    assert capsys.readouterr().err == "error: override 'lr' must look like key=value, e.g. train.lr=3e-4.\n"


@pytest.mark.parametrize("bug", [ValueError("operands could not be broadcast"), KeyError("config"),
                                 FileNotFoundError("/tmp/scratch")])
def test_any_other_error_is_a_bug_and_is_not_turned_into_a_sentence(bug, capsys):
    def main():
        raise bug

    with pytest.raises(type(bug)):
        run_command(main)
    assert capsys.readouterr().err == ""


def test_flags_are_checked_like_the_config_file_and_a_bad_one_is_a_sentence_naming_its_key(tmp_path):
    def args(**flags) -> argparse.Namespace:
        return argparse.Namespace(**{"config": None, "set": [], "data": None, "num_workers": None, "use_gpu": False,
                                     "epochs": None, "name": None, **flags})

    config = load_experiment_config(args(num_workers=2, epochs=3, data=str(tmp_path), name="flags"),
                                    REPO / "experiments" / "configs" / "smoke.yaml")
    assert (config.scaling.num_workers, config.train.epochs, config.data.root, config.name) == (
        2, 3, str(tmp_path), "flags")
    with pytest.raises(ConfigError, match=r"scaling\.num_workers: input should be greater than or equal to 1"):
        load_experiment_config(args(num_workers=-2), REPO / "experiments" / "configs" / "smoke.yaml")


def fine_tune_command(tmp_path: Path, *args: str, patch: str = "") -> subprocess.CompletedProcess:
    """experiments/fine_tune.py run as a user runs it, after `patch` (Python) has broken something inside."""
    driver = (f"import runpy, sys\n{patch}\n"
              f"sys.argv = ['fine_tune.py', *{list(args)!r}]\n"
              f"runpy.run_path({str(REPO / 'experiments' / 'fine_tune.py')!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", driver], cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.long
def test_a_command_shows_a_users_mistake_as_a_sentence_and_a_bug_with_its_traceback(tmp_path):
    mistake = fine_tune_command(tmp_path, "--feedback", "feedback", "--margin", "-1")
    assert mistake.returncode == 2
    assert mistake.stderr == ("error: --margin must be 0 or more (the validation AUC the new model may lose), "
                              "not -1.0.\n")
    broken = "import deepfake_platform.orchestration.fine_tune as ft\n"
    for error, last_line in (("ValueError('an internal bug')", "ValueError: an internal bug"),
                             ("KeyError('an internal bug')", "KeyError: 'an internal bug'")):
        bug = fine_tune_command(tmp_path, "--feedback", "feedback",
                                patch=f"{broken}def fail(*args, **kwargs):\n    raise {error}\nft.read_checkpoint = fail")
        assert bug.returncode == 1
        assert "Traceback (most recent call last)" in bug.stderr and "in fail" in bug.stderr
        assert bug.stderr.strip().splitlines()[-1] == last_line and "error: " not in bug.stderr


def test_a_job_joins_only_the_cluster_ray_start_recorded_not_any_ray_running_here(tmp_path, monkeypatch):
    from deepfake_platform.orchestration.cluster import started_cluster_address

    # Ray's address="auto" would join another process's private Ray (a Serve, another job): not recorded.
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert started_cluster_address() is None
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6379\n")  # what `ray start --head` writes
    assert started_cluster_address() == "127.0.0.1:6379"


def test_ensure_ray_starts_its_own_ray_unless_ray_start_recorded_a_cluster(tmp_path, monkeypatch):
    """Which Ray a command joins: never `address="auto"` (any Ray running here); the recorded cluster when there is
    one and it answers, else a private local Ray."""
    import ray

    from deepfake_platform.orchestration import cluster

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",
                                                                                          "RAY_JOB_CONFIG_JSON_ENV_VAR")})
    os.environ["RAY_TMPDIR"] = str(tmp_path)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    joined: list[str | None] = []
    stale = {"127.0.0.1:1"}

    def init(_ray, address, verbose, options, **kwargs):
        joined.append(address)
        if address in stale:
            raise ConnectionError("nothing listens there")

    monkeypatch.setattr(cluster, "_init", init)
    assert cluster.ensure_ray() is True and joined == ["local"]
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6379\n")
    joined.clear()
    assert cluster.ensure_ray() is False and joined == ["127.0.0.1:6379"]
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # a cluster stopped without `ray stop`
    joined.clear()
    assert cluster.ensure_ray() is True and joined == ["127.0.0.1:1", "local"]
