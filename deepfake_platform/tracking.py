"""Tracked runs: every training run, sweep (a parent run with one child per trial) and fine-tune in MLflow.

The store is `$MLFLOW_TRACKING_URI` when set (a cluster's shared tracking server), else a SQLite file under
the output home, `mlruns/mlflow.db`, with artifacts under `mlruns/artifacts`; from the output home,
`mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` shows the runs. All runs go to the experiment
`deepfake-platform`.

Cost, kept off the critical path: `import mlflow` takes seconds and a new SQLite store seconds more (Alembic
migrations). `Tracking.start` does both in a background thread while the job starts Ray and trains; a new
store is a copy of a migrated empty one kept per MLflow version under ~/.cache/deepfake-platform. Nothing
here is imported by the core at import time, and nothing of MLflow reaches the console (its logs,
warnings and telemetry) unless --verbose.

Tracking never costs a run its results: when the store cannot be reached, one sentence says so and what to
check, and the run finishes with its files as before.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXPERIMENT = "deepfake-platform"
URI_ENV = "MLFLOW_TRACKING_URI"
STORE_DIR = "mlruns"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
TEMPLATE_CACHE = Path("~/.cache/deepfake-platform")
# MLflow's own per-call limits (log_batch): at most 100 params and 1000 metrics a call, values of 6000 chars.
PARAMS_PER_BATCH, METRICS_PER_BATCH, PARAM_CHARS = 100, 1000, 6000


def store_uri(home: str | Path) -> str:
    """The tracking store of an output home: $MLFLOW_TRACKING_URI, else its SQLite file (absolute)."""
    return os.environ.get(URI_ENV) or f"sqlite:///{Path(home).resolve() / STORE_DIR / DB_FILE}"


def artifact_root(home: str | Path) -> str:
    """Where a local store keeps run artifacts: absolute, since Tune and `mlflow ui` run from other folders."""
    return (Path(home).resolve() / STORE_DIR / ARTIFACTS_DIR).as_uri()


def quiet_mlflow(verbose: bool = False) -> None:
    """Keep MLflow's logs, warnings and telemetry off the console (--verbose shows its logs)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # An unreachable tracking server fails in seconds, not after minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    if verbose:
        return
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", module=r"alembic(\.|$)")
    # Importing MLflow's HTTP client where a SOCKS proxy is configured: urllib3 warns once about PySocks.
    warnings.filterwarnings("ignore", message="SOCKS support in urllib3")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config sections as dotted MLflow parameters (`train.lr`: "0.0001")."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:PARAM_CHARS]
    return flat


def _numeric(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def _migrated_template() -> Path:
    """A migrated, empty SQLite store for this MLflow version (built once per machine, seconds)."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = TEMPLATE_CACHE.expanduser()
    template = folder / f"mlflow-{mlflow.__version__}-empty.db"
    if not template.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".{template.name}.{os.getpid()}.tmp"
        staging.unlink(missing_ok=True)
        SqlAlchemyStore(f"sqlite:///{staging}", (folder / "unused-artifacts").as_uri()).engine.dispose()
        os.replace(staging, template)  # within one folder: another process sees all of it or none
    return template


def _prepare_local_store(home: Path) -> None:
    """Make <home>/mlruns/mlflow.db a copy of the migrated template when it does not exist yet."""
    database = home / STORE_DIR / DB_FILE
    if database.is_file():
        return
    template = _migrated_template()
    database.parent.mkdir(parents=True, exist_ok=True)
    staging = database.with_name(f".{DB_FILE}.{os.getpid()}.tmp")
    shutil.copyfile(template, staging)
    with sqlite3.connect(staging) as db:  # the template's Default experiment points at its own folder
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                   (f"{artifact_root(home)}/0",))
    db.close()
    try:
        os.link(staging, database)  # never over a store another process created meanwhile
    except FileExistsError:
        pass
    finally:
        staging.unlink(missing_ok=True)


def client_for(home: str | Path):
    """An MlflowClient on the home's store (created when new) and the experiment's id."""
    home = Path(home).resolve()
    uri = store_uri(home)
    if uri == f"sqlite:///{home / STORE_DIR / DB_FILE}":
        _prepare_local_store(home)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return client, experiment.experiment_id
    location = artifact_root(home) if uri.startswith("sqlite:") else None  # a server decides its own
    try:
        return client, client.create_experiment(EXPERIMENT, artifact_location=location)
    except Exception:  # another process created it first
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            raise
        return client, experiment.experiment_id


@dataclass
class RunRecord:
    """What one tracked run holds: its name, parameters, per-epoch history, final metrics, files and tags."""

    name: str
    params: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    files: list[Path]
    model: Path | None = None
    tags: dict[str, str] | None = None
    parent_run_id: str | None = None


class Tracking:
    """A job's connection to the tracking store, opened in the background as the job starts."""

    def __init__(self, home: str | Path, *, verbose: bool = False):
        self.home = Path(home).resolve()
        self.uri = store_uri(self.home)
        self.verbose = verbose
        self._client: Any = None
        self._experiment_id: str | None = None
        self._error: BaseException | None = None
        self.failed = False
        quiet_mlflow(verbose)
        self._thread = threading.Thread(target=self._open, name="mlflow-store", daemon=True)

    @classmethod
    def start(cls, home: str | Path, *, verbose: bool = False) -> Tracking:
        """Start importing MLflow and opening the store in a background thread; returns at once."""
        tracking = cls(home, verbose=verbose)
        tracking._thread.start()
        return tracking

    def _open(self) -> None:
        try:
            self._client, self._experiment_id = client_for(self.home)
        except BaseException as err:  # reported once, where the run is logged
            self._error = err

    def client(self):
        """The MlflowClient and experiment id, waiting for the store; raises what opening it raised."""
        if not self._thread.is_alive() and self._client is None and self._error is None:
            self._thread.start()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._client, self._experiment_id

    def warn(self, err: BaseException, what: str) -> None:
        """The one sentence a user sees when tracking failed: the results are kept, and what to check."""
        self.failed = True
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        check = (f"check that {URI_ENV}={self.uri} is reachable" if os.environ.get(URI_ENV)
                 else f"check that {self.home / STORE_DIR} is writable")
        print(f"warning: MLflow tracking failed ({reason}), so {what} is not in the store; the results are "
              f"kept in their files. To track it next time, {check}.", file=sys.stderr, flush=True)

    def log_run(self, record: RunRecord, *, finish: bool = True) -> str | None:
        """Record one run (params, history with step=epoch, metrics, files, the model under `model/`); its run
        id, or None when tracking failed (said in one sentence). `finish=False` leaves it open for `finish`."""
        if self.failed:
            return None
        try:
            client, experiment_id = self.client()
            tags = dict(record.tags or {})
            if record.parent_run_id:
                tags["mlflow.parentRunId"] = record.parent_run_id
            run = client.create_run(experiment_id, run_name=record.name, tags=tags)
            run_id = run.info.run_id
            self._log_values(client, run_id, record)
            for path in record.files:
                if Path(path).is_file():
                    client.log_artifact(run_id, str(path))
            if record.model is not None:
                client.log_artifact(run_id, str(record.model), artifact_path="model")
            if finish:
                client.set_terminated(run_id)
            return run_id
        except Exception as err:
            self.warn(err, f"run {record.name}")
            return None

    def finish(self, run_id: str | None, files: Iterable[Path] = (), metrics: dict[str, Any] | None = None) -> None:
        """Add files (the report, written after the run was opened) and metrics to an open run, and close it."""
        if run_id is None or self.failed:
            return
        try:
            client, _ = self.client()
            if metrics:
                self._log_values(client, run_id, RunRecord("", {}, [], metrics, []))
            for path in files:
                if Path(path).is_file():
                    client.log_artifact(run_id, str(path))
            client.set_terminated(run_id)
        except Exception as err:
            self.warn(err, "the run's report")

    def start_parent(self, name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> str | None:
        """Open a parent run (a sweep) that child runs name in their `parent_run_id`; None when tracking failed."""
        if self.failed:
            return None
        try:
            client, experiment_id = self.client()
            run = client.create_run(experiment_id, run_name=name, tags=tags or {})
            self._log_values(client, run.info.run_id, RunRecord(name, params, [], {}, []))
            return run.info.run_id  # closed with `finish`
        except Exception as err:
            self.warn(err, f"sweep {name}")
            return None

    def artifact_uri(self, run_id: str) -> str:
        """Where the run's artifacts live (a registered version's source is `<this>/model`)."""
        client, _ = self.client()
        return client.get_run(run_id).info.artifact_uri

    @staticmethod
    def _log_values(client: Any, run_id: str, record: RunRecord) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        params = [Param(key, value) for key, value in flatten(record.params).items()]
        metrics = [Metric(key, number, now, 0) for key, value in record.metrics.items()
                   if (number := _numeric(value)) is not None]
        for row in record.history:
            step = int(row.get("epoch", 0))
            metrics += [Metric(key, number, now, step) for key, value in row.items()
                        if key != "epoch" and (number := _numeric(value)) is not None]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[start:start + PARAMS_PER_BATCH])
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[start:start + METRICS_PER_BATCH])
