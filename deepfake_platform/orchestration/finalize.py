"""After training: test the best checkpoint, write the report, track the run, register the model the server loads.

The run goes to MLflow (deepfake_platform/tracking.py) with its config, per-epoch history, test metrics, report
and, when promoted, its model (without optimizer); the model becomes a new version of the registered detector
(deepfake_platform/registry.py): the champion for the main job, the challenger for a sweep's best trial unless
asked otherwise. When the tracking store cannot be reached, the model is promoted to artifacts/best.pth as
before and one sentence says tracking failed.
"""

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
from deepfake_platform.files import link_or_copy
from deepfake_platform.hardware import machine_summary
from deepfake_platform.orchestration.report import write_report
from deepfake_platform.orchestration.train import TrainingOutcome
from deepfake_platform.registry import Registry
from deepfake_platform.reporting import write_json
from deepfake_platform.tracking import RunRecord, Tracking


def finalize_run(outcome: TrainingOutcome, data_root: Path, *, promote_best: bool = True, champion: bool = True,
                 tracking: Tracking | None = None, parent_run_id: str | None = None, kind: str = "train") -> Path:
    """Evaluate the best checkpoint on test, write runs/<run>/RESULTS.md and friends, track the run and register
    its model (the champion when `champion`, else the challenger); the report's path."""
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
        "registered": None,
    }
    tracking = tracking or Tracking.start(paths.artifacts.parent)
    model = write_checkpoint(best.without_optimizer(), paths.run_dir / "model" / "best.pth") if promote_best else None
    run_id = tracking.log_run(RunRecord(
        name=config.name, params=config.to_dict(), history=results["history"], model=model,
        metrics={"best_val_auc": best.val_auc, "best_epoch": best.epoch,
                 **{f"test_{key}": value for key, value in test["metrics"].items()}},
        files=[], tags={"kind": kind, "data_root": str(data_root), "detector": best.detector},
        parent_run_id=parent_run_id), finish=False)
    if model is not None:
        summary = {"run": config.name, "best": results["best"], "test": test["metrics"]}
        tags = {"kind": kind, "run": config.name, "data_root": str(data_root), "val_auc": best.val_auc,
                "test_auc": test["metrics"].get("auc")}
        results["promoted"], results["registered"] = publish(model, paths.artifacts, summary, tracking=tracking,
                                                             run_id=run_id, tags=tags, champion=champion)
    save_config(config, paths.run_dir / "config.yaml")
    report = write_report(results, paths.run_dir)
    tracking.finish(run_id, [report, paths.run_dir / "results.json", paths.run_dir / "config.yaml",
                             *sorted(paths.run_dir.glob("*.png"))])
    return report


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


def publish(model: Path, artifacts: Path, summary: dict[str, Any], *, tracking: Tracking, run_id: str | None,
            tags: dict[str, Any], champion: bool) -> tuple[str | None, dict[str, Any] | None]:
    """Register `model` (a checkpoint without optimizer, logged with run `run_id`) as a new version, the champion
    or the challenger; (the path now served when it became champion, {version, role, file}). Without a
    tracking store (run_id None) the champion's file is written as before: artifacts/best.pth."""
    if run_id is None:
        if not champion and (artifacts / "best.pth").is_file():
            return None, None  # a challenger needs the registry; the served model stays
        return str(promote(model, artifacts, summary)), None
    registry = Registry(tracking.home, artifacts, tracking=tracking)
    registered = registry.register(model, run_id=run_id, summary=summary, tags=tags, champion=champion)
    served = str(artifacts / "best.pth") if registered.role == "champion" else None
    print(f"Registered as version {registered.version} of the detector, the {registered.role}"
          + ("." if served else f" (promote it with `python experiments/models.py promote {registered.version}`)."),
          flush=True)
    return served, {"version": registered.version, "role": registered.role, "file": str(registered.file)}


def promote(model: Path, artifacts: Path, summary: dict[str, Any]) -> Path:
    """Make a checkpoint without optimizer artifacts/best.pth, with its metrics in best.json (no registry)."""
    target = link_or_copy(model, artifacts / "best.pth")
    write_json(artifacts / "best.json", summary)
    return target
