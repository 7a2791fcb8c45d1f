"""Turn folders of real and fake videos and images into a data set of face crops the platform trains on.

    python experiments/extract_faces.py --input ~/videos --out data/faces          # real/ and fake/ inside
    python experiments/extract_faces.py --input ~/ffpp --out data/ffpp --num-frames 32 --faces largest
    python experiments/extract_faces.py --input ~/clips --out /mnt/deepfake/data/clips --num-workers 8
    RAY_ADDRESS=head:6379 python experiments/extract_faces.py --input /mnt/in --out /mnt/deepfake/data/in
    python experiments/reproduce_baseline.py --data data/faces                       # then train on it

--input holds real/ and fake/ (videos: mp4, mov, m4v, avi, mkv, webm; images: jpg, png, ...), or
train/, val/, test/ each holding real/ and fake/ (those splits are kept). Every video gives --num-frames
frames evenly spaced (32, DeepfakeBench's protocol) or every --every-th frame; every face in them
(--faces all) or the largest (--faces largest) is cut as a square around its box enlarged by --margin and
resized to --crop-size. Sources are split into train/val/test whole (no video has frames in two splits),
seeded and stratified by label. --out gets OUT/{train,val,test}/{real,fake}/*.png, faces.parquet (crop,
source, frame, box, detector score, split, label), sources.parquet (what happened to each source) and
faces.json (the face preset, which training records in every checkpoint, so predict.py, score.py and
the server crop faces the same way). Rerun the same command to continue: done sources are skipped.
Unreadable files are named and skipped; sources without a face are counted and listed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from deepfake_platform.data.faces import FacePreset
from deepfake_platform.data.video import DEFAULT_NUM_FRAMES
from deepfake_platform.orchestration.cli import add_verbose_flag, run_command
from deepfake_platform.orchestration.cluster import ensure_ray
from deepfake_platform.orchestration.extraction import ExtractionSummary, run_extraction


def main(args: argparse.Namespace) -> ExtractionSummary:
    preset = FacePreset.from_dict({"mode": args.faces, "detector": args.detector, "model_path": args.model_path,
                                   "margin": args.margin, "crop_size": args.crop_size})
    use_ray = bool(args.num_workers or (os.environ.get("RAY_ADDRESS") and os.environ["RAY_ADDRESS"] != "local"))
    if use_ray:
        ensure_ray(verbose=args.verbose, num_cpus=args.num_workers or None)
    print(f"Extracting faces ({preset.mode}, {preset.detector}, margin {preset.margin:g}, {preset.crop_size} px) "
          f"from {args.input} into {args.out}" + (" on Ray" if use_ray else "") + ".", flush=True)
    summary = run_extraction(args.input, args.out, preset, num_frames=args.num_frames, every=args.every,
                             val=args.val, test=args.test, seed=args.seed, use_ray=use_ray)
    print(summary.render())
    print(f"Data set: {Path(args.out).resolve()} (train with: python experiments/reproduce_baseline.py --data {args.out})")
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder with real/ and fake/ (or train/, val/, test/)")
    parser.add_argument("--out", required=True, help="the data set to write (or to continue)")
    parser.add_argument("--faces", default="largest", choices=["largest", "all"], help="faces per frame to keep")
    parser.add_argument("--detector", default="haar", choices=["haar", "yunet"],
                        help="haar: OpenCV's bundled cascade (no download); yunet: needs --model-path")
    parser.add_argument("--model-path", default="", help="YuNet's face_detection_yunet_2023mar.onnx")
    parser.add_argument("--margin", type=float, default=1.3, help="crop side / face box side (DeepfakeBench: 1.3)")
    parser.add_argument("--crop-size", type=int, default=256, help="side of the saved crops, in pixels")
    parser.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES, help="frames per video, evenly spaced")
    parser.add_argument("--every", type=int, default=0, help="instead: every k-th frame of each video")
    parser.add_argument("--val", type=float, default=0.15, help="share of sources for validation")
    parser.add_argument("--test", type=float, default=0.15, help="share of sources for test")
    parser.add_argument("--seed", type=int, default=0, help="the split's random seed")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="process sources in parallel as Ray tasks on this many CPUs (0: in this process, "
                             "unless RAY_ADDRESS names a cluster)")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":
    run_command(lambda: main(get_args_parser().parse_args()))
