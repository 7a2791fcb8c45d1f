"""Evaluate any model file on a data split, the way the main job evaluates its best model.

    python experiments/evaluate.py --checkpoint checkpoints/RUN/best.pth --data data/embedded
    python experiments/evaluate.py --checkpoint artifacts/best.pth --data DIR --split val --out metrics.json
    python experiments/evaluate.py --checkpoint artifacts/best.pth --data DIR --operating-point high_precision
    python experiments/evaluate.py --checkpoint artifacts/best.pth --data DIR --robustness --report-dir robustness/
    python experiments/evaluate.py --checkpoint old.pth --data DIR --calibrate calibrated.pth

Prints AUC, average precision, EER and accuracy / precision / recall / F1 at 0.5 and at the threshold
chosen on validation (saved in the checkpoint; --operating-point picks balanced, high_precision or
high_recall), per video too when the data set was extracted from videos, and writes them as JSON with --out.
A checkpoint, a frequency detector or an ensemble spec. --robustness also scores the split under JPEG
recompression, downscaling, blur, noise and a social-media chain, and writes ROBUSTNESS.md, robustness.json
and robustness.png to --report-dir. --calibrate OUT fits the calibration and operating points of a detector
checkpoint on the validation split (as training does) and writes the calibrated checkpoint to OUT first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepfake_platform.calibration import OPERATING_POINTS
from deepfake_platform.errors import MissingInput
from deepfake_platform.evaluation import calibrate_checkpoint, evaluate_checkpoint
from deepfake_platform.orchestration.cli import run_command
from deepfake_platform.orchestration.report import render_metrics_table
from deepfake_platform.reporting import write_json


def main(args: argparse.Namespace) -> dict:
    if not Path(args.data).is_dir():
        raise MissingInput(f"data root {args.data} does not exist; pass a folder with {args.split}/real and {args.split}/fake.")
    checkpoint = args.checkpoint
    if args.calibrate:
        record = calibrate_checkpoint(checkpoint, args.data, out=args.calibrate)
        print(f"Calibrated ({record.calibration['method']}) on validation: ECE {record.calibration['val_ece_before']:.4f} "
              f"before, {record.calibration['val_ece_after']:.4f} after; written to {args.calibrate}")
        checkpoint = args.calibrate
    result = evaluate_checkpoint(checkpoint, args.data, args.split, precision=args.precision,
                                 operating_point=args.operating_point)
    print(f"{result['model']['name']} ({checkpoint}) on {args.split}, {result['operating_point']} operating point:")
    print(render_metrics_table(result["metrics"]))
    if "video" in result:
        print(f"\nPer video ({len(result['video']['videos'])} videos, each the mean of its frames' scores):")
        print(render_metrics_table(result["video"]["metrics"]))
    if args.robustness:
        result["robustness"] = robustness(checkpoint, args)
    if args.out:
        write_json(args.out, {k: v for k, v in result.items() if k not in ("scores", "labels", "logits")})
        print(f"Metrics written to {args.out}")
    return result


def robustness(checkpoint: str, args: argparse.Namespace) -> dict:
    """The robustness report of `checkpoint` on the split, written to --report-dir; printed as a table."""
    from deepfake_platform.ensemble import load_predictor
    from deepfake_platform.media import file_choices
    from deepfake_platform.robustness import render_robustness, robustness_report, write_robustness

    choices = file_choices(checkpoint, precision=args.precision, operating_point=args.operating_point)
    report = robustness_report(load_predictor(checkpoint, choices.precision), args.data, choices, args.split,
                               seed=args.seed)
    folder = Path(args.report_dir or f"robustness-{Path(checkpoint).stem}")
    written = write_robustness(report, folder)
    print("\n" + render_robustness(report))
    print(f"Robustness report: {written['markdown']} (and {written['json'].name}, {written['plot'].name})")
    return report


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pth written by this platform")
    parser.add_argument("--data", required=True, help="data root with train/, val/, test/")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32", "int8"],
                        help="auto (the default): bf16 where the CPU runs it natively, else fp32; int8: ONNX Runtime, "
                             "quantised")
    parser.add_argument("--operating-point", choices=OPERATING_POINTS,
                        help="the thresholds to label at, chosen on validation (default: balanced)")
    parser.add_argument("--robustness", action="store_true",
                        help="also score the split under recompression, resizing, blur, noise and a social chain")
    parser.add_argument("--report-dir", help="where --robustness writes its report (default: robustness-<checkpoint>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the robustness perturbations (default: 0)")
    parser.add_argument("--calibrate", metavar="OUT",
                        help="calibrate the detector checkpoint on the validation split and write it to OUT first")
    parser.add_argument("--out", help="write the metrics as JSON here")
    return parser


if __name__ == "__main__":
    run_command(lambda: main(get_args_parser().parse_args()))
