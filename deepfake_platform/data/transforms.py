"""Preprocessing presets: a PIL RGB image in, a normalised CHW float tensor out.

The "eval" preset is the one used for validation, test and serving, so a deployed model sees exactly
the pixels it was evaluated on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("train", "eval")


class TrainPreset:
    """Random resized crop and horizontal flip, then ImageNet normalisation."""

    def __init__(self, *, image_size: int = 224, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        self.transform = T.Compose([
            T.RandomResizedCrop(image_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)


class EvalPreset:
    """Resize the short side to 256/224 of the crop, centre crop, then ImageNet normalisation."""

    def __init__(self, *, image_size: int = 224, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        self.transform = T.Compose([
            T.Resize(int(image_size * 256 / 224)),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)


def build_transform(preset: str, image_size: int = 224) -> Callable[[Image.Image], torch.Tensor]:
    """The named preset ("train" or "eval") for square inputs of `image_size` pixels."""
    if preset == "train":
        return TrainPreset(image_size=image_size)
    if preset == "eval":
        return EvalPreset(image_size=image_size)
    raise ValueError(f"unknown transform preset {preset!r}; choose one of {', '.join(PRESETS)}.")
