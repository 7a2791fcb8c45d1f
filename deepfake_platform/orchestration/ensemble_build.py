"""Building an ensemble offline: the build config, its members, the fitted combiner, the comparison on test.

`experiments/build_ensemble.py` runs these in order: `load_ensemble_config`, `resolve_members` (paths and
globs keeping a sweep's top-k), `train_frequency_member` when enabled, `score_members` on validation and
test through the one predict path, `fit_combiner` on validation, then `compare_on_test` and
`write_comparison` (comparison.md, comparison.csv, roc_test.png).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from deepfake_platform.checkpoints import DetectorCheckpoint, read_checkpoint
from deepfake_platform.config import ConfigError, Section, load
from deepfake_platform.ensemble import Combiner, EnsembleSpec, Member, logit, safe_name, save_frequency_member
from deepfake_platform.errors import InvalidInput
from deepfake_platform.metrics import choose_threshold, class_scores, classification_report, roc_auc
from deepfake_platform.reporting import markdown_table, plot_roc, write_csv, write_text_atomic

# ---- the build config ----------------------------------------------------------------------------------


class MemberConfig(Section):
    """A member entry: a checkpoint path or a glob (a sweep's top-k)."""

    checkpoint: str = Field(min_length=1)
    # Empty: the detector's registry name (with a number when several match).
    name: str = ""
    # For a glob: keep the k checkpoints with the best validation AUC; 0 keeps every match.
    top_k: int = Field(0, ge=0)


class FrequencyConfig(Section):
    """Whether to train the frequency-domain detector on the training split and add it as a member."""

    enabled: bool = False
    name: str = "frequency"


class EnsembleOutputConfig(Section):
    """Where build_ensemble.py writes: runs/<name>/ensemble/, artifacts/<name>.pth, the Serve config."""

    runs_dir: str = "runs"
    artifacts_dir: str = "artifacts"
    serve_config: str = "serve.ensemble.config"


class EnsembleConfig(Section):
    """Everything build_ensemble.py needs."""

    name: str = "ensemble"
    # Empty: the embedded default data set (as for training).
    data_root: str = ""
    members: list[MemberConfig] = Field(default_factory=list)
    frequency: FrequencyConfig = Field(default_factory=FrequencyConfig)
    combiner: Literal["mean", "weighted", "stacking"] = "stacking"
    # For the weighted combiner: member name -> weight (names as in the comparison table).
    weights: dict[str, float] = Field(default_factory=dict)
    batch_size: int = Field(16, ge=1)
    precision: Literal["auto", "bf16", "fp32", "int8"] = "auto"
    output: EnsembleOutputConfig = Field(default_factory=EnsembleOutputConfig)

    @model_validator(mode="after")
    def _has_members(self) -> EnsembleConfig:
        if not self.members and not self.frequency.enabled:
            raise InvalidInput("the ensemble has no members; list checkpoints under members or enable frequency")
        return self


def load_ensemble_config(path: str | Path, overrides: list[str] | None = None) -> EnsembleConfig:
    """Load and check an ensemble YAML config, with `key=value` overrides."""
    return load(EnsembleConfig, path, overrides, what="ensemble config", example="experiments/configs/ensemble.yaml")


# ---- members -------------------------------------------------------------------------------------------


def resolve_members(configs: list[MemberConfig]) -> list[tuple[str, Path]]:
    """Expand paths and globs into unique (name, path) pairs; a glob keeps its top_k by validation AUC."""
    resolved: list[tuple[str, Path]] = []
    for entry in configs:
        if glob.has_magic(entry.checkpoint):
            paths = [Path(p) for p in sorted(glob.glob(entry.checkpoint))]
            if not paths:
                raise ConfigError(f"no checkpoint matches {entry.checkpoint}; train the sweep first or fix the glob.")
            records = {path: read_checkpoint(path) for path in paths}
            paths.sort(key=lambda p: -float(getattr(records[p], "val_auc", float("-inf"))))
            if entry.top_k:
                paths = paths[: entry.top_k]
        else:
            paths = [Path(entry.checkpoint)]
            records = {paths[0]: read_checkpoint(paths[0])}
        for i, path in enumerate(paths):
            record = records[path]
            base = entry.name or (record.detector if isinstance(record, DetectorCheckpoint) else record.kind)
            resolved.append((safe_name(f"{base}_{i + 1}" if len(paths) > 1 else base), path))
    names = [name for name, _ in resolved]
    unique = [f"{name}_{names[:i].count(name) + 1}" if names.count(name) > 1 else name for i, name in enumerate(names)]
    return list(zip(unique, (path for _, path in resolved), strict=True))


def check_face_presets(members: dict[str, Member]) -> None:
    """Members must see the same pixels: all trained on whole images, or all on faces cropped alike."""
    presets = {name: member.faces for name, member in members.items() if member.faces}
    if len({repr(sorted(preset.items())) for preset in presets.values()}) > 1:
        raise ConfigError(
            "the members were trained on faces cropped differently ("
            + "; ".join(f"{name}: {preset}" for name, preset in presets.items())
            + "): an ensemble needs one face preset. Retrain them on one data set."
        )


def train_frequency_member(train: list[tuple[str, int]], val: list[tuple[str, int]], path: str | Path) -> Path:
    """Fit the frequency detector on the training split, pick its threshold on validation, save it."""
    from deepfake_platform.data import load_image
    from models import FrequencyDetector

    # Generators: only the spectral features are kept in memory, never all the decoded images.
    detector = FrequencyDetector().fit((load_image(p) for p, _ in train), [label for _, label in train])
    val_scores = detector.predict_proba(load_image(p) for p, _ in val)
    val_labels = np.array([label for _, label in val])
    return save_frequency_member(detector, path, choose_threshold(val_labels, val_scores), roc_auc(val_labels, val_scores),
                                 class_scores(val_labels, val_scores))


def score_members(members: dict[str, Member], samples: list[tuple[str, int]],
                  batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(images x members) fake probabilities and the labels; each image is decoded once for all members."""
    from deepfake_platform.data import load_image

    if not samples:
        raise InvalidInput("the split has no readable images to score.")
    rows = []
    for start in range(0, len(samples), batch_size):
        images = [load_image(path) for path, _ in samples[start:start + batch_size]]
        rows.append(np.stack([member.predict_images(images) for member in members.values()], axis=1))
    return np.concatenate(rows).astype(np.float64), np.array([label for _, label in samples], dtype=np.int64)


# ---- fitting -------------------------------------------------------------------------------------------


def fit_stacking(probabilities: np.ndarray, labels: np.ndarray) -> tuple[list[float], float]:
    """Fit the stacking logistic regression on validation predictions; returns (coef, intercept)."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels).astype(int).ravel()
    if len(np.unique(labels)) < 2:
        raise InvalidInput("stacking needs both real and fake images in the validation split.")
    model = LogisticRegression(C=1.0, max_iter=1000).fit(logit(np.asarray(probabilities, dtype=np.float64)), labels)
    return [float(c) for c in model.coef_[0]], float(model.intercept_[0])


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


# ---- comparing on test ---------------------------------------------------------------------------------

COLUMNS = ("name", "detector", "val_auc", "threshold", "test_auc", "average_precision", "eer", "accuracy", "f1",
           "precision", "recall")


def compare_on_test(names: list[str], members: dict[str, Member], spec: EnsembleSpec,
                    val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> list[dict[str, Any]]:
    """One row per member and one for the ensemble: validation AUC here, test metrics at each one's threshold.

    `val` and `test` are (member probabilities, labels) pairs as score_members returns them.
    """
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


def render_comparison(table: list[dict[str, Any]], n_test: int) -> str:
    """The Markdown comparison of members and ensemble on test."""
    return "\n".join([
        "# Ensemble vs members on test",
        "",
        f"{n_test} test images. Accuracy, F1, precision and recall are at each row's own threshold, chosen on "
        "validation (Youden's J); the ensemble's combiner was fitted on validation too.",
        "",
        markdown_table(COLUMNS, [[row[column] for column in COLUMNS] for row in table]),
    ])


def write_comparison(rows: list[dict[str, Any]], test_labels: np.ndarray, out_dir: str | Path) -> Path:
    """Write comparison.md, comparison.csv and roc_test.png to out_dir; return comparison.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = table_rows(rows)
    write_csv(out_dir / "comparison.csv", table, COLUMNS)
    plot_roc([(row["name"], test_labels, row["scores"]) for row in rows], out_dir / "roc_test.png", "ROC on test")
    return write_text_atomic(out_dir / "comparison.md",
                             render_comparison(table, len(test_labels)) + "\n![ROC on test](roc_test.png)\n")

