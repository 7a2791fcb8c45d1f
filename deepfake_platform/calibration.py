"""What a fake probability means: the calibration fitted on validation, its error, and the operating points.

A detector's sigmoid is often over-confident. After training (and after a fine-tune) a `Calibration` is
fitted on the validation split's logits and stored in the checkpoint: temperature scaling by default (one
number T, p = sigmoid(logit / T), T chosen to minimise the log loss), isotonic regression as an option (a
non-decreasing piecewise-linear map of the sigmoid, stored as its knots). Both are monotone, so the ranking
and the AUC are unchanged (isotonic may tie scores inside a flat step). A record without one is the
identity: p = sigmoid(logit), as before.

Every threshold is on the calibrated scale: the operating points (`balanced`: Youden's J; `high_precision`:
at most a target false-positive rate; `high_recall`: at most a target false-negative rate) are chosen on
the calibrated validation probabilities, so every door compares a calibrated probability with them.

The expected calibration error is the positive-class variant over 15 equal-width bins, left-closed
([0, 1/15), ..., [14/15, 1]): the share-weighted mean of |fake rate - mean fake probability| per bin.
Pure numpy / scipy / scikit-learn; no torch, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from scipy.special import logit as logit_of
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import log_loss

from deepfake_platform.errors import InvalidInput
from deepfake_platform.metrics import choose_threshold, error_rates, threshold_for_fnr, threshold_for_fpr

METHODS = ("temperature", "isotonic", "none")
OPERATING_POINTS = ("balanced", "high_precision", "high_recall")
BINS = 15
# The temperature is searched between e^-6 and e^6 (0.0025 to 403): wider is never a calibration.
_LOG_T_BOUNDS = (-6.0, 6.0)


@dataclass(frozen=True)
class Calibration:
    """A fitted map from a detector's logit to a calibrated fake probability; `identity` is the plain sigmoid."""

    method: str = "identity"  # identity | temperature | isotonic
    temperature: float = 1.0
    # isotonic: the knots of the piecewise-linear map from sigmoid(logit) to the calibrated probability
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()

    def apply(self, logits: Any) -> np.ndarray:
        """Calibrated fake probabilities (float64) for raw logits."""
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "temperature":
            return expit(z / self.temperature)
        if self.method == "isotonic":
            # np.interp clips outside the knots, as IsotonicRegression(out_of_bounds="clip") does.
            return np.interp(expit(z), self.knots_x, self.knots_y)
        return expit(z)

    def raw_logit(self, probability: float | None) -> float | None:
        """The detector's raw logit behind a calibrated probability: exact for identity and temperature; None for
        isotonic, whose flat steps map many logits to one probability (and for None)."""
        if probability is None or self.method == "isotonic" or not np.isfinite(probability):
            return None
        z = float(logit_of(np.float64(probability)))  # infinite at 0 and 1: a saturated float has no logit left
        return z * self.temperature if np.isfinite(z) else None

    def to_dict(self) -> dict[str, Any]:
        """Plain floats and lists: storable in a weights_only checkpoint and in JSON."""
        return {"method": self.method, "temperature": float(self.temperature),
                "knots_x": [float(x) for x in self.knots_x], "knots_y": [float(y) for y in self.knots_y]}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Calibration:
        """The calibration a record stores; an empty or missing one (a checkpoint from before) is the identity."""
        if not data:
            return cls()
        return cls(method=str(data.get("method", "identity")), temperature=float(data.get("temperature", 1.0)),
                   knots_x=tuple(float(x) for x in data.get("knots_x", ())),
                   knots_y=tuple(float(y) for y in data.get("knots_y", ())))


def fit_calibration(labels: Any, logits: Any, method: str = "temperature") -> Calibration:
    """The calibration of `method` fitted on validation logits and labels (1 = fake); the identity for `none`,
    or when the validation set holds a single class (nothing to calibrate against)."""
    if method not in METHODS:
        raise InvalidInput(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}.")
    y = np.asarray(labels).astype(int).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    if method == "none" or len(np.unique(y)) < 2:
        return Calibration()
    if method == "temperature":
        found = minimize_scalar(lambda log_t: log_loss(y, expit(z / np.exp(log_t)), labels=[0, 1]),
                                bounds=_LOG_T_BOUNDS, method="bounded")
        return Calibration("temperature", temperature=float(np.exp(found.x)))
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(expit(z), y)
    return Calibration("isotonic", knots_x=tuple(isotonic.X_thresholds_.tolist()),
                       knots_y=tuple(isotonic.y_thresholds_.tolist()))


def _bins(probabilities: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((probabilities * bins).astype(int), bins - 1)


def reliability(labels: Any, probabilities: Any, bins: int = BINS) -> list[dict[str, float]]:
    """Per equal-width bin: its bounds, how many predictions fall in it, their mean fake probability and the
    share of them that are fake (NaN for an empty bin): the points of a reliability diagram."""
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    index = _bins(p, bins)
    rows = []
    for k in range(bins):
        inside = index == k
        rows.append({"lower": k / bins, "upper": (k + 1) / bins, "count": int(inside.sum()),
                     "mean_probability": float(p[inside].mean()) if inside.any() else float("nan"),
                     "fake_rate": float(y[inside].mean()) if inside.any() else float("nan")})
    return rows


def expected_calibration_error(labels: Any, probabilities: Any, bins: int = BINS) -> float:
    """Positive-class ECE over `bins` equal-width bins: sum over bins of (share of predictions) x |fake rate -
    mean fake probability|."""
    rows = reliability(labels, probabilities, bins)
    total = sum(row["count"] for row in rows)
    if total == 0:
        return float("nan")
    return float(sum(row["count"] / total * abs(row["fake_rate"] - row["mean_probability"])
                     for row in rows if row["count"]))


def choose_operating_points(labels: Any, probabilities: Any, *, target_fpr: float = 0.01,
                            target_fnr: float = 0.01) -> dict[str, dict[str, float]]:
    """The three named thresholds on (calibrated validation) probabilities, with the rates each reaches there:
    `balanced` (Youden's J), `high_precision` (false-positive rate at most `target_fpr`, as many fakes caught as
    that allows), `high_recall` (false-negative rate at most `target_fnr`, as few reals flagged as that allows)."""
    for name, target in (("target_fpr", target_fpr), ("target_fnr", target_fnr)):
        if not 0.0 <= target < 1.0:
            raise InvalidInput(f"calibration.{name} must be a rate in [0, 1), got {target}.")
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if len(np.unique(y)) < 2:
        return {}
    chosen = {"balanced": (choose_threshold(y, p), {}),
              "high_precision": (threshold_for_fpr(y, p, target_fpr), {"target_fpr": float(target_fpr)}),
              "high_recall": (threshold_for_fnr(y, p, target_fnr), {"target_fnr": float(target_fnr)})}
    points = {}
    for name, (threshold, target) in chosen.items():
        fpr, fnr = error_rates(y, p, threshold)
        points[name] = {"threshold": float(threshold), **target, "val_fpr": fpr, "val_fnr": fnr}
    return points


def video_thresholds(labels: Any, probabilities: Any, points: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each operating point's threshold chosen again on videos (each the mean of its frames' calibrated
    probabilities), with the same targets."""
    chosen = choose_operating_points(labels, probabilities,
                                     target_fpr=points.get("high_precision", {}).get("target_fpr", 0.01),
                                     target_fnr=points.get("high_recall", {}).get("target_fnr", 0.01))
    return {name: point["threshold"] for name, point in chosen.items()}


def summary(labels: Any, logits: Any, calibration: Calibration) -> dict[str, Any]:
    """ECE and reliability bins before (plain sigmoid) and after calibration, for the report."""
    before, after = expit(np.asarray(logits, dtype=np.float64)), calibration.apply(logits)
    return {"ece_before": expected_calibration_error(labels, before), "ece_after": expected_calibration_error(labels, after),
            "reliability_before": reliability(labels, before), "reliability_after": reliability(labels, after),
            "n": int(np.asarray(labels).size)}


def plot_reliability(panels: list[tuple[str, Any, Any]], path: Any, title: str) -> Any:
    """A reliability diagram (mean fake probability against fake rate per bin, with the diagonal) for each
    (label, labels, probabilities), each with its ECE in the legend; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for label, labels, probabilities in panels:
        rows = [row for row in reliability(labels, probabilities) if row["count"]]
        ax.plot([row["mean_probability"] for row in rows], [row["fake_rate"] for row in rows], marker="o",
                label=f"{label} (ECE {expected_calibration_error(labels, probabilities):.4f})")
    ax.set(xlabel=f"mean fake probability ({BINS} equal-width bins)", ylabel="share of fakes", title=title,
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
