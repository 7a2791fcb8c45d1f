"""After training: test the best checkpoint, write the report, promote the model the server loads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from deepfake_platform.checkpoints import (
    DetectorCheckpoint,
    describe_parameters,
    epoch_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from deepfake_platform.config import save_config
from deepfake_platform.evaluation import calibrate_checkpoint, calibration_results, evaluate_record
from deepfake_platform.hardware import machine_summary
from deepfake_platform.orchestration.report import write_report
from deepfake_platform.orchestration.train import TrainingOutcome
from deepfake_platform.reporting import write_json


def finalize_run(outcome: TrainingOutcome, data_root: Path, *, promote_best: bool = True) -> Path:
    """Evaluate the best checkpoint on test, write runs/<run>/RESULTS.md and friends, promote; the report's path."""
    config, paths = outcome.config, outcome.paths
    # Calibration and operating points fitted on validation and written into best.pth before anything uses it.
    best = calibrate_checkpoint(outcome.best_checkpoint, data_root)
    test = evaluate_record(best, outcome.best_checkpoint, data_root, "test")
    checkpoints = sorted(p.name for p in paths.checkpoints.glob("*.pth"))  # the epochs and best.pth
    results: dict[str, Any] = {
        "run": config.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data_root": str(data_root),
        "detector": best.detector,
        "detector_kwargs": best.detector_kwargs,
        "image_size": test["model"]["image_size"],
        "pretrained_status": best.pretrained_status,
        "config": config.to_dict(),
        "best": {"epoch": best.epoch, "val_auc": best.val_auc, "val_threshold": best.val_threshold,
                 "checkpoint": str(outcome.best_checkpoint), "video": best.video},
        "faces": best.faces,
        "test": test,
        "calibration": calibration_results(best, test),
        "history": _full_history(paths.checkpoints, best.history),
        "parameters": describe_parameters(best),
        "hardware": machine_summary(
            "cuda" if config.scaling.use_gpu else "cpu", config.scaling.num_workers, outcome.cpus_per_worker,
            _threads(best.history), best.trained_precision,
        ),
        "timing": {"total_s": outcome.wall_time_s, "epochs_s": outcome.epoch_time_s},
        "checkpoints": [str(paths.checkpoints / name) for name in checkpoints],
        "promoted": None,
    }
    if promote_best:
        summary = {"run": config.name, "best": results["best"], "test": test["metrics"]}
        results["promoted"] = str(promote(best, paths.artifacts, summary))
    save_config(config, paths.run_dir / "config.yaml")
    return write_report(results, paths.run_dir)


def _threads(history: list[dict[str, float]]) -> int | None:
    """The torch threads the workers really ran (recorded each epoch), or None for a run that predates it."""
    counts = [int(row["threads"]) for row in history if "threads" in row]
    return counts[-1] if counts else None


def _full_history(checkpoints_dir: Path, best_history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Every epoch's metrics: the best checkpoint's history stops at the best epoch, the last one's does not."""
    latest = epoch_checkpoints(checkpoints_dir)
    if not latest:
        return best_history
    return read_checkpoint(latest[-1], DetectorCheckpoint).history


def promote(best: DetectorCheckpoint, artifacts: Path, summary: dict[str, Any]) -> Path:
    """Write the best model to artifacts/best.pth (without the optimizer) with its metrics in best.json."""
    target = write_checkpoint(best.without_optimizer(), artifacts / "best.pth")
    write_json(artifacts / "best.json", summary)
    return target
