"""Self-Blended Images on the fly (Shiohara & Yamasaki, CVPR 2022): pseudo-fakes from real face crops.

A user with only real face crops trains on a fresh pseudo-fake per real crop and epoch: an altered copy
of the crop (synth.py's colour, sharpness, resampling and warp steps) is blended back through a soft,
randomly shaped mask that stays inside the face. Unlike `synth.build_dataset`, which writes a fixed set
of fakes once, nothing is written and the fakes change every epoch, so the detector cannot learn one
particular blend. Every draw comes from `np.random.default_rng([seed, epoch, index])`: the same triple
gives the same pseudo-fake in any worker and any order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from deepfake_platform.data.images import load_image
from deepfake_platform.data.synth import _alter, blend_mask

# Face crops are the detector's face box enlarged by a 1.3 margin, so the face fills the central
# 1 / 1.3 = 77% of each side; the central 70% leaves slack for loose detector boxes and keeps blends
# off hair and background.
DEFAULT_FACE_FRACTION = 0.7
# The mask fades to zero over this fraction of the box's short side, so no hard edge marks the box.
EDGE_FADE_FRACTION = 0.1
MIN_BOX_SIDE = 8

Box = tuple[int, int, int, int]


def default_face_box(width: int, height: int) -> Box:
    """The central DEFAULT_FACE_FRACTION of a `width` x `height` face crop as (left, top, right, bottom)."""
    margin_x = round(width * (1.0 - DEFAULT_FACE_FRACTION) / 2)
    margin_y = round(height * (1.0 - DEFAULT_FACE_FRACTION) / 2)
    return margin_x, margin_y, width - margin_x, height - margin_y


def self_blend_face(
    image: Image.Image, rng: np.random.Generator, box: Box | None = None
) -> tuple[Image.Image, np.ndarray]:
    """Blend an altered copy of `image` back into it inside `box`; return the image and the (H, W) mask used.

    `box` is (left, top, right, bottom) in pixels, right and bottom exclusive; the default is
    `default_face_box`. The mask is zero outside the box and fades in softly inside it, so pixels
    outside the box keep their exact values.
    """
    image = image.convert("RGB")
    width, height = image.size
    left, top, right, bottom = default_face_box(width, height) if box is None else box
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(
            f"The blend box {(left, top, right, bottom)} does not lie inside the {width}x{height} image; "
            "pass (left, top, right, bottom) with 0 <= left < right <= width and 0 <= top < bottom <= height."
        )
    if min(right - left, bottom - top) < MIN_BOX_SIDE:
        raise ValueError(
            f"The blend box {(left, top, right, bottom)} is smaller than {MIN_BOX_SIDE} pixels on a side; "
            "pass a larger box or a larger face crop."
        )
    inner = blend_mask(bottom - top, right - left, rng) * _edge_fade(bottom - top, right - left)
    mask = np.zeros((height, width), dtype=np.float32)
    mask[top:bottom, left:right] = inner

    source = np.asarray(image, dtype=np.float32)
    altered = _alter(image, rng) * 255.0
    # source + mask * (altered - source) is the source exactly wherever the mask is zero.
    blended = source + mask[..., None] * (altered - source)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8)), mask


def _edge_fade(height: int, width: int) -> np.ndarray:
    # A smoothstep ramp from each border of the box: zero on the border, one from the fade width inwards.
    fade = max(1.0, EDGE_FADE_FRACTION * min(height, width))

    def ramp(length: int) -> np.ndarray:
        distance = np.minimum(np.arange(length), np.arange(length)[::-1]).astype(np.float32)
        t = np.clip(distance / fade, 0.0, 1.0)
        return t * t * (3.0 - 2.0 * t)

    return np.outer(ramp(height), ramp(width)).astype(np.float32)


class OnTheFlySelfBlend:
    """A self-blended pseudo-fake per (seed, epoch, index): the same triple gives the same image."""

    def __init__(self, seed: int = 0):
        if seed < 0:
            raise ValueError(f"The seed must be a non-negative integer, not {seed}.")
        self.seed = seed

    def __call__(self, image: Image.Image, index: int, epoch: int, box: Box | None = None) -> Image.Image:
        """The pseudo-fake of `image`, sample `index`, in `epoch`."""
        if index < 0 or epoch < 0:
            raise ValueError(f"The index and epoch must be non-negative integers, not {index} and {epoch}.")
        blended, _ = self_blend_face(image, np.random.default_rng([self.seed, epoch, index]), box)
        return blended


class SelfBlendDataset(Dataset):
    """Real samples, a fresh self-blended pseudo-fake of each, and any given fakes: (tensor, label) pairs.

    With R real samples (label 0) and F fake samples (label 1), in the order they come in `samples`:
    index i < R is real i as it is (label 0.0), index R + i is the pseudo-fake of real i (label 1.0),
    index 2R + j is fake j as it is (label 1.0), never blended. Length 2R + F; without given fakes the
    classes are exactly balanced.

    Pseudo-fakes change with `set_epoch`. DataLoader workers hold copies of the dataset, so the epoch
    reaches them only when they are started anew each epoch: use `num_workers=0` or
    `persistent_workers=False` (the default), and call `set_epoch` before iterating the loader.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable[[Image.Image], torch.Tensor],
        load: Callable[[str], Image.Image] = load_image,
        *,
        seed: int = 0,
    ):
        labels = {label for _, label in samples}
        if not labels <= {0, 1}:
            raise ValueError(
                f"Sample labels must be 0 (real) or 1 (fake), but the samples hold {sorted(labels - {0, 1})}."
            )
        self.reals = [path for path, label in samples if label == 0]
        self.fakes = [path for path, label in samples if label == 1]
        if not self.reals:
            raise ValueError("SelfBlendDataset needs at least one real sample (label 0) to blend pseudo-fakes from.")
        self.transform = transform
        self.load = load
        self.blend = OnTheFlySelfBlend(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the pseudo-fakes of `epoch` from now on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return 2 * len(self.reals) + len(self.fakes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        if not 0 <= index < len(self):
            raise IndexError(f"Index {index} is out of range for a data set of {len(self)} samples.")
        reals = len(self.reals)
        if index < reals:
            return self.transform(self.load(self.reals[index])), 0.0
        if index < 2 * reals:
            real_index = index - reals
            image = self.blend(self.load(self.reals[real_index]), real_index, self.epoch)
            return self.transform(image), 1.0
        return self.transform(self.load(self.fakes[index - 2 * reals])), 1.0
