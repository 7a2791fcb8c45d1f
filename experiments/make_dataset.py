"""Build a forensic data set of real crops and self-blended fakes, offline and deterministically.

    python experiments/make_dataset.py --out data/embedded                     # the default set: 240/80/100 at 256 px
    python experiments/make_dataset.py --out /tmp/tiny --train 8 --val 4 --test 4 --size 64
    python experiments/make_dataset.py --out data/mine --real-dir ~/Pictures --seed 1

Real images are random square crops of real photographs (those bundled with scikit-image, or every
image under --real-dir), saved as JPEG at --size pixels; fakes are crops with an altered copy blended
back through a soft random mask (Face X-ray / Self-Blended Images). Source photos are split into
disjoint train and val/test groups; OUT/dataset.json records the seed, counts and which photos went
where. The same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deepfake_platform.data import DEFAULT_COUNTS, build_dataset
from deepfake_platform.data.synth import DEFAULT_SEED, DEFAULT_SIZE


def main(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    try:
        summary = build_dataset(
            args.out, seed=args.seed, counts={"train": args.train, "val": args.val, "test": args.test},
            size=args.size, real_dir=args.real_dir,
        )
    except (ValueError, FileExistsError) as error:  # bad counts, a non-empty --out, an empty --real-dir
        sys.exit(f"make_dataset.py: {error}")
    seconds = time.perf_counter() - start
    print(f"Wrote {args.out} in {seconds:.1f} s from {summary['source']} (seed {args.seed}):")
    for split, per_class in summary["counts"].items():
        photos = ", ".join(summary["photos"][split])
        print(f"  {split:<5} {per_class['real']:>5} real {per_class['fake']:>5} fake   photos: {photos}")
    if summary["photos_shared_between_train_and_held_out"]:
        print("Only one source photo: train and val/test share it, so val/test scores are optimistic.")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="new or empty folder to write to")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (non-negative)")
    parser.add_argument("--train", type=int, default=DEFAULT_COUNTS["train"], help="train images, half fake")
    parser.add_argument("--val", type=int, default=DEFAULT_COUNTS["val"], help="validation images, half fake")
    parser.add_argument("--test", type=int, default=DEFAULT_COUNTS["test"], help="test images, half fake")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="side of the square output images")
    parser.add_argument("--real-dir", type=Path, default=None,
                        help="folder of real photographs (searched recursively) instead of scikit-image's")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
