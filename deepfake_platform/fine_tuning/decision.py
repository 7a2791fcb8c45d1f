"""The promotion rule: the fine-tuned model replaces the original only when it answers the held-back feedback
better (more right at its threshold; at a tie, a lower log loss), its validation AUC is at most `margin`
below the original's and, when asked, its worst AUC under perturbations (the robustness report) is at least
`min_robust_auc`."""

from __future__ import annotations

from typing import Any

# An AUC change smaller than this prints as "unchanged" (the report shows four decimals).
_UNCHANGED = 5e-5


def _loss(feedback: dict[str, Any]) -> str:
    return "n/a" if feedback["log_loss"] is None else f"{feedback['log_loss']:.4f}"  # None: nothing judged


def decide(before: dict[str, Any], after: dict[str, Any], margin: float,
           min_robust_auc: float | None = None) -> tuple[bool, str]:
    """Whether the fine-tuned model replaces the original, and the sentence that says why.

    `before` / `after`: {"feedback": judge_on_feedback(...), "val_auc": float}. Better on feedback means
    more held-back images answered right, or as many with a lower log loss; the validation AUC may fall by
    at most `margin`; with `min_robust_auc`, `after["robust_auc"]` (the robustness report's worst-case AUC) must
    reach it.
    """
    fb_before, fb_after = before["feedback"], after["feedback"]
    drop = before["val_auc"] - after["val_auc"]
    if fb_after["correct"] > fb_before["correct"]:
        better = (f"the fine-tuned model answers {fb_after['correct']}/{fb_after['images']} held-back feedback images right, "
                  f"against {fb_before['correct']}/{fb_before['images']}")
    elif (fb_after["correct"] == fb_before["correct"] and None not in (fb_after["log_loss"], fb_before["log_loss"])
          and fb_after["log_loss"] < fb_before["log_loss"]):
        better = (f"the fine-tuned model answers as many held-back feedback images right ({fb_after['correct']}/{fb_after['images']}) "
                  f"with a lower log loss ({fb_after['log_loss']:.4f} against {fb_before['log_loss']:.4f})")
    else:
        return False, (f"Kept the original: the fine-tuned model is not better on the held-back feedback "
                       f"({fb_after['correct']}/{fb_after['images']} right, log loss {_loss(fb_after)}; "
                       f"the original {fb_before['correct']}/{fb_before['images']}, {_loss(fb_before)}).")
    if drop > margin + 1e-12:
        return False, (f"Kept the original: {better}, but its validation AUC fell by {drop:.4f} "
                       f"({before['val_auc']:.4f} to {after['val_auc']:.4f}), more than the margin {margin:g}.")
    if min_robust_auc is not None and not after["robust_auc"] >= min_robust_auc:  # NaN fails too
        return False, (f"Kept the original: {better}, but its worst AUC under perturbations is {after['robust_auc']:.4f} "
                       f"({after.get('robust_condition')}), below the required {min_robust_auc:g}.")
    change = ("is unchanged" if abs(drop) < _UNCHANGED else f"rose by {-drop:.4f}" if drop < 0
              else f"fell by {drop:.4f}, within the margin {margin:g}")
    return True, (f"Promoted the fine-tuned model: {better}, and its validation AUC {change} "
                  f"({before['val_auc']:.4f} to {after['val_auc']:.4f}).")
