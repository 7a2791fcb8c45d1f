"""A Markdown report of what a deployed detector served: scores over time against validation, fake rate,
drift, and accuracy where users sent corrections.

    python experiments/monitor_report.py --log logs/predictions
    python experiments/monitor_report.py --log logs/predictions --feedback feedback --checkpoint artifacts/best.pth --out runs/monitoring

Reads the server's prediction log (args.log_dir in serve.config), the validation scores the checkpoint
recorded, and the corrections under the feedback folder (args.feedback_dir); writes MONITORING.md with
scores_over_time.png, fake_rate.png, drift.png and accuracy.png under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepfake_platform.checkpoints import read_checkpoint
from deepfake_platform.errors import MissingInput
from deepfake_platform.feedback import read_feedback
from deepfake_platform.monitoring import read_log, reference_scores
from deepfake_platform.orchestration.cli import run_command
from deepfake_platform.orchestration.monitor_report import build_report


def main(args: argparse.Namespace) -> Path:
    if not Path(args.log).is_dir():
        raise MissingInput(f"the prediction log {args.log} does not exist; point --log at the server's log_dir.")
    records = read_log(args.log)
    reference = reference_scores(getattr(read_checkpoint(args.checkpoint), "val_scores", {}) or {})
    labels = {}
    if args.feedback and Path(args.feedback, "labels.jsonl").is_file():
        labels = {record["request_id"]: record["label"] for record in read_feedback(args.feedback)}
    report = build_report(records, reference, labels, Path(args.out),
                          {"log": args.log, "checkpoint": args.checkpoint, "feedback": args.feedback or "none"})
    print(f"Report: {report}")
    return report


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True, help="the server's prediction log folder (args.log_dir)")
    parser.add_argument("--feedback", default="feedback", help="the server's feedback folder (args.feedback_dir)")
    parser.add_argument("--checkpoint", default="artifacts/best.pth", help="the deployed model (its validation scores)")
    parser.add_argument("--out", default="runs/monitoring", help="where MONITORING.md and its plots go")
    return parser


if __name__ == "__main__":
    run_command(lambda: main(get_args_parser().parse_args()))
