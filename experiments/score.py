"""Score a large archive of images and videos with Ray Data: one Parquet row per file, on every node.

    python experiments/score.py --input ~/archive --out scores.parquet              # artifacts/best.pth
    python experiments/score.py --input "photos/**/*.jpg" --out scores.parquet --checkpoint artifacts/ensemble.pth
    python experiments/score.py --input paths.txt --out scores.parquet              # one path per line (or .parquet)
    RAY_ADDRESS=head:6379 python experiments/score.py --input /mnt/archive --out /mnt/scores.parquet --use-gpu

Decoding and face cropping run as Ray Data CPU tasks, the model in an actor pool sized from the cluster
(one actor per node, or per GPU with --use-gpu), through the same preprocessing and predict path as
predict.py, evaluation and the server. Each row: path, kind (image or video), verdict (fake, real, or
not_applicable for a file a face model cannot judge: no face, faces too small, no frame with a face),
reason (why not applicable), fake_probability, label (at the checkpoint's threshold), threshold, no_face,
faces (JSON: box, fake_probability, label), error (for a file that could not be read), model and model_sha256. The face preset, frames per video, thresholds
and precision are the checkpoint's scoring choices, as in predict.py, evaluate.py and the server (the flags
override them). Rerun the same command to continue: files already in --out are skipped.
"""

from __future__ import annotations

import argparse

from deepfake_platform.data.video import DEFAULT_NUM_FRAMES
from deepfake_platform.errors import InvalidInput
from deepfake_platform.orchestration.cli import add_verbose_flag, run_command
from deepfake_platform.orchestration.cluster import ensure_ray
from deepfake_platform.orchestration.scoring import ScoringSummary, list_inputs, run_scoring


def main(args: argparse.Namespace) -> ScoringSummary:
    if args.use_gpu and args.precision == "int8":
        raise InvalidInput("--precision int8 runs on CPUs (ONNX Runtime); with --use-gpu choose auto or bf16.")
    inputs = list_inputs(args.input)
    ensure_ray(verbose=args.verbose)
    print(f"Scoring {len(inputs)} file(s) with {args.checkpoint} into {args.out}.", flush=True)
    summary = run_scoring(inputs, args.out, args.checkpoint, batch_size=args.batch_size, precision=args.precision,
                          use_gpu=args.use_gpu, faces=args.faces, num_frames=args.num_frames, every=args.every,
                          small_face_factor=args.small_face_factor, operating_point=args.operating_point,
                          verbose=args.verbose)
    print(summary.render())
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="a folder, a glob, or a text/Parquet list of paths")
    parser.add_argument("--out", required=True, help="the Parquet file to write (or to continue)")
    parser.add_argument("--checkpoint", default="artifacts/best.pth", help="a checkpoint or an ensemble spec")
    parser.add_argument("--batch-size", type=int, default=16, help="pictures per model batch")
    parser.add_argument("--operating-point", choices=["balanced", "high_precision", "high_recall"],
                        help="the thresholds to label at, chosen on validation (default: balanced)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32", "int8"],
                        help="auto (the default): bf16 where the CPU runs it natively, else fp32; int8: ONNX Runtime, "
                             "quantised")
    parser.add_argument("--use-gpu", action="store_true", help="model actors on GPUs, one per GPU")
    parser.add_argument("--faces", choices=["off", "largest", "all"], help="default: as the checkpoint was trained")
    parser.add_argument("--num-frames", type=int,
                        help=f"frames per video, evenly spaced (default: as the checkpoint records, else {DEFAULT_NUM_FRAMES})")
    parser.add_argument("--every", type=int, help="instead: every k-th frame")
    parser.add_argument("--small-face-factor", type=float,
                        help="faces whose short side is under the model's input size divided by this are too small to "
                             "judge (default 4)")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":
    run_command(lambda: main(get_args_parser().parse_args()))
