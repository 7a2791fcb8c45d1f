"""A running server follows the model registry: which model each replica holds, and the challenger's trial.

`ModelWatcher` (in each Detector replica) reads the serving state (deepfake_platform/serving_state.py) every
`state_poll_s` and, when its role's version changes, loads the new file in a background thread and swaps it
in: requests keep being answered by the old model until the new one is ready, so a promote, a challenge or
a rollback drops nothing and needs no restart. Each answer carries the identity of the model that gave it.

`ChallengerTrial` (in the ingress) decides which requests a challenger sees (shadow: all of them, after the
champion's answer is sent; canary: a share of them, answered by the challenger), compares the two models'
answers, and withdraws a challenger that crosses one of the configured limits (error rate, p95 latency,
drift against its validation scores, disagreement with the champion), writing why to the serving state,
the log and GET /monitoring.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_platform import serving_state
from deepfake_platform.monitoring import psi
from serve.settings import ChallengerArgs

logger = logging.getLogger("ray.serve")
LATENCY_WINDOW = 1000


class ModelNotReady(RuntimeError):
    """This replica holds no model for its role yet (a challenger being loaded, or none registered)."""


class ModelFailed(RuntimeError):
    """This replica's model for its role could not be loaded (a corrupt or incompatible file)."""


@dataclass(frozen=True)
class Loaded:
    """A replica's model: the member that scores, what answers say about it, and how its probabilities are
    read (its thresholds per operating point, its calibration: `model_scoring`)."""

    member: Any
    identity: dict[str, Any]
    key: tuple[Any, ...]
    scoring: dict[str, Any] = field(default_factory=dict)


def model_scoring(record: Any, calibration: Any = None) -> dict[str, Any]:
    """The thresholds (picture, video) of every operating point a record chose on validation, and the
    calibration that gives back the raw logit: what the ingress needs to label this model's probabilities,
    whichever version gave them."""
    from deepfake_platform.calibration import OPERATING_POINTS
    from deepfake_platform.checkpoints import CheckpointError, operating_thresholds

    thresholds = {}
    for point in OPERATING_POINTS:
        try:
            thresholds[point] = list(operating_thresholds(record, point))
        except CheckpointError:
            continue  # a record from before operating points knows `balanced` only
    return {"thresholds": thresholds, "calibration": calibration.to_dict() if calibration is not None else None}


class ModelWatcher:
    """The model of one role ("champion" or "challenger"), kept as the serving state says.

    Without a serving state (`state` empty or no file), the champion is `path`, loaded once, and a challenger
    replica holds nothing. A model that fails to load is never swapped in: the champion keeps answering with
    the model it had, and a challenger replica reports the error on every call (the ingress counts it).
    """

    def __init__(self, path: str, *, role: str, state: str, load: Any, poll_s: float = 1.0):
        self.static = Path(path)
        self.role = role
        self.state = Path(state) if state else None
        self.load_member = load
        self.poll_s = poll_s
        self.loaded: Loaded | None = None
        self.error: str | None = None
        self.stamp: tuple[int, ...] | None = None
        self.tried: tuple[Any, ...] | None = None  # the model last loaded or tried, by version and hash
        self.lock = threading.Lock()
        self.refresh()  # the first model is loaded before the replica reports ready
        if role == "champion" and self.loaded is None:
            raise RuntimeError(self.error)  # nothing to answer with: let Serve report the replica as failed
        if self.state is not None:
            threading.Thread(target=self._watch, name=f"{role}-model-watcher", daemon=True).start()

    def current(self) -> Loaded:
        """The model to score with now (one snapshot per batch), or ModelNotReady with why."""
        loaded, error = self.loaded, self.error
        if loaded is None:
            if error:
                raise ModelFailed(error)
            raise ModelNotReady(f"this replica holds no {self.role} model (none registered, or loading).")
        return loaded

    def _watch(self) -> None:
        while True:
            time.sleep(self.poll_s)
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a watcher that dies would freeze the model: log and go on
                logger.exception("reading the serving state %s failed", self.state)

    def _stamp(self) -> tuple[int, ...] | None:
        try:
            stat = os.stat(self.state) if self.state is not None else None
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino) if stat else None

    def refresh(self) -> None:
        """Load the model the serving state names for this role, if it is not the one held (or tried)."""
        with self.lock:
            stamp = self._stamp()
            if self.tried is not None and stamp == self.stamp:
                return
            self.stamp = stamp
            state = serving_state.read_state(self.state, strict=False) if stamp is not None else None
            wanted = serving_state.slot(state, self.role, self.state) if state else None
            if wanted is None:
                if self.role != "champion":
                    self.tried = ("none",)
                    self._swap(None, None)
                    return
                key: tuple[Any, ...] = ("static", str(self.static))
                path, version, registered = self.static, None, None
            else:
                key = ("registered", wanted.version, wanted.sha256)
                path, version, registered = wanted.path, wanted.version, state.get("registered_model")
            if key == self.tried:
                return
            self.tried = key
            if self.role != "champion":
                self._swap(None, None)  # a replaced challenger answers nothing more while the next one loads
            try:
                member = self.load_member(str(path))
            except Exception as err:  # noqa: BLE001 - any unloadable file: keep serving, say why
                what = f"version {version}" if version is not None else str(path)
                message = f"the {self.role} ({what}) could not be loaded: {err}"
                logger.error(message)
                if self.role != "champion" or self.loaded is None:
                    self._swap(None, message)
                return
            info = member.info.to_dict()
            identity = {"name": info["name"], "checkpoint": info["checkpoint"], "sha256": info["sha256"],
                        "registered_model": registered, "version": version,
                        "role": self.role if version is not None else None}
            scoring = model_scoring(member.record, getattr(member, "calibration", None))
            self._swap(Loaded(member, identity, key, scoring), None)
            if version is not None:
                logger.info("the %s is now version %s (%s)", self.role, version, path)

    def _swap(self, loaded: Loaded | None, error: str | None) -> None:
        # One assignment each: a batch already running keeps the member it read.
        self.error = error
        self.loaded = loaded


# ---- the ingress side: which requests the challenger sees, and how it is doing ----------------------


@dataclass(frozen=True)
class Arm:
    """The challenger a request meets: its version, and whether it answers (canary) or only shadows."""

    version: int
    canary: bool


@dataclass
class Comparison:
    """What the trial of one challenger version has seen so far."""

    version: int
    mode: str
    fraction: float
    calls: int = 0
    errors: int = 0
    compared: int = 0
    agreements: int = 0
    abs_delta: float = 0.0
    last_error: str | None = None
    champion_latency_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    challenger_latency_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    champion_scores: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    challenger_scores: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    corrections: int = 0
    champion_correct: int = 0
    challenger_correct: int = 0
    answered: int = 0


def _p(values: Any, q: float) -> float | None:
    return float(np.percentile(list(values), q)) if len(values) else None


class ChallengerTrial:
    """The challenger named by the serving state, on trial against the champion in one ingress replica."""

    def __init__(self, state: str, args: ChallengerArgs, *, enabled: bool, poll_s: float = 1.0):
        self.state = Path(state) if state and enabled else None
        self.args = args
        self.poll_s = poll_s
        self.lock = threading.Lock()
        self.read_at = 0.0
        self.stamp: tuple[int, ...] | None = None
        self.slot: serving_state.Slot | None = None
        self.trial: Comparison | None = None
        self.withdrawn: dict[str, Any] | None = None
        self.withdrawn_versions: set[int] = set()
        self.credit = 0.0
        self.skipped = 0  # requests not compared: too many comparisons were still running
        # Validation scores of each version (from its replica), for drift against validation.
        self.references: dict[int | None, list[float]] = {}
        self.champion_version: int | None = None

    # ---- following the serving state ----

    def refresh(self) -> None:
        """Re-read the serving state at most every `poll_s` (a stat per request otherwise)."""
        if self.state is None or time.monotonic() - self.read_at < self.poll_s:
            return
        self.read_at = time.monotonic()
        try:
            stat = os.stat(self.state)
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self.stamp:
            return
        self.stamp = stamp
        state = serving_state.read_state(self.state, strict=False) if stamp else None
        wanted = serving_state.slot(state, "challenger", self.state) if state else None
        withdrawn = (state or {}).get("withdrawn")
        with self.lock:
            if isinstance(withdrawn, dict):
                self.withdrawn = self.withdrawn or withdrawn
            if wanted is not None and wanted.version in self.withdrawn_versions:
                if not isinstance(withdrawn, dict) or withdrawn.get("version") != wanted.version:
                    # Challenged again (experiments/models.py clears the withdrawal): a new trial.
                    self.withdrawn_versions.discard(wanted.version)
                    self.withdrawn = None
                else:
                    wanted = None
            self.slot = wanted
            if wanted is None:
                self.trial = None
                return
            mode = wanted.mode or self.args.mode
            fraction = self.args.fraction if wanted.fraction is None else float(wanted.fraction)
            if self.trial is None or self.trial.version != wanted.version:
                self.trial = Comparison(wanted.version, mode, fraction)
                self.credit = 0.0
                logger.info("challenger version %s on trial (%s%s)", wanted.version, mode,
                            f", {fraction:.0%} of requests" if mode == "canary" else "")
            else:
                self.trial.mode, self.trial.fraction = mode, fraction

    def choose(self) -> Arm | None:
        """Whether this request meets the challenger, and how. A canary's share is exact: every request adds
        `fraction` to a credit, and one whose credit reaches 1 is answered by the challenger."""
        self.refresh()
        with self.lock:
            trial = self.trial
            if trial is None:
                return None
            if trial.mode != "canary":
                return Arm(trial.version, canary=False)
            self.credit += trial.fraction
            if self.credit >= 1.0 - 1e-9:  # floating-point sums of 0.3 fall just short of 1
                self.credit -= 1.0
                return Arm(trial.version, canary=True)
            return None  # a canary's other requests are the champion's alone

    # ---- what each request showed ----

    def record(self, arm: Arm, *, champion: dict[str, Any] | None, challenger: dict[str, Any] | None,
               error: str | None) -> str | None:
        """Count one request both models saw (or the challenger failed on); the reason to withdraw, if any."""
        with self.lock:
            trial = self.trial
            if trial is None or trial.version != arm.version:
                return None
            trial.calls += 1
            if arm.canary and error is None:
                trial.answered += 1
            if error is not None:
                trial.errors += 1
                trial.last_error = error
            if champion is not None:
                trial.champion_latency_ms.append(champion["latency_ms"])
                if champion["fake_probability"] is not None:
                    trial.champion_scores.append(champion["fake_probability"])
            if challenger is not None:
                trial.challenger_latency_ms.append(challenger["latency_ms"])
                if challenger["fake_probability"] is not None:
                    trial.challenger_scores.append(challenger["fake_probability"])
            if champion is not None and challenger is not None:
                trial.compared += 1
                trial.agreements += champion["label"] == challenger["label"]
                if champion["fake_probability"] is not None and challenger["fake_probability"] is not None:
                    trial.abs_delta += abs(champion["fake_probability"] - challenger["fake_probability"])
            return self._crossed(trial)

    def _crossed(self, trial: Comparison) -> str | None:
        """The first limit the trial has crossed, as a sentence, once it has seen enough requests."""
        limits = self.args.limits
        if trial.calls < limits.min_requests:
            return None
        error_rate = trial.errors / trial.calls
        if error_rate > limits.max_error_rate:
            return (f"error rate {error_rate:.0%} over {trial.calls} requests is above the limit of "
                    f"{limits.max_error_rate:.0%} (last error: {trial.last_error})")
        p95 = _p(trial.challenger_latency_ms, 95)
        if p95 is not None and len(trial.challenger_latency_ms) >= limits.min_requests and p95 > limits.max_p95_latency_ms:
            return f"p95 latency {p95:.0f} ms is above the limit of {limits.max_p95_latency_ms:.0f} ms"
        reference = self.references.get(trial.version)
        if reference and len(trial.challenger_scores) >= limits.min_requests:
            drift = psi(reference, list(trial.challenger_scores))
            if drift > limits.max_psi:
                return f"drift against its validation scores (PSI {drift:.3f}) is above the limit of {limits.max_psi:g}"
        if trial.compared >= limits.min_requests:
            disagreement = 1.0 - trial.agreements / trial.compared
            if disagreement > limits.max_disagreement:
                return (f"it disagrees with the champion on {disagreement:.0%} of {trial.compared} requests, above "
                        f"the limit of {limits.max_disagreement:.0%}")
        return None

    def withdraw(self, version: int, reason: str) -> bool:
        """Stop sending requests to challenger `version`, and record why in the serving state; False when it
        was already withdrawn (several requests may cross a limit at once)."""
        with self.lock:
            if version in self.withdrawn_versions:
                return False
            self.withdrawn_versions.add(version)
            self.withdrawn = {"version": version, "reason": reason, "time": serving_state.now()}
            if self.trial is not None and self.trial.version == version:
                self.trial = None
            self.slot = None
        logger.warning("challenger version %s withdrawn: %s", version, reason)
        if self.state is not None:
            try:
                serving_state.withdraw(self.state, version, reason)
            except Exception as err:  # noqa: BLE001 - withdrawn here all the same; the file only records it
                logger.error("could not record the withdrawal in %s: %s", self.state, err)
        return True

    def correction(self, answer: dict[str, Any], label: str) -> None:
        """A correction of an answer the challenger also gave: both models' accuracy on it."""
        shadow = answer.get("shadow") or {}
        champion, challenger = shadow.get("champion") or {}, shadow.get("challenger") or {}
        if not champion or challenger.get("error") or "label" not in challenger:
            return  # no comparison (or the challenger failed on it): nothing to score both models on
        with self.lock:
            trial = self.trial
            if trial is None or trial.version != challenger.get("version"):
                return
            trial.corrections += 1
            trial.champion_correct += champion.get("label") == label
            trial.challenger_correct += challenger["label"] == label

    # ---- GET /monitoring ----

    def snapshot(self) -> dict[str, Any] | None:
        """The comparison of champion and challenger so far, or None without a challenger."""
        self.refresh()
        with self.lock:
            trial, withdrawn = self.trial, self.withdrawn
            if trial is None:
                return {"challenger": None, "withdrawn": withdrawn} if withdrawn else None
            reference = self.references.get(trial.version)
            challenger_scores = list(trial.challenger_scores)
            out = {
                "challenger": {"version": trial.version, "mode": trial.mode,
                               "fraction": trial.fraction if trial.mode == "canary" else None},
                "requests_seen": trial.calls,
                "compared": trial.compared,
                "answered_by_challenger": trial.answered,
                "not_compared": self.skipped,
                "agreement": trial.agreements / trial.compared if trial.compared else None,
                "mean_abs_delta": trial.abs_delta / trial.compared if trial.compared else None,
                "corrections": trial.corrections,
                "champion": {
                    "latency_p50_ms": _p(trial.champion_latency_ms, 50),
                    "latency_p95_ms": _p(trial.champion_latency_ms, 95),
                    "accuracy_on_corrections": (trial.champion_correct / trial.corrections
                                                if trial.corrections else None),
                    "mean_fake_probability": float(np.mean(trial.champion_scores)) if trial.champion_scores else None,
                    "psi_vs_validation": (psi(self.references[self.champion_version], list(trial.champion_scores))
                                          if self.references.get(self.champion_version) and trial.champion_scores
                                          else None),
                },
                "challenger_model": {
                    "errors": trial.errors,
                    "error_rate": trial.errors / trial.calls if trial.calls else None,
                    "last_error": trial.last_error,
                    "latency_p50_ms": _p(trial.challenger_latency_ms, 50),
                    "latency_p95_ms": _p(trial.challenger_latency_ms, 95),
                    "accuracy_on_corrections": (trial.challenger_correct / trial.corrections
                                                if trial.corrections else None),
                    "mean_fake_probability": float(np.mean(challenger_scores)) if challenger_scores else None,
                    "psi_vs_validation": psi(reference, challenger_scores) if reference and challenger_scores else None,
                },
                "limits": self.args.limits.to_dict(),
                "withdrawn": withdrawn,
            }
        return out
