"""The reference detector: a CNN and a ViT side by side, pooled features concatenated, one logit.

ResNet18 (512-d) + ViT-B/16 (768-d) -> 1280 -> 512 -> 512 -> 1: 97,894,209 parameters.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from models.freezing import apply_freeze
from models.registry import build, register_detector
from models.weights import create_backbone


class HybridModel(nn.Module):
    """CNN + ViT feature fusion; maps images (B, 3, H, W) to fake logits (B,)."""

    def __init__(
        self,
        cnn_backbone: str = "resnet18",
        vit_backbone: str = "vit_base_patch16_224",
        cnn_pretrained: bool = False,
        vit_pretrained: bool = False,
        *,
        cnn_weights: str | os.PathLike | None = None,
        vit_weights: str | os.PathLike | None = None,
        pretrained_policy: str = "auto",
        freeze: str = "none",
        head_hidden: int = 512,
        img_size: int = 224,
        cnn_kwargs: dict[str, Any] | None = None,
        vit_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.cnn, cnn_status = create_backbone(
            cnn_backbone,
            pretrained=cnn_pretrained,
            weights=cnn_weights,
            policy=pretrained_policy,
            weights_key="cnn_weights",
            **(cnn_kwargs or {}),
        )
        # Only the ViT has a fixed input size (its position embeddings); the CNN pools globally.
        self.vit, vit_status = create_backbone(
            vit_backbone,
            pretrained=vit_pretrained,
            weights=vit_weights,
            policy=pretrained_policy,
            weights_key="vit_weights",
            img_size=img_size,
            **(vit_kwargs or {}),
        )
        self.head = nn.Sequential(
            nn.Linear(self.cnn.num_features + self.vit.num_features, head_hidden),
            nn.ReLU(),
            nn.Linear(head_hidden, head_hidden),
            nn.ReLU(),
            nn.Linear(head_hidden, 1),
        )
        self.default_image_size = img_size
        self.pretrained_status = {"cnn": cnn_status, "vit": vit_status}
        self.detector_name: str | None = None
        self.detector_kwargs: dict[str, Any] = {}
        apply_freeze(self, freeze)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return one fake logit per image."""
        features = torch.cat([self.cnn(images), self.vit(images)], dim=1)
        return self.head(features).squeeze(-1)


@register_detector
def hybrid_resnet18_vit_b16(**kwargs: Any) -> HybridModel:
    """The reference: ResNet18 + ViT-B/16, ImageNet weights when they can be found."""
    defaults = dict(
        cnn_backbone="resnet18", vit_backbone="vit_base_patch16_224", cnn_pretrained=True, vit_pretrained=True
    )
    return build(HybridModel, defaults, kwargs)


@register_detector
def hybrid_tiny(**kwargs: Any) -> HybridModel:
    """The hybrid code path at toy size (about 6M parameters, 64 px) for tests and smoke runs."""
    defaults = dict(
        cnn_backbone="resnet10t",
        vit_backbone="vit_tiny_patch16_224",
        img_size=64,
        vit_kwargs={"depth": 2},
        head_hidden=32,
    )
    return build(HybridModel, defaults, kwargs)
