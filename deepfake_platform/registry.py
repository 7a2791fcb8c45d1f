"""The model registry: versions of one registered model in MLflow, and which of them answers.

One registered model, `deepfake-detector`, in the tracking store of the output home (deepfake_platform/
tracking.py). A version is registered from a tracked run (its source is the run's `model/` artifact) and
tagged with what it is: the checkpoint's SHA-256, the data root, validation and test AUC, the source run,
and for a fine-tune the version it was fine-tuned from. Two aliases say who answers: `champion` (what the
server answers with) and `challenger` (on trial: shadowed, or answering a canary share).

On disk, beside the server, in the artifacts folder:

    artifacts/models/v<N>.pth, v<N>.json    each version's checkpoint (written once, never changed) and summary
    artifacts/best.pth, best.json           the champion's file (a link to its version's), for every command
                                            that reads best.pth
    artifacts/serving.json                  who answers (deepfake_platform/serving_state.py: the server reads it)

Every change writes the version file first, then moves the alias in MLflow, then best.pth, then serving.json
(what a running server switches on). A server that withdraws a challenger writes serving.json itself;
`reconcile` brings MLflow's aliases and tags in line with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfake_platform.checkpoints import file_sha256
from deepfake_platform.errors import InvalidInput, UserError
from deepfake_platform.files import copy_atomic, link_or_copy, write_text_atomic
from deepfake_platform.serving_state import MODES, now, read_state, state_path, write_state
from deepfake_platform.tracking import Tracking

REGISTERED_MODEL = "deepfake-detector"
CHAMPION, CHALLENGER = "champion", "challenger"
MODELS_DIR = "models"


class RegistryError(UserError):
    """A registry command that cannot be done as asked (unknown version, no registry yet, a bad state file)."""


def version_file(artifacts: Path, version: int) -> Path:
    """The immutable local checkpoint of a version."""
    return Path(artifacts) / MODELS_DIR / f"v{int(version)}.pth"


@dataclass
class Registered:
    """A version just registered, and the role it was given."""

    version: int
    role: str
    file: Path


class Registry:
    """The registered model of an output home, its aliases, and the serving state beside its artifacts."""

    def __init__(self, home: str | Path, artifacts: str | Path | None = None, *, tracking: Tracking | None = None,
                 verbose: bool = False):
        self.home = Path(home).resolve()
        self.artifacts = Path(artifacts).resolve() if artifacts else self.home / "artifacts"
        self.state_file = state_path(self.artifacts)
        self.tracking = tracking or Tracking(self.home, verbose=verbose)
        self._client: Any = None

    # ---- the store and the state --------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The MlflowClient of the home's store."""
        if self._client is None:
            try:
                self._client, _ = self.tracking.client()
            except Exception as err:
                raise RegistryError(f"the model registry in {self.tracking.uri} cannot be opened ({err}); check "
                                    "MLFLOW_TRACKING_URI, or run the command from the output home "
                                    "(or pass --home).") from None
        return self._client

    def state(self) -> dict[str, Any]:
        """The serving state (an empty one when no version was registered here yet)."""
        try:
            state = read_state(self.state_file)
        except ValueError:
            raise RegistryError(f"{self.state_file} is not valid JSON, so who answers is unknown; restore it from "
                                "a backup, or delete it and run `python experiments/models.py promote V`.") from None
        if state is not None and not isinstance(state, dict):
            raise RegistryError(f"{self.state_file} does not hold a serving state; delete it and run "
                                "`python experiments/models.py promote V`.")
        return state or {"registered_model": REGISTERED_MODEL, "champion": None, "challenger": None,
                         "history": [], "withdrawn": None}

    def _version(self, version: int) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(REGISTERED_MODEL, str(int(version)))
        except MlflowException:
            known = self._known_versions()
            hint = (f"known versions: {', '.join(map(str, known))}" if known
                    else "no version is registered yet: train with `python experiments/reproduce_baseline.py`")
            raise RegistryError(f"there is no version {version} of {REGISTERED_MODEL} in {self.tracking.uri}; "
                                f"{hint}.") from None

    def _known_versions(self) -> list[int]:
        return sorted(int(v.version) for v in self.client.search_model_versions(f"name='{REGISTERED_MODEL}'"))

    def _entry(self, version: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A role's entry of the serving state for `version` (its local file must exist)."""
        model_version = self._version(version)
        path = version_file(self.artifacts, version)
        if not path.is_file():
            raise RegistryError(f"{path} is missing (version {version} was registered from another output home?); "
                                "run the command with --home and --artifacts of the home that registered it.")
        return {"version": int(version), "file": str(path.relative_to(self.artifacts)),
                "sha256": model_version.tags.get("sha256") or file_sha256(path), "run_id": model_version.run_id,
                **(extra or {})}

    def _serve_champion(self, version: int) -> None:
        """best.pth and best.json become version's (a link to its immutable file, never half-written)."""
        link_or_copy(version_file(self.artifacts, version), self.artifacts / "best.pth")
        summary = version_file(self.artifacts, version).with_suffix(".json")
        if summary.is_file():
            copy_atomic(summary, self.artifacts / "best.json")

    # ---- registering ------------------------------------------------------------------------------------

    def register(self, model_file: Path, *, run_id: str, summary: dict[str, Any], tags: dict[str, Any],
                 champion: bool) -> Registered:
        """Register `model_file` (logged under the run's `model/` artifact) as a new version, then make it the
        champion (`champion`, or when there is none yet: the server needs one) or else the challenger."""
        from mlflow.exceptions import MlflowException

        client = self.client
        try:
            client.get_registered_model(REGISTERED_MODEL)
        except MlflowException:
            try:
                client.create_registered_model(REGISTERED_MODEL, description="Deepfake image detector (real/fake).")
            except MlflowException:  # another process created it meanwhile
                pass
        source = f"{self.tracking.artifact_uri(run_id)}/model"
        sha256 = file_sha256(model_file)
        all_tags = {"sha256": sha256, "source_run": run_id, **{k: str(v) for k, v in tags.items() if v is not None}}
        created = client.create_model_version(REGISTERED_MODEL, source=source, run_id=run_id, tags=all_tags)
        version = int(created.version)
        target = version_file(self.artifacts, version)
        link_or_copy(model_file, target)
        write_text_atomic(target.with_suffix(".json"), json.dumps({**summary, "version": version}, indent=2) + "\n")
        state = self.state()
        if champion or not state.get("champion"):
            self.promote(version)
            return Registered(version, CHAMPION, target)
        self.challenge(version)
        return Registered(version, CHALLENGER, target)

    def version_by_sha256(self, sha256: str) -> int | None:
        """The version whose checkpoint has this SHA-256 (the parent of a fine-tune), or None."""
        try:
            versions = self.client.search_model_versions(f"name='{REGISTERED_MODEL}'")
        except Exception:
            return None
        return next((int(v.version) for v in sorted(versions, key=lambda v: int(v.version))
                     if v.tags.get("sha256") == sha256), None)

    # ---- moving the roles ---------------------------------------------------------------------------

    def promote(self, version: int) -> dict[str, Any]:
        """`version` answers: champion alias, best.pth, history; it leaves the challenger slot if it held it."""
        state = self.state()
        entry = self._entry(version)
        self.client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, str(version))
        challenger = state.get("challenger")
        if challenger and int(challenger["version"]) == int(version):
            self._drop_challenger_alias()
            state["challenger"] = None
        self._serve_champion(version)
        history = [int(v) for v in state.get("history") or []]
        if not history or history[-1] != int(version):
            history.append(int(version))
        state.update(registered_model=REGISTERED_MODEL, champion=entry, history=history)
        write_state(self.state_file, state)
        return state

    def challenge(self, version: int, *, mode: str | None = None, fraction: float | None = None) -> dict[str, Any]:
        """`version` goes on trial (shadow or canary; None: the Serve config's challenger settings decide)."""
        if mode is not None and mode not in MODES:
            raise InvalidInput(f"--mode must be one of {', '.join(MODES)}, not {mode!r}.")
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise InvalidInput(f"--fraction must be above 0 and at most 1 (the share the challenger answers), "
                               f"not {fraction}.")
        state = self.state()
        champion = state.get("champion")
        if champion and int(champion["version"]) == int(version):
            raise RegistryError(f"version {version} is the champion already; challenge another version, or roll "
                                "back first.")
        entry = self._entry(version, {"mode": mode, "fraction": fraction})
        self.client.set_registered_model_alias(REGISTERED_MODEL, CHALLENGER, str(version))
        state.update(registered_model=REGISTERED_MODEL, challenger=entry)
        if (state.get("withdrawn") or {}).get("version") == int(version):
            state["withdrawn"] = None  # on trial again: a server that withdrew it takes it back
        write_state(self.state_file, state)
        return state

    def rollback(self) -> dict[str, Any]:
        """The previous champion in the history answers again."""
        state = self.state()
        history = [int(v) for v in state.get("history") or []]
        if len(history) < 2:
            current = f"version {history[-1]} is the only champion so far" if history else "no champion yet"
            raise RegistryError(f"there is no previous champion to roll back to ({current}); promote a version "
                                "with `python experiments/models.py promote V` instead.")
        history.pop()
        previous = history[-1]
        entry = self._entry(previous)
        self.client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, str(previous))
        challenger = state.get("challenger")
        if challenger and int(challenger["version"]) == previous:
            self._drop_challenger_alias()
            state["challenger"] = None
        self._serve_champion(previous)
        state.update(champion=entry, history=history)
        write_state(self.state_file, state)
        return state

    def _drop_challenger_alias(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model_alias(REGISTERED_MODEL, CHALLENGER)
        except MlflowException:  # already gone
            pass

    def reconcile(self) -> list[str]:
        """Bring MLflow in line with a challenger the server withdrew by itself (serving.json says so): drop the
        alias, tag the version with why. What was done, as sentences."""
        state = self.state()
        withdrawn = state.get("withdrawn")
        if not withdrawn or state.get("challenger"):
            return []
        version = int(withdrawn["version"])
        try:
            current = self.client.get_model_version_by_alias(REGISTERED_MODEL, CHALLENGER)
        except Exception:
            return []
        if int(current.version) != version:
            return []
        self._drop_challenger_alias()
        self.client.set_model_version_tag(REGISTERED_MODEL, str(version), "withdrawn",
                                          f"{withdrawn.get('time', now())}: {withdrawn.get('reason', '')}")
        return [f"The server withdrew challenger version {version} at {withdrawn.get('time')}: "
                f"{withdrawn.get('reason')}. Its challenger alias is removed."]

    # ---- reading -------------------------------------------------------------------------------------

    def versions(self) -> list[dict[str, Any]]:
        """Every version, newest first, with its role and the tags a list shows."""
        state = self.state()
        roles = {int(state[r]["version"]): r for r in (CHAMPION, CHALLENGER) if state.get(r)}
        return [self._describe(v, roles) for v in sorted(
            self.client.search_model_versions(f"name='{REGISTERED_MODEL}'"), key=lambda v: -int(v.version))]

    def describe(self, version: int) -> dict[str, Any]:
        """One version: its role, source run, tags, file."""
        state = self.state()
        roles = {int(state[r]["version"]): r for r in (CHAMPION, CHALLENGER) if state.get(r)}
        return self._describe(self._version(version), roles)

    def _describe(self, model_version: Any, roles: dict[int, str]) -> dict[str, Any]:
        version = int(model_version.version)
        path = version_file(self.artifacts, version)
        return {"version": version, "role": roles.get(version), "run_id": model_version.run_id,
                "source": model_version.source, "created": model_version.creation_timestamp,
                "tags": dict(model_version.tags), "aliases": list(model_version.aliases or []),
                "file": str(path) if path.is_file() else None}
