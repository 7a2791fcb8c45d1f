"""The robustness report: seeded perturbations of decoded files, and evaluate.py --robustness on a tiny model
writing a row per condition, the JSON and the plot."""

from __future__ import annotations

import json

import numpy as np

from deepfake_platform.robustness import CONDITIONS, noise, social
from experiments import evaluate
from tests.factories import photo, tiny_checkpoint


def test_perturbations_are_seeded_and_the_social_chain_shrinks_only_large_pictures():
    picture = photo(0, 96)
    assert np.array_equal(np.asarray(noise(picture, 3)), np.asarray(noise(picture, 3)))
    assert not np.array_equal(np.asarray(noise(picture, 3)), np.asarray(noise(picture, 4)))
    assert social(picture.resize((2000, 1500))).size == (1080, 810)
    assert social(picture).size == picture.size
    for condition in CONDITIONS[1:]:
        changed = condition.apply(picture, 0)
        assert changed.size == picture.size and changed.mode == "RGB", condition.name
        assert not np.array_equal(np.asarray(changed), np.asarray(picture)), condition.name


def test_evaluate_robustness_writes_a_row_per_condition_the_json_and_the_plot(data_root, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pth")
    args = evaluate.get_args_parser().parse_args(
        ["--checkpoint", str(checkpoint), "--data", str(data_root), "--robustness", "--precision", "fp32",
         "--report-dir", str(tmp_path / "report"), "--out", str(tmp_path / "metrics.json")])
    result = evaluate.main(args)
    report = json.loads((tmp_path / "report" / "robustness.json").read_text())
    names = [row["condition"] for row in report["conditions"]]
    assert names == ["clean", "jpeg_90", "jpeg_70", "jpeg_50", "jpeg_30", "downscale_0.75", "downscale_0.5",
                     "downscale_0.25", "blur", "noise", "social"]
    assert all({"auc", "eer", "accuracy", "fpr", "fnr"} <= set(row) for row in report["conditions"])
    clean = report["conditions"][0]
    assert clean["auc"] == result["metrics"]["auc"]  # the clean row is evaluation's own score
    assert report["worst_auc"] == min(row["auc"] for row in report["conditions"][1:])
    assert (tmp_path / "report" / "robustness.png").stat().st_size > 1000
    markdown = (tmp_path / "report" / "ROBUSTNESS.md").read_text()
    assert all(f"| {name} |" in markdown for name in names)
    assert json.loads((tmp_path / "metrics.json").read_text())["robustness"]["worst_condition"] == report["worst_condition"]


def test_fine_tuning_can_require_a_worst_case_auc_under_perturbations():
    from deepfake_platform.fine_tuning.decision import decide

    before = {"feedback": {"correct": 1, "images": 3, "log_loss": 0.9}, "val_auc": 0.8}
    after = {"feedback": {"correct": 2, "images": 3, "log_loss": 0.5}, "val_auc": 0.8, "robust_auc": 0.6,
             "robust_condition": "jpeg_30"}
    kept, reason = decide(before, after, 0.01, min_robust_auc=0.7)
    assert not kept and "worst AUC under perturbations is 0.6000 (jpeg_30), below the required 0.7" in reason
    assert decide(before, after, 0.01, min_robust_auc=0.5)[0] and decide(before, after, 0.01)[0]
