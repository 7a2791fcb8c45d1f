"""The model deployment: one detector loaded in each replica, scoring images in dynamic batches.

`Detector.predict` takes one image per call; Serve gathers concurrent calls into batches of up to
`max_batch_size`. The replica loads its model in `__init__` through the one predict path
(`deepfake_platform.ensemble.load_member`), so it scores exactly as evaluation and batch scoring do.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

from PIL import Image
from ray import serve

from deepfake_platform.ensemble import load_member
from serve.settings import AppArgs

BATCH_DEFAULTS = AppArgs()


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class Detector:
    """One detector loaded in each replica; `predict` scores single images, batched by Serve."""

    def __init__(self, path: str, precision: str, max_batch_size: int, batch_wait_timeout_s: float):
        self.member = load_member(path, precision=precision)
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def info(self) -> dict[str, Any]:
        """The detector's identity, threshold and validation AUC."""
        return self.member.info.to_dict()

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
    async def predict(self, images: list[Image.Image]) -> list[float]:
        """Fake probabilities for a batch of RGB images (Serve gathers single calls into the list)."""
        # In a thread, so the replica still answers info() and health checks during a long batch.
        probabilities = await asyncio.to_thread(self.member.predict_images, images)
        return [float(p) for p in probabilities]
