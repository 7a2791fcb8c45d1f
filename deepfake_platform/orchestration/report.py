"""The results report of a run: RESULTS.md, results.json and PNG plots, from one results dict.

`render_markdown` is a pure function of the results; `write_report` is the only part touching files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_platform.calibration import BINS, plot_reliability
from deepfake_platform.reporting import cell, plot_roc, write_json, write_text_atomic
from models import format_parameter_table

SECTIONS = (
    "## Best model",
    "## Test metrics",
    "## Calibration and operating points",
    "## Training by epoch",
    "## Architecture and parameters",
    "## Hyperparameters",
    "## Hardware and timing",
    "## Checkpoints",
    "## Loading the best model",
)


def _metric_rows(test: dict[str, Any]) -> list[str]:
    at_val, at_half = test["at_val_threshold"], test["at_0.5"]
    rows = [
        "| metric | at 0.5 | at validation threshold ({}) |".format(cell(at_val["threshold"])),
        "| --- | --- | --- |",
    ]
    for key in ("accuracy", "precision", "recall", "f1"):
        rows.append(f"| {key} | {cell(at_half[key])} | {cell(at_val[key])} |")
    cm_half, cm_val = at_half["confusion_matrix"], at_val["confusion_matrix"]
    rows.append(
        "| confusion (tn/fp/fn/tp) | {tn}/{fp}/{fn}/{tp} | ".format(**cm_half)
        + "{tn}/{fp}/{fn}/{tp} |".format(**cm_val)
    )
    return rows


def render_metrics_table(metrics: dict[str, Any]) -> str:
    """The test-metrics tables (threshold-free metrics, then at 0.5 and at the validation threshold)."""
    lines = ["| metric | value |", "| --- | --- |"]
    for key, label in (("auc", "ROC AUC"), ("average_precision", "average precision"), ("eer", "equal error rate")):
        lines.append(f"| {label} | {cell(metrics[key])} |")
    return "\n".join(lines + [""] + _metric_rows(metrics))


def render_markdown(results: dict[str, Any]) -> str:
    """RESULTS.md for a run: every section a colleague needs, from the results dict alone."""
    best, test, history = results["best"], results["test"]["metrics"], results["history"]
    config, params, hardware, timing = results["config"], results["parameters"], results["hardware"], results["timing"]
    lines = [f"# Results: {results['run']}", "", f"Created {results['created']}. Data: `{results['data_root']}`.", ""]
    if results.get("pretrained_status"):
        status = ", ".join(f"{k}: {v}" for k, v in results["pretrained_status"].items())
        lines += [f"Pretrained weights: {status}.", ""]

    lines += [SECTIONS[0], "", "| item | value |", "| --- | --- |"]
    lines += [
        f"| detector | `{results['detector']}` |",
        f"| best epoch (validation AUC) | {best['epoch']} |",
        f"| validation AUC | {cell(best['val_auc'])} |",
        f"| decision threshold (chosen on validation) | {cell(best['val_threshold'])} |",
        f"| test AUC | {cell(test['auc'])} |",
    ]
    video = results["test"].get("video")
    if best.get("video"):
        lines += [f"| validation AUC per video (mean of its frames) | {cell(best['video'].get('val_auc'))} |",
                  f"| video threshold (chosen on validation videos) | {cell(best['video'].get('threshold'))} |"]
    if video:
        lines.append(f"| test AUC per video | {cell(video['metrics']['auc'])} |")
    if results.get("faces"):
        faces = results["faces"]
        lines.append(f"| faces | {faces.get('mode')} ({faces.get('detector')}, margin {faces.get('margin')}, "
                     f"{faces.get('crop_size')} px crops) |")
    lines += [f"| checkpoint | `{best['checkpoint']}` |"]
    if results.get("promoted"):
        lines.append(f"| promoted to | `{results['promoted']}` |")
    if results.get("registered"):
        registered = results["registered"]
        lines.append(f"| registered as | version {registered['version']} ({registered['role']}), "
                     f"`{registered['file']}` |")

    lines += ["", SECTIONS[1], "", f"Test split: {test['n']} images ({test['n_real']} real, {test['n_fake']} fake).", ""]
    lines += [render_metrics_table(test), "", "![ROC on test](roc_test.png)", ""]
    if video:
        metrics = video["metrics"]
        lines += [f"Per video: {metrics['n']} videos ({metrics['n_real']} real, {metrics['n_fake']} fake), each "
                  "scored by the mean of its frames' fake probabilities (DeepfakeBench's video AUC), labelled at "
                  "the threshold chosen on validation videos.", "", render_metrics_table(metrics), ""]

    lines += render_calibration(results.get("calibration"))

    per_video = any("val_video_auc" in row for row in history)
    lines += [SECTIONS[3], "", "| epoch | train loss | val loss | val AUC |" + (" val video AUC |" if per_video else "")
              + " images/s | time (s) | best |", "|" + " --- |" * (7 + per_video)]
    for row in history:
        mark = "**best**" if int(row["epoch"]) == int(best["epoch"]) else ""
        lines.append(
            f"| {int(row['epoch'])} | {cell(row['train_loss'])} | {cell(row['val_loss'])} | {cell(row['val_auc'])} |"
            + (f" {cell(row.get('val_video_auc'))} |" if per_video else "")
            + f" {cell(row['images_per_s'], 2)} | {cell(row['epoch_time_s'], 1)} | {mark} |"
        )
    lines += ["", "![Training curves](training_curves.png)", ""]

    lines += [SECTIONS[4], "", f"Detector `{results['detector']}` with arguments `{json.dumps(results['detector_kwargs'])}`.", ""]
    if "modules" in params:
        lines += [format_parameter_table(params)]
    else:
        lines += ["| parameters | count |", "| --- | --- |"]
        lines += [f"| {key} | {params[key]:,} |" for key in ("total", "trainable", "frozen")]

    train = config["train"]
    lines += ["", SECTIONS[5], "", "| hyperparameter | value |", "| --- | --- |"]
    lines += [
        f"| optimizer | Adam (lr {train['lr']:g}, weight decay {train['weight_decay']:g}) |",
        "| loss | BCEWithLogits |",
        f"| batch size (per worker) | {train['batch_size']} |",
        f"| epochs | {train['epochs']} |",
        f"| precision | {train['precision']} |",
        f"| freeze | {config['model']['freeze']} |",
        f"| pretrained policy | {config['model']['pretrained']} |",
        f"| image size | {results['image_size']} |",
        "| augmentation | RandomResizedCrop + RandomHorizontalFlip, ImageNet normalisation |",
        f"| seed | {train['seed']} |",
    ]

    lines += ["", SECTIONS[6], "", "| item | value |", "| --- | --- |"]
    for key in ("device", "cpu", "logical_cpus", "num_workers", "cpus_per_worker", "threads_per_worker", "precision",
                "python", "torch", "ray"):
        lines.append(f"| {key} | {hardware.get(key)} |")
    per_epoch = [row["epoch_time_s"] for row in history]
    lines += [
        f"| total wall time | {timing['total_s'] / 60:.1f} min |",
        f"| time per epoch | {np.mean(per_epoch):.1f} s mean ({', '.join(f'{t:.0f}' for t in per_epoch)}) |"
        if per_epoch else "| time per epoch | n/a |",
    ]

    lines += ["", SECTIONS[7], ""]
    lines += [f"- `{name}`" for name in results["checkpoints"]]

    lines += [
        "", SECTIONS[8], "",
        "```python",
        "from deepfake_platform.checkpoints import build_model, read_checkpoint",
        "",
        f"record = read_checkpoint('{best['checkpoint']}')  # torch.load(..., weights_only=True)",
        "model = build_model(record).eval()",
        "threshold = record.val_threshold  # chosen on validation",
        "```",
        "",
        "Or serve it: `serve run serve.config` (loads `artifacts/best.pth`), or evaluate it again:",
        f"`python experiments/evaluate.py --checkpoint {best['checkpoint']} --data {results['data_root']}`.",
        "",
    ]
    return "\n".join(lines)


def render_calibration(calibration: dict[str, Any] | None) -> list[str]:
    """The calibration section: the method, ECE before and after (validation, where it was fitted, and test),
    the reliability diagram, and each operating point's threshold with its rates on validation and test."""
    lines = [SECTIONS[2], ""]
    if not calibration or calibration.get("method", "identity") == "identity":
        return lines + ["No calibration recorded: probabilities are the plain sigmoid of the logit.", ""]
    method = calibration["method"] + (f" (T = {calibration['temperature']:.4f})"
                                      if calibration["method"] == "temperature" else "")
    val, test = calibration.get("val", {}), calibration.get("test", {})
    lines += [f"Fitted on the validation split ({val.get('images', 'n/a')} images): {method}. Every probability "
              "below and every threshold is on the calibrated scale. Expected calibration error: positive-class "
              f"variant, {BINS} equal-width bins (share-weighted |fake rate - mean fake probability|).", "",
              "| split | ECE before | ECE after |", "| --- | --- | --- |",
              f"| validation (fitted on) | {cell(val.get('ece_before'))} | {cell(val.get('ece_after'))} |",
              f"| test | {cell(test.get('ece_before'))} | {cell(test.get('ece_after'))} |", "",
              "![Reliability on test, before and after](reliability_test.png)", ""]
    points = calibration.get("operating_points") or {}
    if points:
        lines += ["Operating points, chosen on validation (`--operating-point NAME`):", "",
                  "| operating point | target | threshold | val FPR | val FNR | test FPR | test FNR | test accuracy |",
                  "|" + " --- |" * 8]
        for name, point in points.items():
            target = (f"FPR <= {point['target_fpr']:g}" if "target_fpr" in point
                      else f"FNR <= {point['target_fnr']:g}" if "target_fnr" in point else "Youden's J")
            lines.append(f"| {name} | {target} | {cell(point['threshold'])} | {cell(point.get('val_fpr'))} | "
                         f"{cell(point.get('val_fnr'))} | {cell(point.get('test_fpr'))} | {cell(point.get('test_fnr'))} | "
                         f"{cell(point.get('test_accuracy'))} |")
        lines.append("")
    return lines


def plot_training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Train / validation loss and validation AUC per epoch, PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    loss_ax.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="BCE loss", title="loss")
    loss_ax.legend()
    auc_ax.plot(epochs, [row["val_auc"] for row in history], marker="o", color="tab:green")
    auc_ax.set(xlabel="epoch", ylabel="AUC", title="validation AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], run_dir: Path) -> Path:
    """Write RESULTS.md, results.json, roc_test.png and training_curves.png; return RESULTS.md."""
    run_dir.mkdir(parents=True, exist_ok=True)
    test = results["test"]
    plot_roc([("detector", np.asarray(test["labels"]), np.asarray(test["scores"]))], run_dir / "roc_test.png",
             "ROC on test")
    plot_training_curves(results["history"], run_dir / "training_curves.png")
    if "logits" in test and (results.get("calibration") or {}).get("method", "identity") != "identity":
        plot_reliability([("before (sigmoid)", test["labels"], 1.0 / (1.0 + np.exp(-np.asarray(test["logits"])))),
                          ("after", test["labels"], test["scores"])], run_dir / "reliability_test.png",
                         "Reliability on test")
    write_json(run_dir / "results.json", results)
    return write_text_atomic(run_dir / "RESULTS.md", render_markdown(results))
