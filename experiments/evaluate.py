"""Evaluate any model file on a data split, the way the main job evaluates its best model.

    python experiments/evaluate.py --checkpoint checkpoints/RUN/best.pth --data data/embedded
    python experiments/evaluate.py --checkpoint artifacts/best.pth --data DIR --split val --out metrics.json

Prints AUC, average precision, EER and accuracy / precision / recall / F1 at 0.5 and at the threshold
chosen on validation (saved in the checkpoint), per video too when the data set was extracted from
videos, and writes them as JSON with --out. A checkpoint, a frequency detector or an ensemble spec.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepfake_platform.errors import MissingInput
from deepfake_platform.evaluation import evaluate_checkpoint
from deepfake_platform.orchestration.cli import run_command
from deepfake_platform.orchestration.report import render_metrics_table
from deepfake_platform.reporting import write_json


def main(args: argparse.Namespace) -> dict:
    if not Path(args.data).is_dir():
        raise MissingInput(f"data root {args.data} does not exist; pass a folder with {args.split}/real and {args.split}/fake.")
    result = evaluate_checkpoint(args.checkpoint, args.data, args.split, precision=args.precision)
    print(f"{result['model']['name']} ({args.checkpoint}) on {args.split}:")
    print(render_metrics_table(result["metrics"]))
    if "video" in result:
        print(f"\nPer video ({len(result['video']['videos'])} videos, each the mean of its frames' scores):")
        print(render_metrics_table(result["video"]["metrics"]))
    if args.out:
        write_json(args.out, {k: v for k, v in result.items() if k not in ("scores", "labels")})
        print(f"Metrics written to {args.out}")
    return result


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pth written by this platform")
    parser.add_argument("--data", required=True, help="data root with train/, val/, test/")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32", "int8"],
                        help="auto (the default): bf16 where the CPU runs it natively, else fp32; int8: ONNX Runtime, "
                             "quantised")
    parser.add_argument("--out", help="write the metrics as JSON here")
    return parser


if __name__ == "__main__":
    run_command(lambda: main(get_args_parser().parse_args()))
