"""A frequency-domain detector after Durall et al. 2020, "Unmasking DeepFakes with simple Features".

Up-sampling in generators and the resampling in face swaps distort the high end of the power
spectrum. The azimuthal average of the log power spectrum reduces an image to a 1-D profile over
spatial frequency; a logistic regression on that profile separates real from fake. It trains in
seconds, so it is a cheap, independent member for ensembles. It is not a torch module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

ImageLike = np.ndarray | Image.Image
STATE_KIND = "frequency_durall2020"
# ITU-R 601 luma, the same weights PIL uses for mode 'L'.
_LUMA = np.array([0.299, 0.587, 0.114])


def azimuthal_spectrum_features(image: ImageLike, n_bins: int = 64) -> np.ndarray:
    """Return the azimuthally averaged log power spectrum of `image`, `n_bins` values in [0, 1]."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    gray = pixels[..., :3] @ _LUMA if pixels.ndim == 3 else pixels
    spectrum = np.fft.fftshift(np.fft.fft2(gray))
    log_power = np.log(np.abs(spectrum) ** 2 + 1e-8)

    height, width = gray.shape
    rows, cols = np.indices(gray.shape)
    radius = np.hypot(rows - height // 2, cols - width // 2).astype(int)
    # Stop at the inscribed circle: beyond it the rings are incomplete (corners only).
    max_radius = min(height, width) // 2
    inside = radius < max_radius
    ring_sum = np.bincount(radius[inside], weights=log_power[inside], minlength=max_radius)
    ring_count = np.bincount(radius[inside], minlength=max_radius)
    profile = ring_sum / np.maximum(ring_count, 1)

    # A fixed number of bins over relative frequency makes images of any size comparable.
    profile = np.interp(np.linspace(0.0, 1.0, n_bins), np.linspace(0.0, 1.0, max_radius), profile)
    # Min-max scaling keeps the spectrum's shape and drops its overall level (brightness, contrast).
    span = profile.max() - profile.min()
    return (profile - profile.min()) / span if span > 0 else np.zeros(n_bins)


class FrequencyDetector:
    """Spectral-profile features + StandardScaler + LogisticRegression; label 1 means fake."""

    def __init__(self, n_bins: int = 64, C: float = 1.0, max_iter: int = 1000) -> None:
        self.n_bins = n_bins
        self.C = C
        self.max_iter = max_iter
        self.pipeline = Pipeline(
            [("scale", StandardScaler()), ("classify", LogisticRegression(C=C, max_iter=max_iter))]
        )
        self.fitted = False

    def features(self, images: Iterable[ImageLike]) -> np.ndarray:
        """Return the (N, n_bins) spectral features of `images`."""
        return np.stack([azimuthal_spectrum_features(image, self.n_bins) for image in images])

    def fit(self, images: Iterable[ImageLike], labels: Iterable[int]) -> FrequencyDetector:
        """Fit on images with labels 0 (real) / 1 (fake); returns self."""
        labels = np.asarray(list(labels), dtype=int)
        if set(np.unique(labels)) != {0, 1}:
            raise ValueError(
                f"FrequencyDetector needs labels 0 (real) and 1 (fake), both present; got {np.unique(labels)}."
            )
        self.pipeline.fit(self.features(images), labels)
        self.fitted = True
        return self

    def predict_proba(self, images: Iterable[ImageLike]) -> np.ndarray:
        """Return the fake probability of each image, shape (N,)."""
        if not self.fitted:
            raise RuntimeError(
                "FrequencyDetector is not fitted; call fit(images, labels) or from_state(state) first."
            )
        return self.pipeline.predict_proba(self.features(images))[:, 1]

    def to_state(self) -> dict[str, Any]:
        """Return the fitted detector as plain lists, floats, ints and strings."""
        if not self.fitted:
            raise RuntimeError("FrequencyDetector is not fitted; there is no state to save.")
        scaler, classifier = self.pipeline["scale"], self.pipeline["classify"]
        return {
            "kind": STATE_KIND,
            "n_bins": self.n_bins,
            "C": float(self.C),
            "max_iter": self.max_iter,
            "scaler_mean": scaler.mean_.tolist(),
            "scaler_scale": scaler.scale_.tolist(),
            "coef": classifier.coef_[0].tolist(),
            "intercept": float(classifier.intercept_[0]),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FrequencyDetector:
        """Rebuild a fitted detector from to_state() output."""
        if state.get("kind") != STATE_KIND:
            raise ValueError(
                f"Not a FrequencyDetector state: kind is {state.get('kind')!r}, expected {STATE_KIND!r}."
            )
        detector = cls(n_bins=state["n_bins"], C=state["C"], max_iter=state["max_iter"])
        scaler, classifier = detector.pipeline["scale"], detector.pipeline["classify"]
        # Setting the fitted attributes restores the exact model without refitting.
        scaler.mean_ = np.asarray(state["scaler_mean"])
        scaler.scale_ = np.asarray(state["scaler_scale"])
        scaler.var_ = scaler.scale_**2
        scaler.n_features_in_ = len(state["scaler_mean"])
        scaler.n_samples_seen_ = 0
        classifier.coef_ = np.asarray([state["coef"]])
        classifier.intercept_ = np.asarray([state["intercept"]])
        classifier.classes_ = np.array([0, 1])
        classifier.n_features_in_ = len(state["coef"])
        detector.fitted = True
        return detector
