"""Reproduce the reference run (hybrid ResNet18 + ViT-B/16, Adam 1e-4, batch 8, 5 epochs) on Ray Train.

    python experiments/reproduce_baseline.py                       # embedded data, built when missing
    python experiments/reproduce_baseline.py --data /path/to/data  # train/, val/, test/ with real/, fake/
    python experiments/reproduce_baseline.py --smoke               # tiny detector, a few images, < 1 min
    python experiments/reproduce_baseline.py --resume checkpoints/RUN/epoch_003_auc_0.9932.pth --epochs 10
    python experiments/reproduce_baseline.py --set train.lr=3e-4 --set model.freeze=cnn
    RAY_ADDRESS=ray://head:10001 python experiments/reproduce_baseline.py --num-workers 4

Writes checkpoints/<run>/epoch_XXX_auc_Y.pth and best.pth, runs/<run>/ (RESULTS.md, results.json,
TensorBoard events, plots), records the run in MLflow (mlruns/ under the output home, or
$MLFLOW_TRACKING_URI) and registers the best model as the champion version: artifacts/best.pth. Ctrl-C stops the run
within seconds and says how to continue it (`--name RUN`); a diverging run stops with one sentence.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from deepfake_platform.data import resolve_data_root
from deepfake_platform.orchestration.cli import add_verbose_flag, load_experiment_config, run_command
from deepfake_platform.orchestration.cluster import ensure_ray
from deepfake_platform.orchestration.finalize import finalize_run
from deepfake_platform.orchestration.train import run_training
from deepfake_platform.outputs import anchor_outputs, output_home
from deepfake_platform.tracking import Tracking

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(args: argparse.Namespace) -> Path:
    started = time.perf_counter()
    config = load_experiment_config(args, default=CONFIGS / ("smoke.yaml" if args.smoke else "baseline.yaml"))
    if args.name is None and not args.resume:
        config.name = f"{config.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    # Outputs under the current directory, or $DEEPFAKE_HOME / ~/deepfake-platform under `ray job submit`
    # (whose working directory is a temporary copy that vanishes with the job).
    home = output_home()
    tracking = Tracking.start(home, verbose=args.verbose)  # MLflow's store opens while Ray starts and trains
    config = anchor_outputs(config, home)
    data_root = resolve_data_root(args.data, config.data.root, config.data.embedded, home)
    print(f"Run {config.name}: {config.model.name} on {data_root}, {config.train.epochs} epochs, "
          f"{config.scaling.num_workers} worker(s).", flush=True)
    ensure_ray(verbose=args.verbose)
    rerun = " ".join([Path(sys.argv[0]).as_posix(), *rerun_arguments(args, config.name)])
    outcome = run_training(config, data_root, resume_from=args.resume, verbose=args.verbose,
                           rerun_hint=f"python {rerun}")
    # The reference run answers: its model is the champion.
    report = finalize_run(outcome, data_root, promote_best=config.output.promote and not args.no_promote,
                          champion=True, tracking=tracking)
    wall = time.perf_counter() - started
    print(f"Report: {report}")
    print(f"Wall time {wall:.0f} s; the epochs took {outcome.epoch_time_s:.0f} s of it "
          f"({wall / max(outcome.epoch_time_s, 1e-9):.2f}x).")
    return report


def rerun_arguments(args: argparse.Namespace, name: str) -> list[str]:
    """The command line that continues this run: the same arguments with --name (and without --resume)."""
    kept = [f"--{key.replace('_', '-')}={value}" for key, value in (("data", args.data), ("config", args.config),
                                                                   ("epochs", args.epochs),
                                                                   ("num_workers", args.num_workers)) if value]
    kept += [f"--set={override}" for override in args.set]
    kept += [flag for flag, on in (("--smoke", args.smoke), ("--use-gpu", args.use_gpu),
                                   ("--no-promote", args.no_promote)) if on]
    return [*kept, f"--name={name}"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="data root (default: the embedded set, built when missing)")
    parser.add_argument("--config", help="YAML config (default: experiments/configs/baseline.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (they split the node's CPUs)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, bf16 autocast")
    parser.add_argument("--name", help="run name (default: config name + time); an existing run's name continues it")
    parser.add_argument("--resume", metavar="CKPT", help="continue from this checkpoint (model + optimizer)")
    parser.add_argument("--epochs", type=int, help="total epochs (with --resume: train up to this many)")
    parser.add_argument("--smoke", action="store_true", help="tiny detector on a few images, for CI and a first check")
    parser.add_argument("--no-promote", action="store_true", help="do not register the best model nor touch artifacts/")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":
    run_command(lambda: main(get_args_parser().parse_args()))
