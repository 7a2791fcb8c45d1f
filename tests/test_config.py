"""The typed config: YAML in, typed dataclasses out, every mistake named with its key and file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deepfake_platform.config import ConfigError, ExperimentConfig, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


@pytest.mark.parametrize("name", ["baseline.yaml", "smoke.yaml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert isinstance(config, ExperimentConfig)


def test_baseline_is_the_reference_recipe():
    config = load_config(CONFIGS / "baseline.yaml")
    assert config.model.name == "hybrid_resnet18_vit_b16"
    assert (config.train.lr, config.train.batch_size, config.train.epochs) == (1e-4, 8, 5)
    assert config.model.freeze == "none" and config.data.image_size == 224


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.learning_rate"):
        load_config(path)


def test_wrong_type_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: five\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.epochs"):
        load_config(path)


def test_a_section_that_is_not_a_mapping_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: hybrid\n")
    with pytest.raises(ConfigError, match="model must be a mapping"):
        load_config(path)


def test_malformed_yaml_and_missing_file_are_sentences(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_invalid_values_are_rejected():
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="model.pretrained"):
        load_config(None, ["model.pretrained=maybe"])


def test_overrides_are_typed():
    config = load_config(CONFIGS / "baseline.yaml", ["train.lr=3e-4", "train.epochs=7", "model.freeze=cnn",
                                                      "train.channels_last=false"])
    assert config.train.lr == pytest.approx(3e-4) and isinstance(config.train.lr, float)
    assert config.train.epochs == 7 and config.model.freeze == "cnn"
    assert config.train.channels_last is False
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="unknown key train.nope"):
        load_config(None, ["train.nope=1"])


def test_resolved_config_round_trips(tmp_path):
    config = load_config(CONFIGS / "smoke.yaml", ["train.lr=0.01"])
    path = save_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load(path.read_text())["train"]["lr"] == 0.01
    assert load_config(path) == config
