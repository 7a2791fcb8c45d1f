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
# Longer images are cut to their centre part this many times as long as wide before resizing.
MAX_ASPECT = 4


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
    """Resize the short side to 256/224 of the crop, centre crop, then ImageNet normalisation.

    The cost is bounded by the crop, not by the image's shape: only the centre of the image can reach
    the crop, so an image longer than MAX_ASPECT:1 is cut to its centre MAX_ASPECT:1 part before resizing
    (a 1 x 20,000,000 strip would otherwise be resized to 256 x 5,120,000,000 pixels). Images within
    that ratio, every photograph, are transformed exactly as torchvision's Resize + CenterCrop would.
    """

    def __init__(self, *, image_size: int = 224, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        self.resize_to = int(image_size * 256 / 224)
        self.resize_and_crop = T.Compose([T.Resize(self.resize_to), T.CenterCrop(image_size)])
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def geometry(self, image: Image.Image) -> Image.Image:
        """The pixels the model sees, as a picture of image_size x image_size (the CPU-heavy half)."""
        return self.resize_and_crop(centre_square(image, self.resize_to))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.geometry(image))


def centre_square(image: Image.Image, resize_to: int) -> Image.Image:
    """The centre MAX_ASPECT:1 part of an image longer than that; the image itself otherwise (no copy).

    Resizing then costs at most MAX_ASPECT x resize_to^2 output pixels, whatever the image's shape.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    keep = MAX_ASPECT * short
    if long <= keep:
        return image
    start = (long - keep) // 2
    box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
    return image.crop(box)


def build_transform(preset: str, image_size: int = 224) -> Callable[[Image.Image], torch.Tensor]:
    """The named preset ("train" or "eval") for square inputs of `image_size` pixels."""
    if preset == "train":
        return TrainPreset(image_size=image_size)
    if preset == "eval":
        return EvalPreset(image_size=image_size)
    raise ValueError(f"unknown transform preset {preset!r}; choose one of {', '.join(PRESETS)}.")
