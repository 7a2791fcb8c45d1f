"""The detector contract: what every factory registered with `@register_detector` returns.

A detector is a `torch.nn.Module` that maps a batch of images (B, 3, S, S), normalised with the
ImageNet mean and std, to one fake logit per image, shape (B,). It says which input size S it was
built for, whether its backbones started from pretrained weights, and it can freeze its backbones:
its children named `cnn` and/or `vit` are the backbones, `head` is the rest (models/freezing.py).
`create_detector` records the registry name and keyword arguments on it, so a checkpoint rebuilds it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Detector(Protocol):
    """The attributes and call every registered detector provides (checked by tests/test_models.py)."""

    # The square input size the detector was built for (a ViT's position embeddings fix it).
    default_image_size: int
    # Per backbone ("cnn", "vit"): 'local file <path>', 'timm/HF cache', 'downloaded', 'unavailable' or 'off'.
    pretrained_status: dict[str, str]
    # Set by create_detector: enough to rebuild the same architecture.
    detector_name: str | None
    detector_kwargs: dict[str, Any]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Fake logits, one per image: (B, 3, S, S) -> (B,)."""
        ...
