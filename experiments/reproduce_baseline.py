"""Reproduce the reference run (hybrid ResNet18 + ViT-B/16, Adam 1e-4, batch 8, 5 epochs) on Ray Train.

    python experiments/reproduce_baseline.py                       # embedded data, built when missing
    python experiments/reproduce_baseline.py --data /path/to/data  # train/, val/, test/ with real/, fake/
    python experiments/reproduce_baseline.py --smoke               # tiny detector, a few images, < 1 min
    python experiments/reproduce_baseline.py --resume checkpoints/RUN/epoch_003_auc_0.9932.pth --epochs 10
    python experiments/reproduce_baseline.py --config experiments/configs/efficientnet_b0.yaml
    RAY_ADDRESS=ray://head:10001 python experiments/reproduce_baseline.py --num-workers 4

Writes checkpoints/<run>/epoch_XXX_auc_Y.pth and best.pth, runs/<run>/ (RESULTS.md, results.json,
TensorBoard events, plots) and promotes the best model to artifacts/best.pth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepfake_platform.cli import load_experiment_config, user_errors  # noqa: E402
from deepfake_platform.pipeline import finalize_run  # noqa: E402
from deepfake_platform.training import run_training  # noqa: E402
from deepfake_platform.tuning import anchor_outputs, output_home, sweep_data_root  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(args: argparse.Namespace) -> Path:
    config = load_experiment_config(args, default=CONFIGS / ("smoke.yaml" if args.smoke else "baseline.yaml"))
    if args.name is None and not args.resume:
        config.name = f"{config.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    # Outputs under the current directory, or $DEEPFAKE_HOME / ~/deepfake-platform under `ray job submit`
    # (whose working directory is a temporary copy that vanishes with the job).
    home = output_home()
    config = anchor_outputs(config, home, None)
    data_root = sweep_data_root(args.data, config, home)
    print(f"Run {config.name}: {config.model.name} on {data_root}, {config.train.epochs} epochs, "
          f"{config.scaling.num_workers} worker(s).", flush=True)
    outcome = run_training(config, data_root, resume_from=args.resume)
    report = finalize_run(outcome, data_root, promote_best=config.output.promote and not args.no_promote)
    print(f"Report: {report}")
    return report


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="data root (default: the embedded set, built when missing)")
    parser.add_argument("--config", help="YAML config (default: experiments/configs/baseline.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (they split the node's CPUs)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, bf16 autocast")
    parser.add_argument("--name", help="run name (default: config name + time; with --resume, the resumed run)")
    parser.add_argument("--resume", metavar="CKPT", help="continue from this checkpoint (model + optimizer)")
    parser.add_argument("--epochs", type=int, help="total epochs (with --resume: train up to this many)")
    parser.add_argument("--smoke", action="store_true", help="tiny detector on a few images, for CI and a first check")
    parser.add_argument("--no-promote", action="store_true", help="do not copy the best model to artifacts/")
    return parser


if __name__ == "__main__":
    with user_errors():
        main(get_args_parser().parse_args())
