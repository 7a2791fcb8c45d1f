"""Ray Tune sweeps over the one training loop: learning rate, epochs and backbone freezing, ASHA on val AUC.

Read top to bottom: the sweep file (`SweepConfig`, `load_sweep_config`), where outputs go (`output_home`,
`anchor_outputs`), how big a trial is (`size_trials`), the trial itself (`run_trial`: a Tune driver that
builds and fits the same TorchTrainer as the main job), then `run_sweep` and the results (table, plot,
SWEEP.md, the best trial tested and promoted by `deepfake_platform.pipeline`). Ray lines are marked `# ray:`.

Layout of one sweep named S, under the output home H and the Ray storage R (default H/ray_results):

    R/S/tune/                     Tune's experiment state (what `--resume` restores)
    R/S/train/<trial>/            each trial's Ray Train run (its latest checkpoint, for resuming it)
    H/checkpoints/S/<trial>/      each trial's epoch_XXX_auc_Y.pth and best.pth
    H/runs/S/                     SWEEP.md, sweep.csv, sweep.md, val_auc_vs_lr.png, <best trial>/RESULTS.md
    H/artifacts/best.pth          the best trial's best checkpoint, promoted
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepfake_platform.config import (
    REPO_ROOT,
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    build_dataclass,
    config_from_dict,
    load_config,
)

HOME_ENV = "DEEPFAKE_HOME"
# Under `ray job submit` the working directory is a temporary copy of the repo: outputs must go elsewhere.
JOB_HOME = Path("~/deepfake-platform")
FREEZE_MODES = ("none", "cnn", "vit", "backbones")
_LAST_K = re.compile(r"last[1-9][0-9]*")


# ---------------------------------------------------------------------------------------------
# The sweep file
# ---------------------------------------------------------------------------------------------


@dataclass
class SearchSpace:
    """What the sweep varies: learning rate (log-uniform between two bounds), epochs and freezing (choices)."""

    lr_min: float = 1e-5
    lr_max: float = 1e-3
    # Lists (typed at validation: config.py's loader types scalars, mappings and dataclasses only).
    epochs: Any = field(default_factory=lambda: [3, 5])
    freeze: Any = field(default_factory=lambda: ["none", "cnn", "vit", "backbones", "last2"])


@dataclass
class TuneSettings:
    """How Tune runs the search."""

    num_samples: int = 8
    # Validation AUC, maximised: what each trial's best.pth and the promotion are chosen on.
    metric: str = "val_auc"
    mode: str = "max"
    # ASHA compares trials from this epoch index on (epochs count from 0, as in epoch_001_auc_...pth).
    grace_period: int = 1
    reduction_factor: int = 2
    # 0: as many trials at once as the cluster's CPUs (and GPUs) hold.
    max_concurrent_trials: int = 0
    seed: int = 0


@dataclass
class SweepConfig:
    """A sweep: a base experiment (a config file path, relative to the sweep file, or a mapping), the
    search space and the Tune settings."""

    name: str = "sweep"
    experiment: str | dict[str, Any] = "baseline.yaml"
    search: SearchSpace = field(default_factory=SearchSpace)
    tune: TuneSettings = field(default_factory=TuneSettings)

    def validate(self, source: str) -> SweepConfig:
        """Check values whose type alone does not make them valid; return self."""
        search, settings = self.search, self.tune

        def fail(key: str, expected: str, value: Any) -> None:
            raise ConfigError(f"{source}: {key} must be {expected}, got {value!r}.")

        if not 0 < search.lr_min <= search.lr_max:
            fail("search.lr_min / lr_max", "positive with lr_min <= lr_max", (search.lr_min, search.lr_max))
        if not (isinstance(search.epochs, list) and search.epochs
                and all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in search.epochs)):
            fail("search.epochs", "a non-empty list of positive integers", search.epochs)
        if not (isinstance(search.freeze, list) and search.freeze
                and all(isinstance(f, str) and (f in FREEZE_MODES or _LAST_K.fullmatch(f)) for f in search.freeze)):
            fail("search.freeze", f"a non-empty list of {', '.join(FREEZE_MODES)} or lastK (e.g. last2)", search.freeze)
        if settings.num_samples < 1:
            fail("tune.num_samples", "at least 1", settings.num_samples)
        if (settings.metric, settings.mode) != ("val_auc", "max"):
            # Each trial's best.pth and the promotion are chosen on validation AUC: the search must be too.
            fail("tune.metric / tune.mode", "val_auc / max", (settings.metric, settings.mode))
        if settings.grace_period < 1:
            fail("tune.grace_period", "at least 1 (ASHA never stops a trial before its second epoch)",
                 settings.grace_period)
        if settings.reduction_factor < 2:
            fail("tune.reduction_factor", "at least 2", settings.reduction_factor)
        if settings.max_concurrent_trials < 0:
            fail("tune.max_concurrent_trials", "0 (auto) or positive", settings.max_concurrent_trials)
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            fail("name", "letters, digits, '.', '_' or '-' (it names folders)", self.name)
        return self


def load_sweep_config(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Load a sweep YAML file; `overrides` are `key=value` (e.g. tune.num_samples=4)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; see experiments/configs/sweep.yaml for an example.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    source = str(path)
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    return build_dataclass(SweepConfig, data, source).validate(source)


def experiment_config(sweep: SweepConfig, sweep_file: str | Path) -> ExperimentConfig:
    """The base experiment of a sweep: its config file (found next to the sweep file first) or its mapping."""
    if isinstance(sweep.experiment, dict):
        return config_from_dict(sweep.experiment, f"{sweep_file}: experiment")
    for folder in (Path(sweep_file).resolve().parent, REPO_ROOT):
        candidate = folder / sweep.experiment
        if candidate.is_file():
            return load_config(candidate)
    raise ConfigError(
        f"{sweep_file}: experiment {sweep.experiment!r} was found neither next to the sweep file nor under "
        f"{REPO_ROOT}; give a path to an experiment config or write the experiment as a mapping."
    )


# ---------------------------------------------------------------------------------------------
# Where outputs go
# ---------------------------------------------------------------------------------------------


def in_ray_job() -> bool:
    """Whether this process is a `ray job submit` entrypoint (its working dir is a temporary copy)."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def output_home(explicit: str | None = None) -> Path:
    """--output-root, else $DEEPFAKE_HOME, else ~/deepfake-platform under a Ray job, else the current directory."""
    chosen = explicit or os.environ.get(HOME_ENV)
    if chosen:
        return Path(chosen).expanduser().resolve()
    return JOB_HOME.expanduser().resolve() if in_ray_job() else Path.cwd().resolve()


def is_uri(path: str) -> bool:
    """Whether a storage path is a URI (s3://, gs://, ...) rather than a local or NFS path."""
    return "://" in path


def join_storage(storage: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    return "/".join([storage.rstrip("/"), *parts])


def anchor_outputs(config: ExperimentConfig, home: Path, storage: str | None) -> ExperimentConfig:
    """A copy of `config` whose output paths are absolute under `home` (Ray storage: `storage` if given)."""
    config = copy.deepcopy(config)
    out = config.output
    out.checkpoints_dir = str(home / out.checkpoints_dir)
    out.runs_dir = str(home / out.runs_dir)
    out.artifacts_dir = str(home / out.artifacts_dir)
    chosen = storage or out.storage_path
    out.storage_path = chosen if is_uri(chosen) else str(home / Path(chosen).expanduser())
    return config


def sweep_data_root(data: str | None, config: ExperimentConfig, home: Path) -> Path:
    """--data or data.root (relative paths under `home`), else the embedded set, built under home/data."""
    from deepfake_platform.data import EMBEDDED_SETS, ensure_embedded_dataset
    from deepfake_platform.training import default_data_root

    chosen = data or config.data.root
    if chosen:
        return default_data_root(str(home / Path(chosen).expanduser()), config)
    spec = EMBEDDED_SETS[config.data.embedded]
    return ensure_embedded_dataset(home / "data" / Path(spec["path"]).name, counts=spec["counts"], size=spec["size"])


# ---------------------------------------------------------------------------------------------
# How big a trial is, from the cluster's nodes (pure)
# ---------------------------------------------------------------------------------------------


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


def size_trials(
    nodes: list[dict[str, float]], *, num_workers: int, cpus_per_worker: float, use_gpu: bool,
    max_concurrent_trials: int, num_samples: int,
) -> TrialSizing:
    """Size trials to the nodes' resources so every trial's workers can start (nothing waits forever).

    `cpus_per_worker` 0 gives one trial a whole (largest) node; trials then run one per node. The trial
    driver itself asks for no CPU (see `build_tuner`), so only the workers count.
    """
    cpus = [node.get("CPU", 0.0) for node in nodes]
    largest = max(cpus, default=0.0)
    if largest <= 0:
        raise ValueError(
            "the Ray cluster has no CPUs yet. Start worker nodes first (e.g. min_workers in cluster.yaml) "
            "or connect to another cluster with RAY_ADDRESS."
        )
    per_worker = cpus_per_worker or max(1.0, math.floor(largest / num_workers))
    if per_worker > largest:
        raise ValueError(
            f"scaling.cpus_per_worker={per_worker:g} is more than the largest node's {largest:g} CPUs, so no "
            f"worker could ever start. Set scaling.cpus_per_worker to at most {largest:g}."
        )
    slots = [math.floor(c / per_worker + 1e-9) for c in cpus]
    if use_gpu:
        slots = [min(s, math.floor(node.get("GPU", 0.0))) for s, node in zip(slots, nodes, strict=True)]
    fits = sum(slots) // num_workers
    if fits == 0:
        what = f"{num_workers} worker(s) x {per_worker:g} CPU" + (" + 1 GPU" if use_gpu else "")
        raise ValueError(
            f"one trial needs {what}, more than the cluster holds ({sum(cpus):g} CPUs, "
            f"{sum(n.get('GPU', 0.0) for n in nodes):g} GPUs). Lower scaling.num_workers or "
            "scaling.cpus_per_worker, or add nodes."
        )
    wanted = max_concurrent_trials or fits
    return TrialSizing(num_workers, per_worker, use_gpu, max(1, min(wanted, fits, num_samples)))


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of every alive node of the connected Ray cluster."""
    import ray  # ray:

    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]  # ray:


# ---------------------------------------------------------------------------------------------
# One trial: a Tune driver that fits the main job's TorchTrainer
# ---------------------------------------------------------------------------------------------


def trial_experiment(base: dict[str, Any], params: dict[str, Any], name: str) -> ExperimentConfig:
    """The base experiment with a trial's learning rate, epochs and freezing, named `name`."""
    data = copy.deepcopy(base)
    data["name"] = name
    data["train"]["lr"] = float(params["lr"])
    data["train"]["epochs"] = int(params["epochs"])
    data["model"]["freeze"] = params["freeze"]
    return config_from_dict(data, f"trial {name}")


def run_trial(params: dict[str, Any], plan: dict[str, Any]) -> None:
    """Tune trainable: train one trial with `build_trainer` + `train_loop_per_worker`, forwarding each epoch."""
    from ray import tune  # ray:
    from ray.tune.integration.ray_train import TuneReportCallback  # ray:

    from deepfake_platform.training import build_trainer

    trial_id = tune.get_context().get_trial_id()  # ray:
    config = trial_experiment(plan["experiment"], params, f"{plan['sweep']}/{trial_id}")
    trainer = build_trainer(
        config, Path(plan["data_root"]), callbacks=[TuneReportCallback()],  # ray: epoch metrics -> Tune
        # Named after the trial: a restored sweep refits the same run, which resumes from its checkpoint.
        storage_path=join_storage(plan["storage"], plan["sweep"], "train"), run_name=trial_id,
    )
    trainer.fit()  # raises when the run fails for good; Tune then marks the trial errored


def trial_dirname(trial: Any) -> str:
    """Tune's folder for a trial: its id, as in checkpoints/<sweep>/<trial>."""
    return trial.trial_id


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
            raise FileNotFoundError(
                f"{path} is missing, so the sweep cannot be resumed as it started. Start a new sweep "
                "with another --name."
            )
        return cls(**json.loads(path.read_text()))

    def save(self) -> Path:
        """Write the plan to runs/<sweep>/sweep_plan.json."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "sweep_plan.json"
        path.write_text(json.dumps(vars(self), indent=2))
        return path


def make_plan(
    sweep: SweepConfig, base: ExperimentConfig, *, name: str, data_root: Path, nodes: list[dict[str, float]],
) -> SweepPlan:
    """Size the trials to the cluster and freeze everything a trial needs into a plan."""
    sizing = size_trials(
        nodes, num_workers=base.scaling.num_workers, cpus_per_worker=base.scaling.cpus_per_worker,
        use_gpu=base.scaling.use_gpu, max_concurrent_trials=sweep.tune.max_concurrent_trials,
        num_samples=sweep.tune.num_samples,
    )
    base = copy.deepcopy(base)
    # Explicit CPUs per worker: build_trainer must not split the whole cluster between one trial's workers.
    base.scaling.cpus_per_worker = sizing.cpus_per_worker
    return SweepPlan(
        sweep=name, experiment=base.to_dict(), search=vars(sweep.search), tune=vars(sweep.tune),
        data_root=str(data_root), storage=base.output.storage_path, sizing=vars(sizing),
    )


def build_tuner(plan: SweepPlan, *, resume: bool):
    """A Tuner over `run_trial`, new or restored from the plan's Tune folder (finished trials are kept)."""
    from ray import tune  # ray:
    from ray.tune.schedulers import ASHAScheduler  # ray:
    from ray.tune.search.basic_variant import BasicVariantGenerator  # ray:

    # The trial driver only waits on its trainer: no CPU, so the workers get every CPU (RAY_NOTES.md).
    trainable = tune.with_resources(  # ray:
        tune.with_parameters(run_trial, plan=vars(plan)), {"cpu": 0, "memory": 64 * 1024**2}
    )
    if resume:
        return tune.Tuner.restore(plan.tune_path, trainable=trainable, resume_errored=True)  # ray:
    search, settings = plan.search, plan.tune
    max_epoch_index = max(search["epochs"]) - 1
    return tune.Tuner(  # ray:
        trainable,
        param_space={
            "lr": tune.loguniform(search["lr_min"], search["lr_max"]),
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
        run_config=tune.RunConfig(name="tune", storage_path=join_storage(plan.storage, plan.sweep)),  # ray:
    )


# ---------------------------------------------------------------------------------------------
# Results: the sweep table, the plot, SWEEP.md (pure functions, then the file writers)
# ---------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("trial", "lr", "epochs", "freeze", "best_val_auc", "best_epoch", "epochs_run", "status", "time_s")


def trial_row(trial: str, params: dict[str, Any], history: list[dict[str, Any]], error: bool) -> dict[str, Any]:
    """One line of the sweep table from a trial's parameters and its per-epoch metrics."""
    scored = [row for row in history if not math.isnan(float(row.get("val_auc", math.nan)))]
    best = max(scored, key=lambda row: row["val_auc"], default=None)
    epochs_run = len({int(row["epoch"]) for row in history})
    if error:
        status = "error"
    elif epochs_run < int(params["epochs"]):
        status = "stopped early (ASHA)"
    else:
        status = "finished"
    return {
        "trial": trial,
        "lr": float(params["lr"]),
        "epochs": int(params["epochs"]),
        "freeze": params["freeze"],
        "best_val_auc": float(best["val_auc"]) if best else math.nan,
        "best_epoch": int(best["epoch"]) if best else None,
        "epochs_run": epochs_run,
        "status": status,
        "time_s": float(history[-1].get("time_total_s", 0.0)) if history else 0.0,
    }


def rows_from_results(results) -> list[dict[str, Any]]:
    """Sweep table rows from a Tune ResultGrid, best validation AUC first."""
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        history = [] if frame is None else frame.to_dict("records")
        # Rows from a trial restarted after a crash repeat epochs: keep the latest report of each epoch.
        history = list({int(row["epoch"]): row for row in history if "epoch" in row}.values())
        trial = Path(result.path).name
        rows.append(trial_row(trial, result.config, history, result.error is not None))
    return sorted(rows, key=lambda row: (-_auc_or_minus(row["best_val_auc"]), row["trial"]))


def _auc_or_minus(value: float) -> float:
    return -1.0 if math.isnan(value) else value


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_table(rows: list[dict[str, Any]]) -> str:
    """The sweep table as Markdown."""
    header = ["trial", "lr", "epochs", "freeze", "best val AUC", "at epoch", "epochs run", "status", "time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["trial"], f"{row['lr']:.2e}", row["epochs"], row["freeze"], _cell(row["best_val_auc"]),
                 _cell(row["best_epoch"]), row["epochs_run"], row["status"], f"{row['time_s']:.1f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict[str, Any]], run_dir: Path) -> tuple[Path, Path]:
    """Write sweep.csv and sweep.md."""
    run_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = run_dir / "sweep.csv", run_dir / "sweep.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(render_table(rows))
    return csv_path, md_path


def plot_auc_vs_lr(rows: list[dict[str, Any]], path: Path) -> Path:
    """Best validation AUC against learning rate (log scale), one series per freeze mode, PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for freeze in sorted({row["freeze"] for row in rows}):
        points = sorted((row["lr"], row["best_val_auc"]) for row in rows
                        if row["freeze"] == freeze and not math.isnan(row["best_val_auc"]))
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", linestyle=":", label=f"freeze={freeze}")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="best validation AUC", title="Validation AUC against learning rate")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_sweep_report(plan: SweepPlan, rows: list[dict[str, Any]], best: dict[str, Any] | None,
                        wall_time_s: float) -> str:
    """SWEEP.md: what was searched, the table, the plot, the best trial and where everything is."""
    search, settings, config = plan.search, plan.tune, plan.config
    lines = [
        f"# Sweep {plan.sweep}",
        "",
        f"{len(rows)} trial(s) of `{config.model.name}` on `{plan.data_root}`, in {wall_time_s / 60:.1f} min "
        f"({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC).",
        "",
        "## Search",
        "",
        f"- learning rate: log-uniform in [{search['lr_min']:g}, {search['lr_max']:g}]",
        f"- epochs: one of {search['epochs']}",
        f"- freezing: one of {', '.join(search['freeze'])}",
        f"- {settings['num_samples']} samples (seed {settings['seed']}); ASHA on `{settings['metric']}` "
        f"({settings['mode']}), time attribute `epoch`, grace period {settings['grace_period']}, reduction "
        f"factor {settings['reduction_factor']}",
        f"- {plan.trial_sizing.describe()}; batch {config.train.batch_size}, "
        f"precision {config.train.precision}",
        "",
        "## Trials",
        "",
        "Best validation AUC first; `at epoch` counts from 0, like the checkpoint file names. "
        "The same table: `sweep.csv`.",
        "",
        render_table(rows),
        "## Validation AUC against learning rate",
        "",
        "![best validation AUC against learning rate, by freezing](val_auc_vs_lr.png)",
        "",
        "## Best trial",
        "",
    ]
    if best is None:
        lines.append("No trial reported a validation AUC; see the trial logs above the report.")
    else:
        test = best["test"]
        lines += [
            f"Trial `{best['row']['trial']}` (lr {best['row']['lr']:.2e}, {best['row']['epochs']} epochs, "
            f"freeze {best['row']['freeze']}): validation AUC {_cell(best['row']['best_val_auc'])} at epoch "
            f"{best['row']['best_epoch']}; on test: AUC {_cell(test['auc'])}, accuracy "
            f"{_cell(test['at_val_threshold']['accuracy'])} at the validation threshold.",
            "",
            f"- checkpoint: `{best['checkpoint']}`",
            f"- full report: [{best['row']['trial']}/RESULTS.md]({best['row']['trial']}/RESULTS.md)",
            f"- promoted to: `{best['promoted']}`" if best["promoted"] else "- not promoted (--no-promote)",
        ]
    lines += [
        "",
        "## Where things are",
        "",
        f"- per-trial checkpoints: `{Path(config.output.checkpoints_dir) / plan.sweep}/<trial>/`",
        f"- Tune state: `{plan.tune_path}`; Ray Train runs: `{join_storage(plan.storage, plan.sweep, 'train')}`",
        f"- resume after a crash: rerun the same command with `--resume --name {plan.sweep}`",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------


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
        raise ValueError(f"--resume cannot look for the latest sweep in {storage}; pass --name too.")
    found = [path for path in [Path(storage) / prefix, *Path(storage).glob(f"{prefix}-*")] if (path / "tune").is_dir()]
    return max(found, key=lambda path: (path / "tune").stat().st_mtime).name if found else None


def tune_state_exists(tune_path: str) -> bool:
    """Whether a Tune folder holds a sweep that can be resumed."""
    from ray import tune  # ray:

    return tune.Tuner.can_restore(tune_path)  # ray:


def run_sweep(plan: SweepPlan, *, resume: bool, promote_best: bool = True) -> SweepOutcome:
    """Fit (or resume) the sweep, then write the table, plot and SWEEP.md and test + promote the best trial."""
    start = time.perf_counter()
    plan.save()
    results = build_tuner(plan, resume=resume).fit()
    rows = rows_from_results(results)
    run_dir = plan.run_dir
    write_table(rows, run_dir)
    plot_auc_vs_lr(rows, run_dir / "val_auc_vs_lr.png")
    best = finalize_best(plan, rows, promote_best=promote_best)
    report = run_dir / "SWEEP.md"
    report.write_text(render_sweep_report(plan, rows, best, time.perf_counter() - start))
    return SweepOutcome(plan, rows, report, best["checkpoint"] if best else None,
                        best["promoted"] if best else None)


def finalize_best(plan: SweepPlan, rows: list[dict[str, Any]], *, promote_best: bool) -> dict[str, Any] | None:
    """Test the best trial's best checkpoint and promote it, with the main job's pipeline."""
    from deepfake_platform.pipeline import finalize_run
    from deepfake_platform.training import RunPaths, TrainingOutcome

    scored = [row for row in rows if not math.isnan(row["best_val_auc"])]
    if not scored:
        return None
    row = scored[0]  # rows come best first
    config = trial_experiment(plan.experiment, row, f"{plan.sweep}/{row['trial']}")
    paths = RunPaths.for_config(config)
    checkpoint = paths.checkpoints / "best.pth"
    report = finalize_run(TrainingOutcome(config, paths, checkpoint, row["time_s"]), Path(plan.data_root),
                          promote_best=promote_best)
    results = json.loads((report.parent / "results.json").read_text())
    return {"row": row, "checkpoint": checkpoint, "test": results["test"]["metrics"],
            "promoted": results["promoted"]}
