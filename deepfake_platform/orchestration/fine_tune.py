"""Fine-tuning on production feedback through Ray Train: resume a detector on its training data plus labelled
corrections, then keep the new model only when it is better where it was wrong and no worse where it was right.

The steps without Ray live in `deepfake_platform.fine_tuning` (the feedback split, the combined data root,
judging, the promotion rule, the report); this module runs them around one Ray Train run, tracks the run in
MLflow and, when the rule says so, registers the new model as a version fine-tuned from the one it started
from: the challenger by default (the server shadows it), the champion with `champion=True` (`--promote`) or
when there is no champion yet.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from deepfake_platform.checkpoints import DetectorCheckpoint, file_sha256, read_checkpoint, write_checkpoint
from deepfake_platform.config import ExperimentConfig, OutputConfig, apply_overrides, config_from_dict
from deepfake_platform.data import resolve_data_root
from deepfake_platform.evaluation import calibrate_checkpoint
from deepfake_platform.files import copy_atomic, link_or_copy
from deepfake_platform.fine_tuning.combined_data import build_combined_root
from deepfake_platform.fine_tuning.decision import decide
from deepfake_platform.fine_tuning.feedback_split import FeedbackError, collect_feedback, split_feedback
from deepfake_platform.fine_tuning.judging import judge
from deepfake_platform.fine_tuning.report import write_fine_tune_report
from deepfake_platform.media import MediaScorer, scoring_choices
from deepfake_platform.orchestration.cluster import ensure_ray
from deepfake_platform.orchestration.finalize import publish
from deepfake_platform.orchestration.train import run_training
from deepfake_platform.outputs import RunPaths, anchor_outputs, output_home
from deepfake_platform.predict import Predictor
from deepfake_platform.registry import Registry
from deepfake_platform.tracking import RunRecord, Tracking


def fine_tune_config(record: DetectorCheckpoint, source: str, *, name: str, data_root: Path, epochs: int,
                     lr: float, overrides: list[str] | None = None) -> ExperimentConfig:
    """The original run's config, on the combined data, for a few epochs at a (lower) learning rate. The
    weights come from the checkpoint, so no ImageNet weights are looked for."""
    data = apply_overrides(record.config, overrides or [])
    config = config_from_dict(data, f"{source}" + (" + --set" if overrides else ""))
    config.output = OutputConfig()
    config.name = name
    config.data.root = str(data_root)
    config.train.epochs = epochs
    config.train.lr = lr
    config.model.pretrained = "off"
    return config


def keep_previous(artifacts: Path) -> Path | None:
    """Keep the model about to be replaced as artifacts/previous_best.pth (and its best.json)."""
    current = artifacts / "best.pth"
    if not current.is_file():
        return None
    # The promotion renames a new file over best.pth, so a hard link keeps the old bytes.
    previous = link_or_copy(current, artifacts / "previous_best.pth")
    if (artifacts / "best.json").is_file():
        copy_atomic(artifacts / "best.json", artifacts / "previous_best.json")
    return previous


def fine_tune(*, checkpoint: str | Path, feedback_dir: str | Path, data: str | None = None, epochs: int = 2,
              lr: float | None = None, margin: float = 0.01, min_robust_auc: float | None = None,
              held_back: float = 0.3, repeat: int | None = None,
              name: str | None = None, promote: bool = True, champion: bool = False,
              overrides: list[str] | None = None, verbose: bool = False, home: Path | None = None) -> dict[str, Any]:
    """Fine-tune `checkpoint` on its training data plus the feedback through Ray Train, judge before and
    after, register when the rule says so (`promote`; the champion when `champion`, else the challenger), track
    the run, write the report; the result (also in runs/<run>/fine_tune.json)."""
    if margin < 0:
        raise FeedbackError(f"--margin must be 0 or more (the validation AUC the new model may lose), not {margin}.")
    checkpoint = Path(checkpoint).expanduser().resolve()
    record = read_checkpoint(checkpoint, DetectorCheckpoint)
    items, skipped = collect_feedback(feedback_dir)
    if not items:
        raise FeedbackError(
            f"{feedback_dir} holds no labelled image to fine-tune on"
            + "".join(f"; {count} correction(s) skipped ({why})" for why, count in skipped.items() if count)
            + ". A server with args.keep_feedback_images: false keeps labels only, which can judge but not train."
        )
    train_items, held_items = split_feedback(items, held_back)
    home = home or output_home()
    tracking = Tracking.start(home, verbose=verbose)  # MLflow's store opens while the model trains
    # Outputs under this command's home, like every other command's (the record's paths may be another machine's).
    original = anchor_outputs(record.experiment_config.model_copy(update={"output": OutputConfig()}), home)
    data_root = resolve_data_root(data, original.data.root, original.data.embedded, home)
    run_name = name or now_name()
    paths = RunPaths.for_config(anchor_outputs(original.model_copy(update={"name": run_name}), home))
    combined = paths.run_dir / "data"
    # Built before any work, so that a bad --set is a sentence at once.
    config = anchor_outputs(fine_tune_config(record, str(checkpoint), name=run_name, data_root=combined,
                                             epochs=epochs, lr=lr if lr is not None else original.train.lr / 10,
                                             overrides=overrides), home)

    old_scorer = MediaScorer(Predictor(record, precision=record.trained_precision, path=checkpoint))
    print(f"Fine-tuning {record.detector} from {checkpoint}: {len(train_items)} feedback image(s) to train on, "
          f"{len(held_items)} held back, on {data_root}.", flush=True)
    contents = build_combined_root(data_root, combined, train_items, old_scorer, repeat)
    before = judge(old_scorer, record, checkpoint, held_items, data_root)
    del old_scorer

    ensure_ray(verbose=verbose)  # ray: the Ray Train run starts here
    outcome = run_training(config, combined, verbose=verbose, init_from=str(checkpoint))
    # Calibrated and given its operating points on the original validation split, as training's finalize_run does.
    new = calibrate_checkpoint(outcome.best_checkpoint, data_root)
    new_scorer = MediaScorer(Predictor(new, precision=new.trained_precision, path=outcome.best_checkpoint))
    after = judge(new_scorer, new, outcome.best_checkpoint, held_items, data_root)
    if min_robust_auc is not None:  # the gate: the worst test AUC under the robustness report's perturbations
        from deepfake_platform.robustness import robustness_report

        robust = robustness_report(new_scorer.predictor, data_root, scoring_choices(new))
        after.update(robust_auc=robust["worst_auc"], robust_condition=robust["worst_condition"])
    chosen, reason = decide(before, after, margin, min_robust_auc)
    result: dict[str, Any] = {
        "run": run_name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "from": str(checkpoint),
        "from_sha256": file_sha256(checkpoint),
        "data_root": str(data_root),
        "combined_data_root": str(combined),
        "epochs": config.train.epochs,
        "lr": config.train.lr,
        "margin": margin,
        "min_robust_auc": min_robust_auc,
        "feedback": {"directory": str(Path(feedback_dir).resolve()), "train_images": len(train_items),
                     "held_back_images": len(held_items), "skipped": skipped, "crops": contents["feedback_crops"],
                     "no_face": contents["no_face"], "repeat": contents["repeat"],
                     "original_train_images": contents["original_train_images"],
                     "held_back": [item.request_id for item in held_items]},
        "before": before,
        "after": after,
        "new_checkpoint": str(outcome.best_checkpoint),
        "promote_requested": promote,
        "decision": "promote" if chosen else "keep",
        "reason": reason if promote or not chosen else reason.replace("Promoted", "Would promote") + " (--no-promote)",
        "promoted": None,
        "previous": None,
        "registered": None,
    }
    register = chosen and promote
    model = write_checkpoint(new.without_optimizer(), paths.run_dir / "model" / "best.pth") if register else None
    run_id = tracking.log_run(RunRecord(
        name=run_name, params={**config.to_dict(), "fine_tune": {"from": str(checkpoint), "margin": margin,
                                                                  "held_back": held_back}},
        history=new.history, model=model, files=[],
        metrics={**{f"before_{k}": before[k] for k in ("val_auc", "test_auc")},
                 **{f"after_{k}": after[k] for k in ("val_auc", "test_auc")},
                 "before_feedback_accuracy": before["feedback"]["accuracy"],
                 "after_feedback_accuracy": after["feedback"]["accuracy"]},
        tags={"kind": "fine-tune", "decision": result["decision"], "from_sha256": result["from_sha256"]}),
        finish=False)
    if model is not None:
        registry = Registry(home, paths.artifacts, tracking=tracking)
        parent = registry.version_by_sha256(result["from_sha256"]) if run_id else None
        # The served model is replaced only when the new one becomes the champion: keep it first.
        replaces = champion or run_id is None or not registry.state().get("champion")
        previous = keep_previous(paths.artifacts) if replaces else None
        summary = {"run": run_name, "fine_tuned_from": str(checkpoint),
                   "best": {"epoch": new.epoch, "val_auc": new.val_auc, "val_threshold": new.val_threshold},
                   "fine_tune": {"before": {k: before[k] for k in ("val_auc", "test_auc")},
                                 "after": {k: after[k] for k in ("val_auc", "test_auc")}}}
        tags = {"kind": "fine-tune", "run": run_name, "data_root": str(data_root), "val_auc": after["val_auc"],
                "test_auc": after["test_auc"], "parent_version": parent}
        result["promoted"], result["registered"] = publish(model, paths.artifacts, summary, tracking=tracking,
                                                           run_id=run_id, tags=tags, champion=champion)
        result["previous"] = str(previous) if previous and result["promoted"] else None
    report = write_fine_tune_report(result, paths.run_dir)
    result["report"] = str(report)
    tracking.finish(run_id, [report, report.parent / "fine_tune.json"])
    return result


def now_name() -> str:
    """A run name for a fine-tuning run started now."""
    return f"finetune-{dt.datetime.now():%Y%m%d-%H%M%S}"
