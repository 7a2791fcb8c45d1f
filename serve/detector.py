"""The model deployment: one detector loaded in each replica, scoring images in dynamic batches.

`Detector.predict` takes one image per call; Serve gathers concurrent calls into batches of up to
`max_batch_size`. The replica loads its model through the one predict path
(`deepfake_platform.ensemble.load_member`), so it scores exactly as evaluation and batch scoring do. With a
model registry, the replica holds its role's registered version (champion, or the challenger on trial) and
switches when the serving state changes (serve/lifecycle.py); every probability comes back with the
identity of the model that gave it.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

from PIL import Image
from ray import serve

from deepfake_platform.ensemble import load_member
from deepfake_platform.monitoring import reference_scores
from serve.lifecycle import ModelWatcher
from serve.settings import AppArgs

BATCH_DEFAULTS = AppArgs()


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class Detector:
    """One detector loaded in each replica; `predict` scores single images, batched by Serve."""

    def __init__(self, path: str, precision: str, max_batch_size: int, batch_wait_timeout_s: float, *,
                 role: str = "champion", state: str = "", poll_s: float = 1.0):
        self.watcher = ModelWatcher(path, role=role, state=state, poll_s=poll_s,
                                    load=lambda file: load_member(file, precision=precision))
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @property
    def member(self) -> Any:
        """The detector held now (ModelNotReady when a challenger replica holds none)."""
        return self.watcher.current().member

    def info(self, reference: bool = False) -> dict[str, Any]:
        """The detector's identity (with its registered version and role), threshold and validation AUC; its
        validation scores too with `reference` (drift is measured against them)."""
        loaded = self.watcher.current()
        info = {**loaded.member.info.to_dict(), "identity": loaded.identity,
                "operating_points": loaded.scoring.get("thresholds")}
        if reference:
            info["reference"] = reference_scores(getattr(loaded.member.record, "val_scores", None) or {})
        return info

    async def explain(self, image: Image.Image) -> tuple[bytes, float]:
        """Grad-CAM of this detector on one picture, as PNG bytes, and its fake probability."""
        from deepfake_platform.explain import explain_image

        def run() -> tuple[bytes, float]:
            heat, _, probability = explain_image(self.member.module, self.member.transform, image)
            buffer = io.BytesIO()
            heat.save(buffer, format="PNG")
            return buffer.getvalue(), probability

        return await asyncio.to_thread(run)

    @serve.batch(max_batch_size=BATCH_DEFAULTS.max_batch_size, batch_wait_timeout_s=BATCH_DEFAULTS.batch_wait_timeout_s)
    async def predict(self, images: list[Image.Image]) -> list[tuple[float, dict[str, Any], dict[str, Any]]]:
        """Fake probabilities for a batch of RGB images (Serve gathers single calls into the list), each with
        the identity of the model that scored it and its thresholds and calibration (one model per batch,
        even while a switch is under way)."""
        loaded = self.watcher.current()
        # In a thread, so the replica still answers info() and health checks during a long batch.
        probabilities = await asyncio.to_thread(loaded.member.predict_images, images)
        return [(float(p), loaded.identity, loaded.scoring) for p in probabilities]
