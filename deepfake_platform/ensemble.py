"""Ensembles: several detectors' fake probabilities combined into one, fitted and thresholded on validation.

Three combiners, pure functions over an (images x members) matrix of fake probabilities: `mean`,
`weighted` (weights from the config) and `stacking` (a logistic regression on the members' logits,
fitted on validation predictions and stored as plain coef/intercept lists). Members are platform
checkpoints of any registered detector, or a frequency-domain detector saved by
`experiments/build_ensemble.py`. An ensemble spec (members with their SHA-256, combiner, threshold)
is a weights_only-loadable `.pth` dict that `serve/` deploys.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from PIL import Image

from deepfake_platform.checkpoints import CheckpointError, file_sha256, save_checkpoint
from deepfake_platform.config import ConfigError, apply_overrides, build_dataclass
from deepfake_platform.inference import ModelInfo, Predictor

COMBINERS = ("mean", "weighted", "stacking")
# Probabilities are clipped this far from 0 and 1 before taking logits, so a saturated member stays finite.
_EPS = 1e-6


def _logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _matrix(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"member probabilities must be a 2-D (images, members) array, got shape {p.shape}.")
    return p


def mean_combine(probabilities: np.ndarray) -> np.ndarray:
    """The mean of the members' fake probabilities, per image (rows: images, columns: members)."""
    return _matrix(probabilities).mean(axis=1)


def weighted_combine(probabilities: np.ndarray, weights: list[float]) -> np.ndarray:
    """The weighted mean of the members' fake probabilities; weights are normalised to sum to 1."""
    p = _matrix(probabilities)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (p.shape[1],):
        raise ValueError(f"{w.size} weights for {p.shape[1]} members: give one weight per member.")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"ensemble weights must be non-negative with a positive sum, got {w.tolist()}.")
    return p @ (w / w.sum())


def stacking_combine(probabilities: np.ndarray, coef: list[float], intercept: float) -> np.ndarray:
    """A fitted logistic regression over the members' logits: sigmoid(logit(p) @ coef + intercept)."""
    p = _matrix(probabilities)
    c = np.asarray(coef, dtype=np.float64)
    if c.shape != (p.shape[1],):
        raise ValueError(f"{c.size} stacking coefficients for {p.shape[1]} members.")
    z = _logit(p) @ c + float(intercept)
    return 1.0 / (1.0 + np.exp(-z))


def fit_stacking(probabilities: np.ndarray, labels: np.ndarray) -> tuple[list[float], float]:
    """Fit the stacking logistic regression on validation predictions; returns (coef, intercept)."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels).astype(int).ravel()
    if len(np.unique(labels)) < 2:
        raise ValueError("stacking needs both real and fake images in the validation split.")
    model = LogisticRegression(C=1.0, max_iter=1000).fit(_logit(_matrix(probabilities)), labels)
    return [float(c) for c in model.coef_[0]], float(model.intercept_[0])


@dataclass
class Combiner:
    """How member probabilities become the ensemble's: the kind plus its fitted or configured parameters."""

    kind: str = "mean"
    weights: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in COMBINERS:
            raise ValueError(f"unknown combiner {self.kind!r}; choose one of {', '.join(COMBINERS)}.")

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """The ensemble's fake probability for each row of member probabilities."""
        if self.kind == "weighted":
            return weighted_combine(probabilities, self.weights)
        if self.kind == "stacking":
            return stacking_combine(probabilities, self.coef, self.intercept)
        return mean_combine(probabilities)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and floats: storable in a weights_only checkpoint and in JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Combiner:
        """The inverse of to_dict."""
        return cls(
            kind=str(data["kind"]),
            weights=[float(w) for w in data.get("weights", [])],
            coef=[float(c) for c in data.get("coef", [])],
            intercept=float(data.get("intercept", 0.0)),
        )


# ---- members -------------------------------------------------------------------------------------


class Member(Protocol):
    """What an ensemble needs from a detector: its identity and fake probabilities for PIL images."""

    info: ModelInfo

    def predict_images(self, images: list[Image.Image]) -> np.ndarray: ...


def read_member_file(path: str | Path) -> dict[str, Any]:
    """Read a member .pth with weights_only=True, memory-mapped (cheap even for large checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"detector file {path} does not exist. Train one with `python experiments/reproduce_baseline.py` "
            "(or `make run`), or fix the path in the config."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types here; to the user they all mean the same
        raise CheckpointError(
            f"{path} could not be read as a plain-tensor .pth (corrupt, truncated, or holding Python objects "
            f"that weights_only refuses): {err}"
        ) from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict.")
    return payload


def member_kind(payload: dict[str, Any]) -> str:
    """`frequency` for a saved frequency detector, `ensemble` for an ensemble spec, else `torch`."""
    return str(payload.get("kind", "torch"))


class FrequencyMember:
    """A fitted FrequencyDetector scoring PIL images like Predictor does."""

    def __init__(self, detector: Any, info: ModelInfo):
        self.detector = detector
        self.info = info

    @classmethod
    def load(cls, path: str | Path) -> FrequencyMember:
        """Load a frequency detector saved by save_frequency_member."""
        from models import FrequencyDetector

        payload = read_member_file(path)
        if member_kind(payload) != "frequency":
            raise CheckpointError(f"{path} is not a frequency detector file.")
        # image_size 0: the spectrum is taken over the whole decoded image, at its own size.
        info = ModelInfo(name="frequency", checkpoint=Path(path).name, sha256=file_sha256(path),
                         threshold=float(payload["val_threshold"]), image_size=0,
                         val_auc=float(payload["val_auc"]), epoch=0)
        return cls(FrequencyDetector.from_state(payload["state"]), info)

    def predict_images(self, images: list[Image.Image]) -> np.ndarray:
        """Fake probabilities for RGB PIL images."""
        if not images:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self.detector.predict_proba(list(images)), dtype=np.float32).reshape(-1)


def save_frequency_member(detector: Any, path: str | Path, val_threshold: float, val_auc: float) -> Path:
    """Save a fitted FrequencyDetector as a weights_only-loadable .pth member file."""
    payload = {"kind": "frequency", "state": detector.to_state(), "val_threshold": float(val_threshold),
               "val_auc": float(val_auc)}
    return save_checkpoint(payload, path)


def load_member(path: str | Path, precision: str = "auto") -> Member:
    """Load any member file: a platform checkpoint (Predictor) or a saved frequency detector."""
    kind = member_kind(read_member_file(path))
    if kind == "frequency":
        return FrequencyMember.load(path)
    if kind == "ensemble":
        raise CheckpointError(f"{path} is an ensemble spec, not a single detector: deploy it as `ensemble`.")
    return Predictor(path, precision=precision)


# ---- the ensemble spec ---------------------------------------------------------------------------


@dataclass
class MemberSpec:
    """One member of a built ensemble: a name, its file and the file's SHA-256 when the ensemble was fitted."""

    name: str
    path: str
    sha256: str


@dataclass
class EnsembleSpec:
    """A built ensemble: members, combiner, the validation-chosen threshold and validation AUC."""

    name: str
    members: list[MemberSpec]
    combiner: Combiner
    threshold: float
    val_auc: float

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """The combiner applied to member probabilities (columns in member order)."""
        return self.combiner.apply(probabilities)


def save_ensemble(spec: EnsembleSpec, path: str | Path) -> Path:
    """Write the spec as a weights_only-loadable .pth; member paths are stored relative to its folder."""
    path = Path(path).resolve()
    members = [{"name": m.name, "path": os.path.relpath(Path(m.path).resolve(), path.parent), "sha256": m.sha256}
               for m in spec.members]
    payload = {"kind": "ensemble", "name": spec.name, "members": members, "combiner": spec.combiner.to_dict(),
               "threshold": float(spec.threshold), "val_auc": float(spec.val_auc)}
    return save_checkpoint(payload, path)


def load_ensemble(path: str | Path) -> EnsembleSpec:
    """Read an ensemble spec and check that every member file is there, unchanged since it was fitted."""
    path = Path(path).resolve()
    if not path.is_file():
        raise CheckpointError(
            f"ensemble spec {path} does not exist. Build one with "
            "`python experiments/build_ensemble.py --config experiments/configs/ensemble.yaml`."
        )
    payload = read_member_file(path)
    if member_kind(payload) != "ensemble":
        raise CheckpointError(f"{path} is not an ensemble spec (build one with experiments/build_ensemble.py).")
    members = []
    for entry in payload["members"]:
        member_path = (path.parent / entry["path"]).resolve()
        if not member_path.is_file():
            raise CheckpointError(
                f"ensemble member {entry['name']} ({member_path}) is missing; restore it or rebuild the ensemble "
                "with experiments/build_ensemble.py."
            )
        if file_sha256(member_path) != entry["sha256"]:
            raise CheckpointError(
                f"ensemble member {entry['name']} ({member_path}) changed since the ensemble was fitted; its "
                "combiner and threshold no longer apply. Rebuild with experiments/build_ensemble.py."
            )
        members.append(MemberSpec(name=entry["name"], path=str(member_path), sha256=entry["sha256"]))
    combiner = Combiner.from_dict(payload["combiner"])
    return EnsembleSpec(name=str(payload["name"]), members=members, combiner=combiner,
                        threshold=float(payload["threshold"]), val_auc=float(payload["val_auc"]))


# ---- the build config ----------------------------------------------------------------------------


@dataclass
class MemberConfig:
    """A member entry of the ensemble config: a checkpoint path or a glob (a sweep's top-k)."""

    checkpoint: str = ""
    # Empty: the detector's registry name (with a number when several match).
    name: str = ""
    # For a glob: keep the k checkpoints with the best validation AUC; 0 keeps every match.
    top_k: int = 0


@dataclass
class FrequencyConfig:
    """Whether to train the frequency-domain detector on the training split and add it as a member."""

    enabled: bool = False
    name: str = "frequency"


@dataclass
class EnsembleOutputConfig:
    """Where build_ensemble.py writes: runs/<name>/ensemble/, artifacts/<name>.pth, the Serve config."""

    runs_dir: str = "runs"
    artifacts_dir: str = "artifacts"
    serve_config: str = "serve.ensemble.config"


@dataclass
class EnsembleConfig:
    """Everything build_ensemble.py needs."""

    name: str = "ensemble"
    # Empty: the embedded default data set (as for training).
    data_root: str = ""
    members: list[Any] = field(default_factory=list)
    frequency: FrequencyConfig = field(default_factory=FrequencyConfig)
    combiner: str = "stacking"
    # For the weighted combiner: member name -> weight (names as in the comparison table).
    weights: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    precision: str = "auto"
    output: EnsembleOutputConfig = field(default_factory=EnsembleOutputConfig)

    def member_configs(self) -> list[MemberConfig]:
        """The members section, each entry checked against MemberConfig."""
        return [build_dataclass(MemberConfig, entry, "ensemble config", prefix=f"members[{i}].")
                for i, entry in enumerate(self.members)]


def load_ensemble_config(path: str | Path, overrides: list[str] | None = None) -> EnsembleConfig:
    """Load and check an ensemble YAML config, with `key=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ensemble config {path} does not exist; see experiments/configs/ensemble.yaml.")
    data = yaml.safe_load(path.read_text()) or {}
    data = apply_overrides(data, overrides or [])
    # members is a list of mappings: given its own type here, each entry is checked by member_configs().
    members = data.pop("members", [])
    if not isinstance(members, list):
        raise ConfigError(f"{path}: members must be a list of {{checkpoint, name, top_k}} entries.")
    config = build_dataclass(EnsembleConfig, data, str(path))
    config.members = members
    config.member_configs()
    if config.combiner not in COMBINERS:
        raise ConfigError(f"{path}: combiner must be one of {', '.join(COMBINERS)}, got {config.combiner!r}.")
    if not members and not config.frequency.enabled:
        raise ConfigError(f"{path}: the ensemble has no members; list checkpoints or enable frequency.")
    return config


def safe_name(text: str) -> str:
    """A member name usable as a Serve deployment name and a table column: letters, digits, _ and -."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "member"


def resolve_members(configs: list[MemberConfig]) -> list[tuple[str, Path]]:
    """Expand paths and globs into unique (name, path) pairs; a glob keeps its top_k by validation AUC."""
    resolved: list[tuple[str, Path]] = []
    for entry in configs:
        if not entry.checkpoint:
            raise ConfigError("every member needs a checkpoint path (or a glob).")
        if glob.has_magic(entry.checkpoint):
            paths = [Path(p) for p in sorted(glob.glob(entry.checkpoint))]
            if not paths:
                raise ConfigError(f"no checkpoint matches {entry.checkpoint}; train the sweep first or fix the glob.")
            paths.sort(key=lambda p: -float(read_member_file(p).get("val_auc", float("-inf"))))
            if entry.top_k:
                paths = paths[: entry.top_k]
        else:
            paths = [Path(entry.checkpoint)]
        for i, path in enumerate(paths):
            payload = read_member_file(path)
            base = entry.name or (payload["detector"]["name"] if member_kind(payload) == "torch" else member_kind(payload))
            resolved.append((safe_name(f"{base}_{i + 1}" if len(paths) > 1 else base), path))
    names = [name for name, _ in resolved]
    unique = [f"{name}_{names[:i].count(name) + 1}" if names.count(name) > 1 else name
              for i, name in enumerate(names)]
    return list(zip(unique, (path for _, path in resolved), strict=True))


# ---- fitting and comparing -----------------------------------------------------------------------


def score_members(members: dict[str, Member], samples: list[tuple[str, int]],
                  batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(images x members) fake probabilities and the labels; each image is decoded once for all members."""
    from deepfake_platform.data import load_image

    if not samples:
        raise ValueError("the split has no readable images to score.")
    rows = []
    for start in range(0, len(samples), batch_size):
        images = [load_image(path) for path, _ in samples[start:start + batch_size]]
        rows.append(np.stack([member.predict_images(images) for member in members.values()], axis=1))
    return np.concatenate(rows).astype(np.float64), np.array([label for _, label in samples], dtype=np.int64)


def fit_combiner(kind: str, names: list[str], val_probabilities: np.ndarray, val_labels: np.ndarray,
                 weights: dict[str, float] | None = None) -> Combiner:
    """The combiner of `kind`: weighted takes one weight per member name, stacking fits on validation."""
    if kind == "weighted":
        weights = weights or {}
        unknown = sorted(set(weights) - set(names))
        missing = [name for name in names if name not in weights]
        if unknown or missing:
            raise ConfigError(
                f"weights must name every member exactly: members are {', '.join(names)}"
                + (f"; unknown {', '.join(unknown)}" if unknown else "")
                + (f"; missing {', '.join(missing)}" if missing else "") + "."
            )
        combiner = Combiner("weighted", weights=[float(weights[name]) for name in names])
        combiner.apply(val_probabilities)  # checks the weights now, not at serving time
        return combiner
    if kind == "stacking":
        coef, intercept = fit_stacking(val_probabilities, val_labels)
        return Combiner("stacking", coef=coef, intercept=intercept)
    return Combiner(kind)


def train_frequency_member(train: list[tuple[str, int]], val: list[tuple[str, int]], path: str | Path) -> Path:
    """Fit the frequency detector on the training split, pick its threshold on validation, save it."""
    from deepfake_platform.data import load_image
    from deepfake_platform.metrics import choose_threshold, roc_auc
    from models import FrequencyDetector

    # Generators: only the spectral features are kept in memory, never all the decoded images.
    detector = FrequencyDetector().fit((load_image(p) for p, _ in train), [label for _, label in train])
    val_scores = detector.predict_proba(load_image(p) for p, _ in val)
    val_labels = np.array([label for _, label in val])
    return save_frequency_member(detector, path, choose_threshold(val_labels, val_scores), roc_auc(val_labels, val_scores))


def compare_on_test(names: list[str], members: dict[str, Member], spec: EnsembleSpec,
                    val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> list[dict[str, Any]]:
    """One row per member and one for the ensemble: validation AUC here, test metrics at each one's threshold.

    `val` and `test` are (member probabilities, labels) pairs as score_members returns them.
    """
    from deepfake_platform.metrics import classification_report, roc_auc

    (val_probabilities, val_labels), (test_probabilities, test_labels) = val, test
    rows = []
    for j, name in enumerate(names):
        info = members[name].info
        rows.append({"name": name, "detector": info.name, "file": info.checkpoint,
                     "val_auc": roc_auc(val_labels, val_probabilities[:, j]), "threshold": info.threshold,
                     "scores": test_probabilities[:, j],
                     "metrics": classification_report(test_labels, test_probabilities[:, j], info.threshold)})
    fused = spec.apply(test_probabilities)
    rows.append({"name": spec.name, "detector": f"ensemble ({spec.combiner.kind})", "file": f"{spec.name}.pth",
                 "val_auc": spec.val_auc, "threshold": spec.threshold, "scores": fused,
                 "metrics": classification_report(test_labels, fused, spec.threshold)})
    return rows


COLUMNS = ("name", "detector", "val_auc", "threshold", "test_auc", "average_precision", "eer", "accuracy", "f1",
           "precision", "recall")


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The comparison table's cells, one dict per member and ensemble."""
    table = []
    for row in rows:
        m, at = row["metrics"], row["metrics"]["at_val_threshold"]
        table.append({"name": row["name"], "detector": row["detector"], "val_auc": row["val_auc"],
                      "threshold": row["threshold"], "test_auc": m["auc"], "average_precision": m["average_precision"],
                      "eer": m["eer"], "accuracy": at["accuracy"], "f1": at["f1"], "precision": at["precision"],
                      "recall": at["recall"]})
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.4f}"
    return str(value)


def render_comparison(table: list[dict[str, Any]], n_test: int) -> str:
    """The Markdown comparison of members and ensemble on test."""
    lines = [
        "# Ensemble vs members on test",
        "",
        f"{n_test} test images. Accuracy, F1, precision and recall are at each row's own threshold, chosen on "
        "validation (Youden's J); the ensemble's combiner was fitted on validation too.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in table]
    return "\n".join(lines) + "\n"


def write_comparison(rows: list[dict[str, Any]], test_labels: np.ndarray, out_dir: str | Path) -> Path:
    """Write comparison.md, comparison.csv and roc_test.png to out_dir; return comparison.md."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = table_rows(rows)
    with open(out_dir / "comparison.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if len(np.unique(test_labels)) == 2:
        for row, cells in zip(rows, table, strict=True):
            fpr, tpr, _ = roc_curve(test_labels, row["scores"])
            ax.plot(fpr, tpr, label=f"{row['name']} (AUC {_cell(cells['test_auc'])})",
                    linewidth=2.5 if row is rows[-1] else 1.2)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on test")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "roc_test.png", dpi=110)
    plt.close(fig)
    report = out_dir / "comparison.md"
    report.write_text(render_comparison(table, len(test_labels)) + "\n![ROC on test](roc_test.png)\n")
    return report
