"""The PyTorch view of a split: (image tensor, label) pairs decoded on demand."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from deepfake_platform.data.images import load_image


class ImageDataset(Dataset):
    """Samples of (path, label) decoded with `load_image` and passed through `transform`; label 1 is fake."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Image.Image], torch.Tensor]):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        path, label = self.samples[index]
        return self.transform(load_image(path)), float(label)

