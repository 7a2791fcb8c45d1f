"""How much the benchmark measures: the step and request counts of each phase, per mode."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """How much to measure: step and request counts of each phase."""

    train_warmup: int
    train_steps: int
    train_rounds: int
    ray_steps: int
    infer_warmup: int
    infer_steps: int
    infer_rounds: int
    serve_single: int
    serve_warmup: int
    serve_requests: int
    serve_concurrency: int
    parity_seeds: int
    parity_epochs: int
    int8_images: int = 128  # held-out images of the square task int8 is judged on
    int8_epochs: int = 2  # the tiny hybrid's epochs on the square task
    main_job: bool = False
    score_images: int = 80  # the large scoring run; the small one is a fifth of it, at least a batch


PRESETS = {
    "full": Settings(train_warmup=2, train_steps=5, train_rounds=3, ray_steps=8, infer_warmup=1, infer_steps=3,
                     infer_rounds=3, serve_single=20, serve_warmup=48, serve_requests=96, serve_concurrency=16,
                     parity_seeds=3, parity_epochs=4, int8_images=256, int8_epochs=3, main_job=True,
                     score_images=160),
    "quick": Settings(train_warmup=1, train_steps=1, train_rounds=1, ray_steps=2, infer_warmup=1, infer_steps=1,
                      infer_rounds=1, serve_single=5, serve_warmup=16, serve_requests=32, serve_concurrency=16,
                      parity_seeds=0, parity_epochs=0),
    # On a GPU: batch 256, so fewer steps carry more images.
    "cuda": Settings(train_warmup=3, train_steps=20, train_rounds=1, ray_steps=0, infer_warmup=3, infer_steps=20,
                     infer_rounds=1, serve_single=0, serve_warmup=0, serve_requests=0, serve_concurrency=0,
                     parity_seeds=0, parity_epochs=0),
}


def preset_name(device_type: str, quick: bool) -> str:
    """The preset a run uses: "cuda" on a GPU, else "quick" or "full"."""
    return "cuda" if device_type == "cuda" else ("quick" if quick else "full")
