"""Single-backbone detectors for ensembles: a CNN only or a ViT only, plus a linear head."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from models.freezing import BACKBONE_NAMES, apply_freeze
from models.registry import build, register_detector
from models.weights import create_backbone


class SingleBackboneDetector(nn.Module):
    """One timm backbone + Linear(features, 1); maps images (B, 3, H, W) to fake logits (B,).

    `kind` is 'cnn' or 'vit': the backbone is stored under that name, so freezing and parameter
    tables treat it like the same backbone of the hybrid.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_b0",
        kind: str = "cnn",
        pretrained: bool = False,
        *,
        weights: str | os.PathLike | None = None,
        pretrained_policy: str = "auto",
        freeze: str = "none",
        img_size: int = 224,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if kind not in BACKBONE_NAMES:
            raise ValueError(f"kind must be one of {', '.join(BACKBONE_NAMES)}; got {kind!r}.")
        # Only a ViT has a fixed input size (its position embeddings); a CNN pools globally.
        size_kwargs = {"img_size": img_size} if kind == "vit" else {}
        net, status = create_backbone(
            backbone,
            pretrained=pretrained,
            weights=weights,
            policy=pretrained_policy,
            weights_key="weights",
            **size_kwargs,
            **(backbone_kwargs or {}),
        )
        self.kind = kind
        self.add_module(kind, net)
        self.head = nn.Linear(net.num_features, 1)
        self.default_image_size = img_size
        self.pretrained_status = {kind: status}
        self.detector_name: str | None = None
        self.detector_kwargs: dict[str, Any] = {}
        apply_freeze(self, freeze)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return one fake logit per image."""
        return self.head(self.get_submodule(self.kind)(images)).squeeze(-1)


@register_detector
def cnn_efficientnet_b0(**kwargs: Any) -> SingleBackboneDetector:
    """EfficientNet-B0, the classic deepfake-detection baseline, ImageNet weights when found."""
    return build(
        SingleBackboneDetector, dict(backbone="efficientnet_b0", kind="cnn", pretrained=True), kwargs
    )


@register_detector
def vit_b16(**kwargs: Any) -> SingleBackboneDetector:
    """ViT-B/16 alone, ImageNet weights when found."""
    return build(
        SingleBackboneDetector, dict(backbone="vit_base_patch16_224", kind="vit", pretrained=True), kwargs
    )


@register_detector
def cnn_tiny(**kwargs: Any) -> SingleBackboneDetector:
    """timm's test EfficientNet at 64 px (about 0.1M parameters) for tests and smoke runs."""
    return build(SingleBackboneDetector, dict(backbone="test_efficientnet", kind="cnn", img_size=64), kwargs)


@register_detector
def vit_tiny(**kwargs: Any) -> SingleBackboneDetector:
    """timm's test ViT at 64 px (about 0.3M parameters) for tests and smoke runs."""
    return build(SingleBackboneDetector, dict(backbone="test_vit", kind="vit", img_size=64), kwargs)
