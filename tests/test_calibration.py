"""Calibrated probabilities and operating points: the maths on constructed scores, then through a real tiny
checkpoint on real image files (calibrated on its validation split, scored by the one predict path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit

from deepfake_platform.calibration import (
    Calibration,
    choose_operating_points,
    expected_calibration_error,
    fit_calibration,
    plot_reliability,
)
from deepfake_platform.checkpoints import CheckpointError, operating_thresholds, read_checkpoint
from deepfake_platform.data import load_image, load_split
from deepfake_platform.evaluation import calibrate_checkpoint, calibration_results, evaluate_record
from deepfake_platform.media import scoring_choices
from deepfake_platform.metrics import error_rates
from deepfake_platform.orchestration.report import render_calibration
from deepfake_platform.predict import Predictor
from tests.factories import tiny_checkpoint, tiny_record


def overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits of a model that separates the classes but is too sure of itself: x = +-1 + N(0, 1) has
    the log-odds 2x, and the model says 5x (so the right temperature is 2.5)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, 5.0 * (2.0 * labels - 1.0 + rng.normal(0, 1.0, n))


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_lowers_the_ece_of_an_overconfident_model_and_keeps_its_ranking(method):
    labels, logits = overconfident()
    fitted = fit_calibration(labels[:2000], logits[:2000], method)
    before = expected_calibration_error(labels[2000:], expit(logits[2000:]))
    after = expected_calibration_error(labels[2000:], fitted.apply(logits[2000:]))  # held-out half
    assert before > 0.05 and after < before / 2, (before, after)
    order = np.argsort(logits)
    assert (np.diff(fitted.apply(logits)[order]) >= 0).all()  # monotone: the AUC cannot change (up to ties)
    if method == "temperature":
        assert 2.2 < fitted.temperature < 2.8
    assert Calibration.from_dict(fitted.to_dict()) == fitted


def test_an_absent_calibration_is_the_plain_sigmoid_and_its_logit_comes_back():
    logits = np.array([-8.0, -1.0, 0.0, 2.5, 9.0])
    assert np.allclose(Calibration.from_dict({}).apply(logits), expit(logits))
    fitted = Calibration("temperature", temperature=2.0)
    assert [round(fitted.raw_logit(float(p)), 6) for p in fitted.apply(logits)] == logits.tolist()
    assert Calibration("isotonic", knots_x=(0.0, 1.0), knots_y=(0.2, 0.8)).raw_logit(0.5) is None


def test_ece_is_the_positive_class_variant_over_15_equal_width_bins():
    # Ten predictions of 0.05 (bin 0) with one fake, ten of 0.95 (bin 14) with all fakes: |0.1-0.05| and |1-0.95|.
    labels = np.array([1] + [0] * 9 + [1] * 10)
    probabilities = np.array([0.05] * 10 + [0.95] * 10)
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)


def test_operating_points_reach_their_target_rates_on_the_data_they_were_chosen_on():
    labels, logits = overconfident(3000, seed=1)
    probabilities = fit_calibration(labels, logits).apply(logits)
    points = choose_operating_points(labels, probabilities, target_fpr=0.01, target_fnr=0.02)
    assert set(points) == {"balanced", "high_precision", "high_recall"}
    fpr, fnr = error_rates(labels, probabilities, points["high_precision"]["threshold"])
    assert fpr <= 0.01 and fpr == points["high_precision"]["val_fpr"]
    assert fpr > 0.005  # as many fakes caught as the target allows, not a threshold above everything
    fpr, fnr = error_rates(labels, probabilities, points["high_recall"]["threshold"])
    assert fnr <= 0.02 and fnr > 0.01
    thresholds = [points[name]["threshold"] for name in ("high_recall", "balanced", "high_precision")]
    assert thresholds == sorted(thresholds)


def test_a_real_tiny_checkpoint_is_calibrated_on_validation_and_every_door_uses_the_calibrated_scale(
        data_root, tmp_path):
    # Over-confident: the last layer's weights multiplied by 40 give saturated sigmoids with a random ranking.
    record = tiny_record()
    record.model_state_dict["head.4.weight"] = record.model_state_dict["head.4.weight"] * 40.0
    path = tiny_checkpoint(tmp_path / "old.pth")
    old = Predictor(path, precision="fp32")
    images = [load_image(p) for p, _ in load_split(data_root, "test")[:4]]
    batch = old.preprocess(images)
    # An old checkpoint (no calibration): exactly the plain sigmoid of its logits, and balanced only.
    assert np.allclose(old.predict_images(images), expit(old.predict_logits(batch)), atol=1e-6)
    with pytest.raises(CheckpointError, match="no high_recall operating point"):
        operating_thresholds(read_checkpoint(path), "high_recall")

    from deepfake_platform.checkpoints import write_checkpoint

    hot = write_checkpoint(record, tmp_path / "hot.pth")
    calibrated = calibrate_checkpoint(hot, data_root, out=tmp_path / "calibrated.pth")
    assert calibrated.calibration["method"] == "temperature" and calibrated.calibration["temperature"] > 1.0
    assert calibrated.calibration["val_ece_after"] < calibrated.calibration["val_ece_before"]
    assert set(calibrated.operating_points) == {"balanced", "high_precision", "high_recall"}
    assert calibrated.val_threshold == calibrated.operating_points["balanced"]["threshold"]

    predictor = Predictor(tmp_path / "calibrated.pth", precision="fp32")
    logits = predictor.predict_logits(predictor.preprocess(images))
    probabilities = predictor.predict_images(images)
    assert np.allclose(probabilities, expit(logits / calibrated.calibration["temperature"]), atol=1e-6)
    choices = scoring_choices(read_checkpoint(tmp_path / "calibrated.pth"), operating_point="high_recall")
    assert choices.threshold == calibrated.operating_points["high_recall"]["threshold"]
    assert choices.operating_point == "high_recall"

    from experiments import predict as predict_cli

    images[0].save(tmp_path / "face.png")
    (answer,) = predict_cli.main(predict_cli.get_args_parser().parse_args(
        [str(tmp_path / "face.png"), "--checkpoint", str(tmp_path / "calibrated.pth"), "--precision", "fp32",
         "--operating-point", "high_recall"]))
    assert answer["threshold"] == calibrated.operating_points["high_recall"]["threshold"]
    assert answer["fake_probability"] == pytest.approx(float(probabilities[0]), abs=1e-5)
    assert answer["logit"] == pytest.approx(float(logits[0]), rel=1e-3, abs=1e-3)  # the raw logit stays

    test = evaluate_record(calibrated, tmp_path / "calibrated.pth", data_root, "test")
    assert np.allclose(test["scores"], expit(np.asarray(test["logits"]) / calibrated.calibration["temperature"]),
                       atol=1e-6)
    results = calibration_results(calibrated, test)
    assert results["test"]["ece_after"] < results["test"]["ece_before"]
    assert set(results["operating_points"]["high_precision"]) >= {"threshold", "test_fpr", "test_fnr"}
    section = "\n".join(render_calibration(results))
    assert "## Calibration and operating points" in section and "| high_precision | FPR <= 0.01 |" in section
    plot = plot_reliability([("before", test["labels"], expit(test["logits"])), ("after", test["labels"], test["scores"])],
                            tmp_path / "reliability.png", "reliability")
    assert plot.stat().st_size > 1000
    torch.testing.assert_close(read_checkpoint(hot).model_state_dict["head.4.weight"],
                               calibrated.model_state_dict["head.4.weight"])
