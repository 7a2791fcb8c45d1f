"""The robustness report: a model's test metrics under what platforms do to media before anyone checks it.

Each condition is applied to the decoded file, as a platform would (Pillow, seeded), and the result is scored
the way evaluation scores the clean file (deepfake_platform.evaluation.score_samples): recompression at JPEG
quality 90/70/50/30, downscaling to 0.75/0.5/0.25 and back (Pillow's antialiased bilinear both ways), a
Gaussian blur, Gaussian noise, and a "social" chain (long side at most 1080 px, JPEG 75, then JPEG 85, as a
re-upload does). Per condition: AUC, EER and accuracy at the model's threshold (its chosen operating point);
the worst-case AUC is the number fine-tuning's promotion gate can require (`--min-robust-auc`).

    report = robustness_report(predictor, "data/embedded", choices)
    write_robustness(report, Path("runs/robustness"))       # ROBUSTNESS.md, robustness.json, robustness.png

No Ray, no torch here: the predictor of the one predict path does the scoring.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from deepfake_platform.metrics import classification_report, error_rates
from deepfake_platform.reporting import markdown_table, write_json, write_text_atomic

BLUR_RADIUS = 1.5  # Pillow's GaussianBlur radius (its standard deviation), in pixels
NOISE_SIGMA = 8.0  # standard deviation of the added noise, on the 0-255 scale
SOCIAL_LONG_SIDE = 1080


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """`image` encoded as JPEG at `quality` and decoded again."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def rescale(image: Image.Image, factor: float) -> Image.Image:
    """`image` shrunk by `factor` and brought back to its size (the detail a downscale loses stays lost)."""
    small = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                         Image.Resampling.BILINEAR)
    return small.resize(image.size, Image.Resampling.BILINEAR)


def blur(image: Image.Image, radius: float = BLUR_RADIUS) -> Image.Image:
    """A Gaussian blur of `radius` pixels."""
    return image.filter(ImageFilter.GaussianBlur(radius=radius))


def noise(image: Image.Image, seed: int, sigma: float = NOISE_SIGMA) -> Image.Image:
    """Gaussian noise of `sigma` (0-255 scale) added to every channel, from a generator seeded with `seed`."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    noisy = array + np.random.default_rng(seed).normal(0.0, sigma, array.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def social(image: Image.Image) -> Image.Image:
    """What a re-upload does: the long side brought down to 1080 px (never up), JPEG 75, then JPEG 85."""
    scale = SOCIAL_LONG_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    return jpeg(jpeg(image, 75), 85)


@dataclass(frozen=True)
class Condition:
    """One perturbation: its name, what it does, and the function (picture, seed) -> picture (None: clean)."""

    name: str
    description: str
    apply: Callable[[Image.Image, int], Image.Image] | None


CONDITIONS: tuple[Condition, ...] = (
    Condition("clean", "the file as it is", None),
    *(Condition(f"jpeg_{q}", f"JPEG at quality {q}", lambda image, _, q=q: jpeg(image, q)) for q in (90, 70, 50, 30)),
    *(Condition(f"downscale_{f:g}", f"downscaled to {f:g} and back (bilinear)", lambda image, _, f=f: rescale(image, f))
      for f in (0.75, 0.5, 0.25)),
    Condition("blur", f"Gaussian blur, radius {BLUR_RADIUS:g} px", lambda image, _: blur(image)),
    Condition("noise", f"Gaussian noise, sigma {NOISE_SIGMA:g} of 255 (seeded per file)", noise),
    Condition("social", f"long side at most {SOCIAL_LONG_SIDE} px, JPEG 75, then JPEG 85", lambda image, _: social(image)),
)


def condition_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC, EER, and accuracy / false-positive / false-negative rates at `threshold`, for one condition."""
    report = classification_report(labels, scores, threshold)
    fpr, fnr = error_rates(labels, scores, threshold)
    return {"auc": report["auc"], "eer": report["eer"], "accuracy": report["at_val_threshold"]["accuracy"],
            "fpr": fpr, "fnr": fnr}


def robustness_report(predictor: Any, data_root: str | Path, choices: Any, split: str = "test", *,
                      batch_size: int = 32, seed: int = 0,
                      conditions: tuple[Condition, ...] = CONDITIONS) -> dict[str, Any]:
    """Every condition's metrics for `predictor` on `split`, at `choices`' threshold; the worst-case AUC and the
    condition that gives it. The file at index i is perturbed with seed `seed` + i, so reruns agree."""
    from deepfake_platform.data import load_split
    from deepfake_platform.evaluation import score_samples

    samples = load_split(Path(data_root), split)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    rows = []
    for condition in conditions:
        perturb = None if condition.apply is None else (lambda image, i, apply=condition.apply: apply(image, seed + i))
        scores = score_samples(predictor, samples, batch_size, perturb=perturb)
        rows.append({"condition": condition.name, "description": condition.description,
                     **condition_metrics(labels, scores, choices.threshold)})
    perturbed = [row for row in rows if row["condition"] != "clean" and not np.isnan(row["auc"])]
    worst = min(perturbed, key=lambda row: row["auc"]) if perturbed else None
    return {"model": predictor.info.to_dict(), "data_root": str(data_root), "split": split, "n": int(labels.size),
            "threshold": float(choices.threshold), "operating_point": getattr(choices, "operating_point", "balanced"),
            "seed": seed, "conditions": rows,
            "worst_auc": worst["auc"] if worst else float("nan"), "worst_condition": worst["condition"] if worst else None}


def render_robustness(report: dict[str, Any]) -> str:
    """The report as Markdown: what was scored, then one row per condition."""
    head = (f"# Robustness: {report['model']['name']}\n\n{report['n']} {report['split']} files of "
            f"`{report['data_root']}`, each perturbed after decoding (seed {report['seed']}), labelled at the "
            f"{report['operating_point']} threshold {report['threshold']:.4f}. Worst-case AUC "
            f"{report['worst_auc']:.4f} ({report['worst_condition']}).\n\n")
    table = markdown_table(["condition", "what", "AUC", "EER", "accuracy", "FPR", "FNR"],
                           [[row["condition"], row["description"], row["auc"], row["eer"], row["accuracy"], row["fpr"],
                             row["fnr"]] for row in report["conditions"]])
    return head + table + "\n![AUC per condition](robustness.png)\n"


def plot_robustness(report: dict[str, Any], path: str | Path) -> Path:
    """AUC and accuracy per condition as bars, the clean AUC as a line; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["conditions"]
    names = [row["condition"] for row in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(x - 0.2, [row["auc"] for row in rows], 0.4, label="AUC")
    ax.bar(x + 0.2, [row["accuracy"] for row in rows], 0.4, label=f"accuracy at {report['threshold']:.3f}")
    clean = next((row["auc"] for row in rows if row["condition"] == "clean"), None)
    if clean is not None and not np.isnan(clean):
        ax.axhline(clean, color="grey", linestyle="--", label="clean AUC")
    ax.set_xticks(x, names, rotation=35, ha="right")
    ax.set(ylim=(0, 1.05), ylabel="", title=f"{report['model']['name']} under perturbations ({report['split']})")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_robustness(report: dict[str, Any], folder: str | Path) -> dict[str, Path]:
    """ROBUSTNESS.md, robustness.json and robustness.png in `folder`; their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {"plot": plot_robustness(report, folder / "robustness.png"),
            "json": write_json(folder / "robustness.json", report),
            "markdown": write_text_atomic(folder / "ROBUSTNESS.md", render_robustness(report))}
