"""Ensembles: the run-time combiners and spec (deepfake_platform/ensemble.py), the offline build
(orchestration/ensemble_build.py) and experiments/build_ensemble.py end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.linear_model import LogisticRegression

from deepfake_platform.checkpoints import CheckpointError, file_sha256
from deepfake_platform.config import ConfigError
from deepfake_platform.ensemble import (
    Combiner,
    EnsemblePredictor,
    EnsembleSpec,
    MemberSpec,
    load_ensemble,
    load_member,
    load_predictor,
    mean_combine,
    save_ensemble,
    save_frequency_member,
    stacking_combine,
    weighted_combine,
)
from deepfake_platform.metrics import roc_auc
from deepfake_platform.orchestration.ensemble_build import (
    fit_combiner,
    fit_stacking,
    load_ensemble_config,
    resolve_members,
)
from deepfake_platform.predict import FrequencyPredictor, Predictor
from models import FrequencyDetector
from tests.factories import tiny_checkpoint as write_tiny

REPO = Path(__file__).resolve().parents[1]
PROBS = np.array([[0.1, 0.9, 0.5], [0.8, 0.6, 0.99], [0.0, 1.0, 0.3]])


def tiny_checkpoint(path: Path, val_auc: float = 0.5, val_threshold: float = 0.4, seed: int = 0) -> Path:
    """A real platform checkpoint of the tiny hybrid (random weights)."""
    return write_tiny(path, val_threshold, val_auc=val_auc, seed=seed, epoch=1)


def pictures(n: int, seed: int = 0, size: int = 48) -> tuple[list[Image.Image], list[int]]:
    """Noise images, half smooth ("real") and half sharp ("fake"), so a spectral detector can tell them apart."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(noise)
        if i % 2 == 0:
            image = image.resize((size // 4, size // 4)).resize((size, size), Image.Resampling.BILINEAR)
        images.append(image)
        labels.append(i % 2)
    return images, labels


# ---- combiners -----------------------------------------------------------------------------------


def test_mean_combiner_is_the_row_mean():
    np.testing.assert_allclose(mean_combine(PROBS), PROBS.mean(axis=1))


def test_weighted_combiner_normalises_weights():
    expected = (PROBS @ np.array([2.0, 1.0, 1.0])) / 4.0
    np.testing.assert_allclose(weighted_combine(PROBS, [2, 1, 1]), expected)
    np.testing.assert_allclose(weighted_combine(PROBS, [0, 1, 0]), PROBS[:, 1])


@pytest.mark.parametrize("weights", [[1, 1], [1, -1, 1], [0, 0, 0]])
def test_weighted_combiner_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="weight"):
        weighted_combine(PROBS, weights)


def test_stacking_matches_sklearn_and_stays_finite_at_0_and_1():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 1, (40, 3))
    labels = (probs[:, 0] + 0.2 * rng.standard_normal(40) > 0.5).astype(int)
    coef, intercept = fit_stacking(probs, labels)
    clipped = np.clip(probs, 1e-6, 1 - 1e-6)
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(np.log(clipped / (1 - clipped)), labels)
    expected = reference.predict_proba(np.log(clipped / (1 - clipped)))[:, 1]
    np.testing.assert_allclose(stacking_combine(probs, coef, intercept), expected, rtol=1e-6)
    assert coef[0] > abs(coef[1]) and coef[0] > abs(coef[2])  # the informative member dominates
    out = stacking_combine(PROBS, coef, intercept)
    assert np.isfinite(out).all() and ((out > 0) & (out < 1)).all()


def test_stacking_needs_both_classes():
    with pytest.raises(ValueError, match="both real and fake"):
        fit_stacking(PROBS, np.array([1, 1, 1]))


def test_combiner_round_trips_and_rejects_unknown_kinds():
    combiner = Combiner("stacking", coef=[0.5, -1.0, 2.0], intercept=0.1)
    again = Combiner.from_dict(combiner.to_dict())
    np.testing.assert_array_equal(again.apply(PROBS), combiner.apply(PROBS))
    with pytest.raises(ValueError, match="choose one of mean, weighted, stacking"):
        Combiner("median")


def test_fit_combiner_needs_a_weight_per_member():
    names = ["a", "b", "c"]
    combiner = fit_combiner("weighted", names, PROBS, np.array([0, 1, 1]), {"a": 1, "b": 2, "c": 1})
    assert combiner.weights == [1.0, 2.0, 1.0]
    with pytest.raises(ConfigError, match="missing c"):
        fit_combiner("weighted", names, PROBS, np.array([0, 1, 1]), {"a": 1, "b": 2})
    with pytest.raises(ConfigError, match="unknown z"):
        fit_combiner("weighted", names, PROBS, np.array([0, 1, 1]), {"a": 1, "b": 2, "c": 1, "z": 1})


# ---- members and specs ---------------------------------------------------------------------------


def test_frequency_member_round_trips_through_a_weights_only_file(tmp_path):
    images, labels = pictures(16)
    detector = FrequencyDetector().fit(images, labels)
    path = save_frequency_member(detector, tmp_path / "frequency.pth", val_threshold=0.42, val_auc=0.9)
    assert torch.load(path, weights_only=True)["kind"] == "frequency"
    member = load_member(path)
    assert isinstance(member, FrequencyPredictor)
    assert member.info.threshold == pytest.approx(0.42) and member.info.sha256 == file_sha256(path)
    np.testing.assert_allclose(member.predict_images(images), detector.predict_proba(images), rtol=1e-6)
    held_out, held_out_labels = pictures(16, seed=1)  # it learnt the task: blurred vs sharp noise
    assert roc_auc(held_out_labels, member.predict_images(held_out)) > 0.9


def test_ensemble_spec_round_trips_and_detects_changed_members(tmp_path):
    first = tiny_checkpoint(tmp_path / "members" / "a.pth")
    second = tiny_checkpoint(tmp_path / "members" / "b.pth", seed=1)
    spec = EnsembleSpec("ens", [MemberSpec("a", str(first), file_sha256(first)),
                                MemberSpec("b", str(second), file_sha256(second))],
                        Combiner("weighted", weights=[3.0, 1.0]), threshold=0.61, val_auc=0.7)
    path = save_ensemble(spec, tmp_path / "artifacts" / "ens.pth")
    stored = torch.load(path, weights_only=True)
    assert stored["members"][0]["path"] == "../members/a.pth"  # relative: the folder can move as a whole
    loaded = load_ensemble(path)
    assert [m.name for m in loaded.members] == ["a", "b"] and loaded.threshold == pytest.approx(0.61)
    np.testing.assert_allclose(loaded.apply(PROBS[:, :2]), weighted_combine(PROBS[:, :2], [3, 1]))
    tiny_checkpoint(second, seed=2)
    with pytest.raises(CheckpointError, match="changed since the ensemble was fitted.*build_ensemble.py"):
        load_ensemble(path)
    second.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_ensemble(path)


def test_glob_members_keep_the_top_k_by_validation_auc(tmp_path):
    for trial, auc in enumerate([0.6, 0.9, 0.7]):
        tiny_checkpoint(tmp_path / f"sweep-{trial}" / "best.pth", val_auc=auc)
    config = {"members": [{"checkpoint": str(tmp_path / "sweep-*" / "best.pth"), "name": "sweep", "top_k": 2},
                          {"checkpoint": str(tmp_path / "sweep-0" / "best.pth")}]}
    path = tmp_path / "ensemble.yaml"
    path.write_text(yaml.safe_dump(config))
    resolved = resolve_members(load_ensemble_config(path).members)
    assert [(name, p.parent.name) for name, p in resolved] == [
        ("sweep_1", "sweep-1"), ("sweep_2", "sweep-2"), ("hybrid_tiny", "sweep-0")]


def test_ensemble_config_errors_name_the_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"members": [{"checkpoint": "x.pth", "topk": 2}]}))
    with pytest.raises(ConfigError, match="unknown key members\\[0\\].topk"):
        load_ensemble_config(path)
    path.write_text(yaml.safe_dump({"members": [{"checkpoint": "x.pth"}], "combiner": "vote"}))
    with pytest.raises(ConfigError, match="combiner: input should be 'mean', 'weighted' or 'stacking'"):
        load_ensemble_config(path)
    path.write_text(yaml.safe_dump({"members": []}))
    with pytest.raises(ConfigError, match="no members"):
        load_ensemble_config(path)
    path.write_text(yaml.safe_dump({"members": [{"checkpoint": "a.pth"}], "weights": {"a": "heavy"}}))
    with pytest.raises(ConfigError, match="weights.a"):
        load_ensemble_config(path)
    missing = tmp_path / "missing.pth"
    path.write_text(yaml.safe_dump({"members": [{"checkpoint": str(missing)}]}))
    with pytest.raises(CheckpointError, match="does not exist. Train one"):
        resolve_members(load_ensemble_config(path).members)


@pytest.mark.parametrize("name", ["ensemble.yaml", "ensemble_smoke.yaml"])
def test_shipped_ensemble_configs_load(name):
    config = load_ensemble_config(REPO / "experiments" / "configs" / name)
    assert config.members or config.frequency.enabled


# ---- build_ensemble.py end to end ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_build_ensemble_writes_report_spec_and_serve_config(tmp_path, monkeypatch):
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(REPO / "experiments" / "make_dataset.py"), "--out", str(data),
                    "--train", "8", "--val", "8", "--test", "8", "--size", "64"], check=True, timeout=120)
    tiny_checkpoint(tmp_path / "checkpoints" / "a" / "best.pth", val_auc=0.55, val_threshold=0.3)
    tiny_checkpoint(tmp_path / "checkpoints" / "b" / "best.pth", val_auc=0.65, val_threshold=0.6, seed=1)
    config = {
        "name": "tiny_ensemble",
        "members": [{"checkpoint": "checkpoints/*/best.pth", "name": "tiny", "top_k": 2}],
        "frequency": {"enabled": True},
        "combiner": "stacking",
        "batch_size": 4,
    }
    (tmp_path / "ensemble.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("build_ensemble", REPO / "experiments" / "build_ensemble.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = script.main(script.get_args_parser().parse_args(["--config", "ensemble.yaml", "--data", str(data)]))

    out = tmp_path / "runs" / "tiny_ensemble" / "ensemble"
    assert report == out / "comparison.md" and (out / "roc_test.png").stat().st_size > 0
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert [row["name"] for row in rows] == ["tiny_1", "tiny_2", "frequency", "tiny_ensemble"]
    results = json.loads((out / "results.json").read_text())
    assert Path(results["members"]["tiny_1"]).parent.name == "b"  # the glob is ordered by validation AUC
    assert all(0.0 <= float(row["test_auc"]) <= 1.0 for row in rows)
    assert "| tiny_ensemble | ensemble (stacking) |" in report.read_text()

    loaded = load_ensemble(tmp_path / "artifacts" / "tiny_ensemble.pth")
    assert loaded.combiner.kind == "stacking" and len(loaded.combiner.coef) == 3
    assert 0.0 <= loaded.threshold <= 1.0
    frequency = torch.load(tmp_path / "artifacts" / "tiny_ensemble_frequency.pth", weights_only=True)
    assert frequency["kind"] == "frequency" and 0.0 <= frequency["val_threshold"] <= 1.0
    # The spec scores through the same predict path as its members: the combiner of their probabilities.
    ensemble = load_predictor(tmp_path / "artifacts" / "tiny_ensemble.pth", precision="fp32")
    assert isinstance(ensemble, EnsemblePredictor) and isinstance(ensemble.members["tiny_1"], Predictor)
    images, _ = pictures(4, size=64)
    np.testing.assert_allclose(ensemble.predict_images(images),
                               loaded.apply(ensemble.predict_members(images)), rtol=1e-6)

    from ray.serve.schema import ServeDeploySchema

    serve_config = yaml.safe_load((tmp_path / "serve.ensemble.config").read_text())
    ServeDeploySchema.model_validate(serve_config)
    app = serve_config["applications"][0]
    assert app["args"]["model"] == "artifacts/tiny_ensemble.pth"
    assert {d["name"] for d in app["deployments"]} == {"DeepfakeAPI", "Detector_tiny_1", "Detector_tiny_2",
                                                       "Detector_frequency"}
    assert sum(d["ray_actor_options"]["num_cpus"] for d in app["deployments"]) <= 2
