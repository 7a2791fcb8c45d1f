"""Search learning rate, epochs and backbone freezing with Ray Tune (ASHA on validation AUC).

    python experiments/tune_sweep.py --config experiments/configs/sweep_smoke.yaml   # tiny, 1-2 min
    python experiments/tune_sweep.py --config experiments/configs/sweep.yaml --data /path/to/data
    python experiments/tune_sweep.py --config experiments/configs/sweep.yaml --name lr-scan   # resumes lr-scan if it exists
    python experiments/tune_sweep.py --config experiments/configs/sweep.yaml --resume         # the latest sweep of this file
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python experiments/tune_sweep.py --config experiments/configs/sweep_smoke.yaml

Each trial is a Ray Train run of the main job's training loop. Outputs go under the output home:
--output-root, else $DEEPFAKE_HOME, else the current directory (under `ray job submit`, whose working
directory is a temporary copy, ~/deepfake-platform). Ray's own state goes to --storage (default
<home>/ray_results; on a cluster a shared path or s3://...). Results: runs/<sweep>/SWEEP.md with the
table (sweep.csv, sweep.md) and val_auc_vs_lr.png; the best trial is tested and registered as a new
version of the detector, the challenger (`--promote`: the champion, artifacts/best.pth, at once; the first
version ever is the champion). MLflow holds the sweep as a parent run with one child per trial. After a
crash, rerun with --resume (or the same --name): finished trials stay done.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from deepfake_platform.data import resolve_data_root
from deepfake_platform.errors import InvalidInput
from deepfake_platform.orchestration.cli import add_verbose_flag, run_command
from deepfake_platform.orchestration.cluster import cluster_nodes, ensure_ray
from deepfake_platform.orchestration.sweep_config import experiment_config, load_sweep_config
from deepfake_platform.orchestration.train import RunFailed, RunStopped
from deepfake_platform.orchestration.tuner import (
    SweepOutcome,
    SweepPlan,
    latest_sweep,
    make_plan,
    run_sweep,
    total_trials,
    tune_state_exists,
)
from deepfake_platform.outputs import anchor_outputs, join_storage, output_home
from deepfake_platform.tracking import Tracking

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(args: argparse.Namespace) -> SweepOutcome:
    sweep = load_sweep_config(args.config, args.set)
    home = output_home(args.output_root)
    tracking = Tracking.start(home, verbose=args.verbose)  # MLflow's store opens while the trials run
    base = anchor_outputs(experiment_config(sweep, args.config), home, args.storage)
    if args.num_workers:
        base.scaling.num_workers = args.num_workers
    if args.use_gpu:
        base.scaling.use_gpu = True
    storage = base.output.storage_path
    name = args.name or (latest_sweep(storage, sweep.name) if args.resume else None)
    if args.resume and name is None:
        raise InvalidInput(f"there is no sweep {sweep.name} to resume under {storage}; drop --resume to start one.")
    name = name or f"{sweep.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"

    ensure_ray(verbose=args.verbose)
    resume = tune_state_exists(join_storage(storage, name, "tune"))
    if resume:
        plan = SweepPlan.load(Path(base.output.runs_dir) / name / "sweep_plan.json")
        print(f"Resuming sweep {name} from {plan.tune_path}: finished trials are kept.", flush=True)
    elif args.resume:
        raise InvalidInput(f"sweep {name} has no Tune state under {storage} to resume; drop --resume to start it.")
    else:
        data_root = resolve_data_root(args.data, base.data.root, base.data.embedded, home)
        plan = make_plan(sweep, base, name=name, data_root=data_root, nodes=cluster_nodes())
    print(f"Sweep {name}: {total_trials(plan.search, plan.tune)} trials of {plan.config.model.name} on {plan.data_root}, "
          f"{plan.trial_sizing.describe()}. Outputs under {home}.", flush=True)
    try:
        outcome = run_sweep(plan, resume=resume, promote_best=base.output.promote and not args.no_promote,
                            champion=args.promote, tracking=tracking)
    except KeyboardInterrupt:
        rerun = " ".join(["python", Path(sys.argv[0]).as_posix(), f"--config={args.config}", "--resume",
                          f"--name={name}", *([f"--output-root={args.output_root}"] if args.output_root else [])])
        raise RunStopped(f"Stopped: the finished trials of sweep {name} are kept (checkpoints under "
                         f"{Path(base.output.checkpoints_dir) / name}). Continue with: {rerun}") from None
    print(f"Report: {outcome.report}")
    if outcome.best_checkpoint is None:
        raise RunFailed("no healthy trial finished an epoch; the trial lines above say why.")
    if outcome.promoted:
        print(f"Best trial promoted to {outcome.promoted}")
    return outcome


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(CONFIGS / "sweep.yaml"), help="sweep YAML file")
    parser.add_argument("--name", help="sweep name (default: the file's name + time); an existing one resumes")
    parser.add_argument("--resume", action="store_true", help="continue --name, or the latest sweep of this file")
    parser.add_argument("--data", help="data root (default: the experiment's, else the embedded set under the home)")
    parser.add_argument("--storage", help="Ray storage for Tune and Train state: a path, NFS or s3://... "
                                          "(default: <home>/ray_results)")
    parser.add_argument("--output-root", help="home of checkpoints/, runs/, artifacts/ (default: $DEEPFAKE_HOME, "
                                              "else the current directory, else ~/deepfake-platform in a job)")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers per trial")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker (trials run one per GPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep value, e.g. --set tune.num_samples=4 (repeatable)")
    parser.add_argument("--promote", action="store_true",
                        help="make the best trial the champion at once (default: the challenger)")
    parser.add_argument("--no-promote", action="store_true", help="do not register the best model nor touch "
                                                                  "artifacts/")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":
    run_command(lambda: main(get_args_parser().parse_args()))
