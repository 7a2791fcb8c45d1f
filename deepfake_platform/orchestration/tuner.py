"""Ray Tune sweeps over the one training loop: learning rate, epochs and freezing, ASHA on validation AUC.

Read top to bottom: how big a trial is (`size_trials`, pure), the plan a sweep freezes (`SweepPlan`),
one trial (`run_trial`: a Tune driver fitting the main job's TorchTrainer), the tuner (`build_tuner`),
then `run_sweep`: the table, the plot, SWEEP.md, and the best healthy trial tested and registered with
the main job's `finalize_run`. Ray lines are marked `# ray:`.

In MLflow a finished sweep is a parent run with one child run per trial, logged from the driver once the
trials are done (Ray's MLflowLoggerCallback would open runs as trials start, so a stopped and resumed sweep
would leave duplicate, never-closed runs; each trial's epochs are in its checkpoints anyway). The best
trial's child holds its test metrics, report and model, registered as the challenger (the champion with
`--promote`, or when there is none yet).

Layout of one sweep S under the output home H and the Ray storage R (default H/ray_results):

    R/S/tune/                     Tune's experiment state (what `--resume` restores)
    R/S/train/<trial>/            each trial's Ray Train run (its latest checkpoint, for resuming it)
    H/checkpoints/S/<trial>/      each trial's epoch_XXX_auc_Y.pth and best.pth
    H/runs/S/                     SWEEP.md, sweep.csv, sweep.md, val_auc_vs_lr.png, <best trial>/RESULTS.md
    H/artifacts/models/v<N>.pth   the best healthy trial's best checkpoint, registered (best.pth when champion)
    H/mlruns/                     the MLflow store (unless $MLFLOW_TRACKING_URI): the sweep and its trials
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deepfake_platform.checkpoints import DetectorCheckpoint, epoch_checkpoints, read_checkpoint
from deepfake_platform.config import ExperimentConfig, config_from_dict, with_changes
from deepfake_platform.errors import InvalidInput, MissingInput
from deepfake_platform.orchestration.sweep_config import SweepConfig
from deepfake_platform.orchestration.sweep_report import (
    best_healthy,
    plot_auc_vs_lr,
    render_sweep_report,
    sort_rows,
    trial_row,
    write_table,
)
from deepfake_platform.outputs import RunPaths, is_uri, join_storage, read_status
from deepfake_platform.reporting import write_text_atomic
from deepfake_platform.tracking import RunRecord, Tracking

# ---- how big a trial is, from the cluster's nodes (pure) --------------------------------------------


@dataclass
class TrialSizing:
    """The resources of one trial and how many trials run at once."""

    num_workers: int
    cpus_per_worker: float
    use_gpu: bool
    max_concurrent_trials: int

    def describe(self) -> str:
        """One line for the log and the report."""
        gpu = " + 1 GPU" if self.use_gpu else ""
        return (f"up to {self.max_concurrent_trials} trial(s) at once, each {self.num_workers} worker(s) x "
                f"{self.cpus_per_worker:g} CPU{gpu}")


def size_trials(nodes: list[dict[str, float]], *, num_workers: int, cpus_per_worker: float, use_gpu: bool,
                max_concurrent_trials: int, num_samples: int) -> TrialSizing:
    """Size trials to the nodes' resources so every trial's workers can start (nothing waits forever).

    `cpus_per_worker` 0 gives one trial a whole (largest) node; trials then run one per node. The trial
    driver itself asks for no CPU (see `build_tuner`), so only the workers count.
    """
    cpus = [node.get("CPU", 0.0) for node in nodes]
    largest = max(cpus, default=0.0)
    if largest <= 0:
        raise InvalidInput(
            "the Ray cluster has no CPUs yet. Start worker nodes first (e.g. min_workers in cluster.yaml) "
            "or connect to another cluster with RAY_ADDRESS."
        )
    per_worker = cpus_per_worker or max(1.0, math.floor(largest / num_workers))
    if per_worker > largest:
        raise InvalidInput(
            f"scaling.cpus_per_worker={per_worker:g} is more than the largest node's {largest:g} CPUs, so no "
            f"worker could ever start. Set scaling.cpus_per_worker to at most {largest:g}."
        )
    slots = [math.floor(c / per_worker + 1e-9) for c in cpus]
    if use_gpu:
        slots = [min(s, math.floor(node.get("GPU", 0.0))) for s, node in zip(slots, nodes, strict=True)]
    fits = sum(slots) // num_workers
    if fits == 0:
        what = f"{num_workers} worker(s) x {per_worker:g} CPU" + (" + 1 GPU" if use_gpu else "")
        raise InvalidInput(
            f"one trial needs {what}, more than the cluster holds ({sum(cpus):g} CPUs, "
            f"{sum(n.get('GPU', 0.0) for n in nodes):g} GPUs). Lower scaling.num_workers or "
            "scaling.cpus_per_worker, or add nodes."
        )
    wanted = max_concurrent_trials or fits
    return TrialSizing(num_workers, per_worker, use_gpu, max(1, min(wanted, fits, num_samples)))


def total_trials(search: dict[str, Any], settings: dict[str, Any]) -> int:
    """How many trials a sweep runs: num_samples, times the learning rates of a grid."""
    return settings["num_samples"] * max(1, len(search.get("lr") or []))


# ---- the plan ----------------------------------------------------------------------------------------


@dataclass
class SweepPlan:
    """Everything a sweep (and a resumed sweep) needs; saved as runs/<sweep>/sweep_plan.json."""

    sweep: str
    experiment: dict[str, Any]
    search: dict[str, Any]
    tune: dict[str, Any]
    data_root: str
    storage: str
    sizing: dict[str, Any]

    @property
    def config(self) -> ExperimentConfig:
        """The base experiment (outputs anchored, workers sized)."""
        return config_from_dict(self.experiment, f"sweep {self.sweep}")

    @property
    def trial_sizing(self) -> TrialSizing:
        """Each trial's workers and how many trials run at once."""
        return TrialSizing(**self.sizing)

    @property
    def tune_path(self) -> str:
        """Tune's experiment folder (what Tuner.restore reads)."""
        return join_storage(self.storage, self.sweep, "tune")

    @property
    def run_dir(self) -> Path:
        """runs/<sweep>: the sweep's table, plot and report."""
        return Path(self.config.output.runs_dir) / self.sweep

    @classmethod
    def load(cls, path: Path) -> SweepPlan:
        """The plan a sweep started with (a resumed sweep keeps its experiment, space and sizing)."""
        if not path.is_file():
            raise MissingInput(
                f"{path} is missing, so the sweep cannot be resumed as it started. Start a new sweep "
                "with another --name."
            )
        return cls(**json.loads(path.read_text()))

    def save(self) -> Path:
        """Write the plan to runs/<sweep>/sweep_plan.json."""
        return write_text_atomic(self.run_dir / "sweep_plan.json", json.dumps(asdict(self), indent=2))


def make_plan(sweep: SweepConfig, base: ExperimentConfig, *, name: str, data_root: Path,
              nodes: list[dict[str, float]]) -> SweepPlan:
    """Size the trials to the cluster and freeze everything a trial needs into a plan."""
    sizing = size_trials(
        nodes, num_workers=base.scaling.num_workers, cpus_per_worker=base.scaling.cpus_per_worker,
        use_gpu=base.scaling.use_gpu, max_concurrent_trials=sweep.tune.max_concurrent_trials,
        num_samples=total_trials(sweep.search.to_dict(), sweep.tune.to_dict()),
    )
    # Explicit CPUs per worker: build_trainer must not split the whole cluster between one trial's workers.
    base = with_changes(base, scaling={"cpus_per_worker": sizing.cpus_per_worker})
    return SweepPlan(sweep=name, experiment=base.to_dict(), search=sweep.search.to_dict(), tune=sweep.tune.to_dict(),
                     data_root=str(data_root), storage=base.output.storage_path, sizing=asdict(sizing))


# ---- one trial: a Tune driver that fits the main job's TorchTrainer ----------------------------------


def trial_experiment(base: dict[str, Any], params: dict[str, Any], name: str) -> ExperimentConfig:
    """The base experiment with a trial's learning rate, epochs and freezing, named `name`."""
    config = config_from_dict(base, f"trial {name}")
    return with_changes(config, name=name, train={"lr": float(params["lr"]), "epochs": int(params["epochs"])},
                        model={"freeze": params["freeze"]})


def run_trial(params: dict[str, Any], plan: dict[str, Any]) -> None:
    """Tune trainable: train one trial with the main job's trainer, forwarding each epoch's metrics to Tune.

    A trial that diverges ends normally with its status recorded beside its checkpoints (the sweep goes on);
    a worker or node lost is retried by Ray Train from the trial's latest checkpoint.
    """
    from ray import tune  # ray:
    from ray.tune.integration.ray_train import TuneReportCallback  # ray:

    from deepfake_platform.orchestration.train import build_trainer

    trial_id = tune.get_context().get_trial_id()  # ray:
    config = trial_experiment(plan["experiment"], params, f"{plan['sweep']}/{trial_id}")
    trainer = build_trainer(
        config, Path(plan["data_root"]), callbacks=[TuneReportCallback()],  # ray: epoch metrics -> Tune
        # Named after the trial: a restored sweep refits the same run, which resumes from its checkpoint.
        storage_path=join_storage(plan["storage"], plan["sweep"], "train"), run_name=trial_id,
        # Trials run side by side: one line per finished trial, not interleaved progress bars.
        progress=False,
    )
    trainer.fit()  # raises when the workers were lost more often than allowed: the trial errors


def trial_lines(plan: SweepPlan):
    """A Tune callback, run in the driver, printing one line per finished trial (how it ended, its best AUC)."""
    from ray.tune import Callback  # ray:

    checkpoints = Path(plan.config.output.checkpoints_dir) / plan.sweep

    class TrialLines(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trial, None)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trial, "error: the trial failed more often than scaling.max_failures allows")

        def _line(self, trial: Any, failure: str | None) -> None:
            params, result = trial.config, trial.last_result or {}
            status = read_status(checkpoints / trial.trial_id)
            if failure is None and status is not None:
                failure = f"{status['status']}: {status['message']}"
            auc = result.get("val_auc")
            done = f"val AUC {auc:.4f} after epoch {int(result['epoch'])}" if auc is not None else "no epoch finished"
            print(f"trial {trial.trial_id} (lr {params['lr']:.2e}, {params['epochs']} epochs, freeze "
                  f"{params['freeze']}): {failure or done}", flush=True)

    return TrialLines()


def trial_dirname(trial: Any) -> str:
    """Tune's folder for a trial: its id, as in checkpoints/<sweep>/<trial>."""
    return trial.trial_id


def build_tuner(plan: SweepPlan, *, resume: bool):
    """A Tuner over `run_trial`, new or restored from the plan's Tune folder (finished trials are kept)."""
    from ray import tune  # ray:
    from ray.tune.schedulers import ASHAScheduler  # ray:
    from ray.tune.search.basic_variant import BasicVariantGenerator  # ray:

    # The trial driver only waits on its trainer: no CPU, so the workers get every CPU.
    trainable = tune.with_resources(  # ray:
        tune.with_parameters(run_trial, plan=asdict(plan)), {"cpu": 0, "memory": 64 * 1024**2}
    )
    if resume:
        return tune.Tuner.restore(plan.tune_path, trainable=trainable, resume_errored=True)  # ray:
    search, settings = plan.search, plan.tune
    max_epoch_index = max(search["epochs"]) - 1
    return tune.Tuner(  # ray:
        trainable,
        param_space={
            "lr": tune.grid_search(search["lr"]) if search.get("lr") else tune.loguniform(search["lr_min"], search["lr_max"]),
            "epochs": tune.choice(search["epochs"]),
            "freeze": tune.choice(search["freeze"]),
        },
        tune_config=tune.TuneConfig(
            metric=settings["metric"], mode=settings["mode"], num_samples=settings["num_samples"],
            # The limit lives in the generator: TuneConfig.max_concurrent_trials is ignored next to one.
            search_alg=BasicVariantGenerator(
                random_state=settings["seed"], max_concurrent=plan.sizing["max_concurrent_trials"]
            ),
            scheduler=ASHAScheduler(
                time_attr="epoch", grace_period=settings["grace_period"],
                max_t=max(max_epoch_index, settings["grace_period"]), reduction_factor=settings["reduction_factor"],
            ),
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(name="tune", storage_path=join_storage(plan.storage, plan.sweep),  # ray:
                                  verbose=0, callbacks=[trial_lines(plan)]),
    )


# ---- the sweep -----------------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    """What a finished sweep leaves behind."""

    plan: SweepPlan
    rows: list[dict[str, Any]]
    report: Path
    best_checkpoint: Path | None
    promoted: Path | None


def latest_sweep(storage: str, prefix: str) -> str | None:
    """The most recently changed sweep named `prefix` or `prefix`-<time> under a local storage path."""
    if is_uri(storage):
        raise InvalidInput(f"--resume cannot look for the latest sweep in {storage}; pass --name too.")
    found = [path for path in [Path(storage) / prefix, *Path(storage).glob(f"{prefix}-*")] if (path / "tune").is_dir()]
    return max(found, key=lambda path: (path / "tune").stat().st_mtime).name if found else None


def tune_state_exists(tune_path: str) -> bool:
    """Whether a Tune folder holds a sweep that can be resumed."""
    from ray import tune  # ray:

    return tune.Tuner.can_restore(tune_path)  # ray:


def rows_from_results(results, plan: SweepPlan) -> list[dict[str, Any]]:
    """Sweep table rows from a Tune ResultGrid, healthy and best first; a diverged trial says so."""
    checkpoints = Path(plan.config.output.checkpoints_dir) / plan.sweep
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        history = [] if frame is None else frame.to_dict("records")
        # Rows from a trial restarted after a crash repeat epochs: keep the latest report of each epoch.
        history = list({int(row["epoch"]): row for row in history if "epoch" in row}.values())
        trial = Path(result.path).name
        rows.append(trial_row(trial, result.config, history, error=result.error is not None,
                              run_status=read_status(checkpoints / trial)))
    return sort_rows(rows)


def run_sweep(plan: SweepPlan, *, resume: bool, promote_best: bool = True, champion: bool = False,
              tracking: Tracking | None = None) -> SweepOutcome:
    """Fit (or resume) the sweep, then write the table, plot and SWEEP.md, test + register the best trial (the
    challenger, or the champion when `champion`) and track the sweep with its trials.

    Ctrl-C raises KeyboardInterrupt out of here (Tune's own handler is off, see experiments/tune_sweep.py):
    the caller stops Ray, and finished trials stay done for `--resume`.
    """
    start = time.perf_counter()
    plan.save()
    # Tune's SIGINT handler would finish the sweep "gracefully" and return half a ResultGrid; a stop is a stop.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # A trial that diverges before its first epoch ends without a val_auc; it is recorded as diverged, not an
    # error of the whole sweep (every epoch's report carries val_auc).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    results = build_tuner(plan, resume=resume).fit()
    rows = rows_from_results(results, plan)
    run_dir = plan.run_dir
    write_table(rows, run_dir)
    plot_auc_vs_lr(rows, run_dir / "val_auc_vs_lr.png")
    config = plan.config
    tracking = tracking or Tracking.start(Path(config.output.artifacts_dir).parent)
    parent = tracking.start_parent(plan.sweep, {"search": plan.search, "tune": plan.tune, "data_root": plan.data_root,
                                                "experiment": plan.experiment}, tags={"kind": "sweep"})
    best = finalize_best(plan, rows, promote_best=promote_best, champion=champion, tracking=tracking,
                         parent_run_id=parent)
    track_trials(plan, rows, tracking, parent, skip=best["row"]["trial"] if best else None)
    summary = {
        "sweep": plan.sweep, "model": config.model.name, "data_root": plan.data_root, "search": plan.search,
        "tune": plan.tune, "sizing": plan.trial_sizing.describe(), "batch_size": config.train.batch_size,
        "precision": config.train.precision, "wall_time_s": time.perf_counter() - start,
        "checkpoints": str(Path(config.output.checkpoints_dir) / plan.sweep), "tune_path": plan.tune_path,
        "train_path": join_storage(plan.storage, plan.sweep, "train"),
    }
    report = write_text_atomic(run_dir / "SWEEP.md", render_sweep_report(summary, rows, best))
    tracking.finish(parent, [report, run_dir / "sweep.csv", run_dir / "sweep.md", run_dir / "val_auc_vs_lr.png"],
                    metrics={"best_val_auc": best["row"]["best_val_auc"] if best else math.nan,
                             "trials": len(rows), "wall_time_s": summary["wall_time_s"]})
    return SweepOutcome(plan, rows, report, best["checkpoint"] if best else None, best["promoted"] if best else None)


def finalize_best(plan: SweepPlan, rows: list[dict[str, Any]], *, promote_best: bool, champion: bool = False,
                  tracking: Tracking | None = None, parent_run_id: str | None = None) -> dict[str, Any] | None:
    """Test the best healthy trial's best checkpoint and register it, with the main job's finalize_run."""
    from deepfake_platform.orchestration.finalize import finalize_run
    from deepfake_platform.orchestration.train import TrainingOutcome

    row = best_healthy(rows)
    if row is None:
        return None
    config = trial_experiment(plan.experiment, row, f"{plan.sweep}/{row['trial']}")
    paths = RunPaths.for_config(config)
    checkpoint = paths.checkpoints / "best.pth"
    report = finalize_run(TrainingOutcome(config, paths, checkpoint, row["time_s"], row["time_s"],
                                          config.scaling.cpus_per_worker),
                          Path(plan.data_root), promote_best=promote_best, champion=champion, tracking=tracking,
                          parent_run_id=parent_run_id, kind="sweep")
    results = json.loads((report.parent / "results.json").read_text())
    return {"row": row, "checkpoint": checkpoint, "test": results["test"]["metrics"], "promoted": results["promoted"],
            "registered": results.get("registered")}


def track_trials(plan: SweepPlan, rows: list[dict[str, Any]], tracking: Tracking, parent_run_id: str | None, *,
                 skip: str | None) -> None:
    """One child run per trial (but `skip`, the best, which finalize_run tracked): its config, how it ended, its
    epochs (from its last epoch checkpoint, step=epoch)."""
    if parent_run_id is None:
        return
    checkpoints = Path(plan.config.output.checkpoints_dir) / plan.sweep
    for row in rows:
        if row["trial"] == skip:
            continue
        epochs = epoch_checkpoints(checkpoints / row["trial"])
        history = read_checkpoint(epochs[-1], DetectorCheckpoint).history if epochs else []
        config = trial_experiment(plan.experiment, row, f"{plan.sweep}/{row['trial']}")
        tracking.log_run(RunRecord(
            name=config.name, params=config.to_dict(), history=history, files=[],
            metrics={key: row[key] for key in ("best_val_auc", "epochs_run", "time_s") if row.get(key) is not None},
            tags={"kind": "sweep-trial", "status": row["status"], "data_root": plan.data_root},
            parent_run_id=parent_run_id))
