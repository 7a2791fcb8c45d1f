"""Check a data root before training on it: images per split and class, and every unreadable file.

    python experiments/check_dataset.py data/embedded
    python experiments/check_dataset.py /data/my_faces --manifest /tmp/my_faces.parquet

Every image is decoded once; the results go to DIR/.manifest.parquet (or --manifest), which training
reuses, so a later run only decodes new or changed files. Unreadable files are listed and skipped;
the exit status is 0 when every split has readable real and fake images, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepfake_platform.data import CLASSES, EXPECTED_LAYOUT, DatasetError, scan_dataset


def main(args: argparse.Namespace) -> int:
    try:
        result = scan_dataset(args.root, args.manifest)
    except DatasetError as error:
        print(error)
        return 1

    print(f"Data set: {result.root}")
    print(f"{'split':<8}{'real':>8}{'fake':>8}")
    for split, per_class in result.counts().items():
        print(f"{split:<8}" + "".join(f"{per_class[name]:>8}" for name in CLASSES))

    if result.bad_files:
        print(f"\n{len(result.bad_files)} unreadable file(s), skipped by training and evaluation:")
        for path, reason in result.bad_files:
            print(f"  {path}: {reason}")
    if result.ignored:
        print(f"\n{len(result.ignored)} file(s) without an image extension ignored, e.g. {result.ignored[0]}")

    if not result.usable:
        print("\nThis data set cannot be used:")
        for problem in result.problems:
            print(f"  - {problem}")
        print(f"Expected layout:\n{EXPECTED_LAYOUT}")
        return 1
    print("\nThe data set is usable.")
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="data root holding train/, val/ and test/")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="manifest path (default: ROOT/.manifest.parquet)")
    return parser


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
