"""runs/<run>/FINE_TUNE.md and fine_tune.json: what was trained on, before and after, the decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepfake_platform.files import write_text_atomic
from deepfake_platform.reporting import write_json


def _cell(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _promotion_line(result: dict[str, Any]) -> str:
    if not result["promoted"]:
        return "- Promoted: no; the served model is unchanged."
    kept = f" (the replaced model kept as `{result['previous']}`)" if result.get("previous") else ""
    return f"- Promoted: `{result['promoted']}`{kept}"


def render_fine_tune_report(result: dict[str, Any]) -> str:
    """The Markdown of FINE_TUNE.md for a fine-tuning result (see `orchestration.fine_tune.fine_tune`)."""
    before, after = result["before"], result["after"]
    rows = [
        ("Validation AUC (original split)", before["val_auc"], after["val_auc"]),
        ("Test AUC", before["test_auc"], after["test_auc"]),
        ("Held-back feedback right", f"{before['feedback']['correct']}/{before['feedback']['images']}",
         f"{after['feedback']['correct']}/{after['feedback']['images']}"),
        ("Held-back feedback accuracy", before["feedback"]["accuracy"], after["feedback"]["accuracy"]),
        ("Held-back feedback log loss", before["feedback"]["log_loss"], after["feedback"]["log_loss"]),
        ("Held-back feedback AUC", before["feedback"]["auc"], after["feedback"]["auc"]),
        ("Threshold", before["feedback"]["threshold"], after["feedback"]["threshold"]),
    ]
    used = result["feedback"]
    lines = [
        f"# Fine-tuning {result['run']}",
        "",
        f"**{result['reason']}**",
        "",
        f"- From: `{result['from']}` (sha256 `{result['from_sha256'][:16]}`)",
        f"- Feedback: `{used['directory']}`: {used['train_images']} image(s) trained on "
        f"({used['crops']['real']} real and {used['crops']['fake']} fake crop(s), each repeated {used['repeat']}x "
        f"beside {used['original_train_images']} original training images), {used['held_back_images']} held back "
        f"to judge; {used['no_face']} without a face were not trained on"
        + "".join(f"; {count} skipped ({why})" for why, count in used["skipped"].items() if count) + ".",
        f"- Training: {result['epochs']} epoch(s) at learning rate {result['lr']:g} through Ray Train; data "
        f"`{result['data_root']}`.",
        f"- New checkpoint: `{result['new_checkpoint']}`",
        _promotion_line(result),
        "",
        "| | Before | After |",
        "|---|---|---|",
        *[f"| {label} | {_cell(b)} | {_cell(a)} |" for label, b, a in rows],
        "",
        f"Rule: promote when the new model answers more held-back feedback right (or as many with a lower log "
        f"loss) and its validation AUC is at most {result['margin']:g} below the original's.",
        "",
    ]
    if result["promoted"]:
        lines += ["A running server keeps the model it loaded: run `serve run serve.config` again (or "
                  "`serve deploy serve.config`) to serve the new one.", ""]
    return "\n".join(lines)


def write_fine_tune_report(result: dict[str, Any], run_dir: Path) -> Path:
    """Write runs/<run>/fine_tune.json and FINE_TUNE.md; the report's path."""
    write_json(run_dir / "fine_tune.json", result)
    return write_text_atomic(run_dir / "FINE_TUNE.md", render_fine_tune_report(result))
