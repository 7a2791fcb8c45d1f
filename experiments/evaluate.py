"""Evaluate any checkpoint on a data split, the way the main job evaluates its best model.

    python experiments/evaluate.py --checkpoint checkpoints/RUN/best.pth --data data/embedded
    python experiments/evaluate.py --checkpoint artifacts/best.pth --data DIR --split val --out metrics.json

Prints AUC, average precision, EER and accuracy / precision / recall / F1 at 0.5 and at the threshold
chosen on validation (saved in the checkpoint), and writes them as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepfake_platform.cli import user_errors  # noqa: E402
from deepfake_platform.evaluation import evaluate_checkpoint  # noqa: E402
from deepfake_platform.report import render_metrics_table  # noqa: E402


def main(args: argparse.Namespace) -> dict:
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"data root {args.data} does not exist; pass a folder with {args.split}/real and {args.split}/fake.")
    result = evaluate_checkpoint(args.checkpoint, args.data, args.split, precision=args.precision)
    print(f"{result['model']['name']} ({args.checkpoint}) on {args.split}:")
    print(render_metrics_table(result["metrics"]))
    if args.out:
        Path(args.out).write_text(json.dumps({k: v for k, v in result.items() if k not in ("scores", "labels")}, indent=2))
        print(f"Metrics written to {args.out}")
    return result


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pth written by this platform")
    parser.add_argument("--data", required=True, help="data root with train/, val/, test/")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--out", help="write the metrics as JSON here")
    return parser


if __name__ == "__main__":
    with user_errors():
        main(get_args_parser().parse_args())
