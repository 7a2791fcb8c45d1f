"""cluster.yaml (on-prem) and cluster.aws.yaml (AWS GPU) pass Ray's own cluster-launcher validation, offline."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]


def prepared(name: str) -> dict:
    """The cluster file as `ray up` sees it: merged with Ray's provider defaults, then validated."""
    config = prepare_config(yaml.safe_load((REPO / name).read_text()))
    validate_config(config)
    return config


def start_commands(config: dict) -> str:
    return "\n".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])


def test_on_prem_cluster_file_is_valid():
    config = prepared("cluster.yaml")
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    assert config["auth"]["ssh_user"]
    assert "." in config["file_mounts"].values(), "the project must be copied to every node"
    assert any("pip install" in command and "deepfake-platform" in command for command in config["setup_commands"])
    commands = start_commands(config)
    assert "ray start --head" in commands and "--address=$RAY_HEAD_IP:6379" in commands
    assert "DEEPFAKE_HOME=/mnt/deepfake" in commands and "RAY_AUTH_MODE=token" in commands


def test_aws_cluster_file_is_valid():
    config = prepared("cluster.aws.yaml")
    assert config["provider"]["type"] == "aws"
    assert config["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["node_config"]["InstanceType"].startswith(("g", "p")), "workers must be GPU instances"
    assert workers["min_workers"] >= 1
    setup = "\n".join(config["setup_commands"])
    assert "pip install" in setup and "torch" in setup and "deepfake-platform" in setup
    assert "DEEPFAKE_HOME=/efs/deepfake" in start_commands(config)


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.aws.yaml"])
def test_validation_rejects_a_typo(name):
    config = yaml.safe_load((REPO / name).read_text())
    config["head_start_ray_command"] = copy.deepcopy(config["head_start_ray_commands"])  # a missing "s"
    with pytest.raises(jsonschema.ValidationError, match="head_start_ray_command"):
        validate_config(prepare_config(config))
