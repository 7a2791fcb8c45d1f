"""After training: test the best checkpoint, write the report, promote the model the server loads."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from deepfake_platform.checkpoints import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from deepfake_platform.config import save_config
from deepfake_platform.evaluation import evaluate_checkpoint
from deepfake_platform.report import hardware_summary, write_report
from deepfake_platform.training import TrainingOutcome, cpus_per_worker


def parameter_counts(model) -> dict[str, int]:
    """Total, trainable and frozen parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def promote(best_checkpoint: Path, artifacts: Path, summary: dict[str, Any]) -> Path:
    """Copy the best model to artifacts/best.pth (weights only, no optimizer) with its metrics beside it."""
    payload = load_checkpoint(best_checkpoint)
    payload.pop("optimizer_state_dict", None)
    target = save_checkpoint(payload, artifacts / "best.pth")
    (artifacts / "best.json").write_text(json.dumps(summary, indent=2, default=str))
    return target


def finalize_run(outcome: TrainingOutcome, data_root: Path, *, promote_best: bool = True) -> Path:
    """Evaluate the best checkpoint on test, write runs/<run>/RESULTS.md and friends, promote; return the report."""
    config, paths = outcome.config, outcome.paths
    best = load_checkpoint(outcome.best_checkpoint)
    test = evaluate_checkpoint(outcome.best_checkpoint, data_root, "test", precision=config.train.precision)
    # The detector's kwargs include `freeze`, so the rebuilt model counts what was trained.
    model = build_model_from_checkpoint(best)
    history = best["history"]
    checkpoints = sorted(p.name for p in paths.checkpoints.glob("*.pth"))
    results: dict[str, Any] = {
        "run": config.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data_root": str(data_root),
        "detector": best["detector"]["name"],
        "detector_kwargs": best["detector"]["kwargs"],
        "image_size": test["model"]["image_size"],
        "pretrained_status": best.get("pretrained_status", {}),
        "config": config.to_dict(),
        "best": {
            "epoch": int(best["epoch"]),
            "val_auc": float(best["val_auc"]),
            "val_threshold": float(best["val_threshold"]),
            "checkpoint": str(outcome.best_checkpoint),
        },
        "test": test,
        "history": _full_history(paths.checkpoints, history),
        "parameters": parameter_counts(model),
        "hardware": hardware_summary(
            "cuda" if config.scaling.use_gpu else "cpu", config.scaling.num_workers, cpus_per_worker(config),
            config.train.precision,
        ),
        "timing": {"total_s": outcome.wall_time_s},
        "checkpoints": [str(paths.checkpoints / name) for name in checkpoints],
        "promoted": None,
    }
    if promote_best:
        summary = {"run": config.name, "best": results["best"], "test": test["metrics"]}
        results["promoted"] = str(promote(outcome.best_checkpoint, paths.artifacts, summary))
    save_config(config, paths.run_dir / "config.yaml")
    return write_report(results, paths.run_dir)


def _full_history(checkpoints_dir: Path, best_history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Every epoch's metrics: the best checkpoint's history stops at the best epoch, the last one's does not."""
    latest = sorted(checkpoints_dir.glob("epoch_*.pth"))
    if not latest:
        return best_history
    return load_checkpoint(latest[-1])["history"]

