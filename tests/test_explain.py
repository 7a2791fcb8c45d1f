"""Grad-CAM for the detectors: well-formed maps, no side effects, and heat that follows the manipulation."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data
from torch import nn
from torchvision import transforms as T

from deepfake_platform.data.transforms import EvalPreset
from deepfake_platform.explain import explain_image, fuse, gradcam, overlay
from models import create_detector

SIZE = 64
BRANCHES = {"hybrid_tiny": {"cnn", "vit"}, "cnn_tiny": {"cnn"}, "vit_tiny": {"vit"}}
PATCH = 16


def photo(width: int = SIZE, height: int = SIZE) -> Image.Image:
    """The rocket photograph bundled with scikit-image, resized.

    Grad-CAM keeps only evidence for "fake", so an untrained branch that happens to argue "real" on a
    photo gives an all-zero map; on this photo both branches of every seed-0 tiny detector argue "fake".
    """
    return Image.fromarray(data.rocket()).resize((width, height), Image.Resampling.BICUBIC)


def tiny_detector(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_detector(name, pretrained_policy="off")


def assert_untouched(model: nn.Module, training_flags: dict[str, bool], requires_grad: dict[str, bool]) -> None:
    for name, module in model.named_modules():
        assert module.training == training_flags[name], name
        hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
                 module._backward_pre_hooks)
        assert not any(hooks), f"a hook was left on {name}"
    for name, parameter in model.named_parameters():
        assert parameter.grad is None, name
        assert parameter.requires_grad == requires_grad[name], name


@pytest.mark.parametrize("name", sorted(BRANCHES))
def test_maps_are_well_formed_and_leave_the_model_as_it_was(name):
    model = tiny_detector(name)
    # A mixed state, as in fine-tuning with frozen batch norm: both flags must come back as they were.
    model.train()
    first_child = next(model.children())
    first_child.eval()
    next(first_child.parameters()).requires_grad_(False)
    training_flags = {n: m.training for n, m in model.named_modules()}
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}

    maps = gradcam(model, EvalPreset(image_size=SIZE)(photo()).unsqueeze(0))

    assert set(maps) == BRANCHES[name]
    for heatmap in maps.values():
        assert heatmap.shape == (SIZE, SIZE) and heatmap.dtype == np.float32
        assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
        assert heatmap.std() > 0.01
    assert_untouched(model, training_flags, requires_grad)


def test_inference_mode_autocast_and_channels_last_give_the_same_fp32_maps():
    model = tiny_detector("hybrid_tiny").eval()
    image = EvalPreset(image_size=SIZE)(photo()).unsqueeze(0)
    reference = gradcam(model, image)

    model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        inference_image = image.clone().contiguous(memory_format=torch.channels_last)
        maps = gradcam(model, inference_image)
    for name, heatmap in reference.items():
        np.testing.assert_allclose(maps[name], heatmap, atol=1e-4)


def test_models_that_cannot_be_explained_are_refused_with_a_sentence():
    with pytest.raises(ValueError, match="neither a 'cnn' nor a 'vit'"):
        gradcam(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), torch.zeros(1, 3, SIZE, SIZE))
    model = tiny_detector("cnn_tiny")
    with pytest.raises(ValueError, match="unsqueeze"):
        gradcam(model, torch.zeros(3, SIZE, SIZE))
    with pytest.raises(ValueError, match="fp32"):
        gradcam(model.to(torch.bfloat16), torch.zeros(1, 3, SIZE, SIZE))


def test_fuse_averages_normalised_maps():
    ramp = np.array([[0.0, 2.0], [4.0, 4.0]], dtype=np.float32)
    fused = fuse({"cnn": ramp, "vit": np.full((2, 2), 3.0, dtype=np.float32)})
    np.testing.assert_allclose(fused, [[0.0, 0.25], [0.5, 0.5]])
    with pytest.raises(ValueError):
        fuse({})


def test_overlay_is_an_rgb_picture_of_the_image_size():
    image = photo(96, 80)
    heatmap = np.zeros((8, 8), dtype=np.float32)
    heatmap[2:5, 2:5] = 1.0
    drawn = overlay(image, heatmap)
    assert drawn.mode == "RGB" and drawn.size == image.size
    assert not np.array_equal(np.asarray(drawn), np.asarray(image))
    assert np.array_equal(np.asarray(overlay(image, heatmap, alpha=0.0)), np.asarray(image))


def test_explain_image_draws_on_the_picture_the_model_saw():
    model = tiny_detector("hybrid_tiny").eval()
    transform = EvalPreset(image_size=SIZE)
    image = photo(120, 90)

    drawn, maps, fake_probability = explain_image(model, transform, image)

    assert drawn.mode == "RGB" and drawn.size == (SIZE, SIZE)
    assert set(maps) == {"cnn", "vit"}
    with torch.no_grad():
        expected = torch.sigmoid(model(transform(image).unsqueeze(0))).item()
    assert fake_probability == pytest.approx(expected, abs=1e-5)
    # The picture under the heat is the model's input de-normalised: the image resized and centre-cropped.
    seen = T.CenterCrop(SIZE)(T.Resize(int(SIZE * 256 / 224))(image))
    difference = np.abs(np.asarray(drawn, float) - np.asarray(overlay(seen, fuse(maps)), float))
    assert difference.max() <= 1.0
    assert not np.array_equal(np.asarray(drawn), np.asarray(seen))


def smooth_images(generator: torch.Generator, count: int) -> torch.Tensor:
    """Clean images: coarse random colour fields upsampled smoothly, in [0, 1]."""
    coarse = torch.rand(count, 3, 8, 8, generator=generator)
    return F.interpolate(coarse, size=SIZE, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def with_noise_patches(images: torch.Tensor, corners: Sequence[tuple[int, int]], generator: torch.Generator):
    """`images` with a PATCH x PATCH square of pixel noise pasted at each (x, y) corner: the manipulation."""
    images = images.clone()
    for image, (x, y) in zip(images, corners, strict=True):
        image[:, y:y + PATCH, x:x + PATCH] = torch.rand(3, PATCH, PATCH, generator=generator)
    return images


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - 0.5) / 0.25


def random_corners(generator: torch.Generator, count: int, x_range: tuple[int, int]) -> list[tuple[int, int]]:
    xs = torch.randint(x_range[0], x_range[1] + 1, (count,), generator=generator)
    ys = torch.randint(0, SIZE - PATCH + 1, (count,), generator=generator)
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def train_patch_detector(steps: int = 200, batch: int = 16) -> tuple[nn.Module, float]:
    """cnn_tiny trained to tell clean images from ones with a noise patch anywhere; returns it and seconds."""
    model = tiny_detector("cnn_tiny").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    labels = torch.tensor([0.0, 1.0]).repeat(batch // 2)
    start = time.perf_counter()
    for _ in range(steps):
        images = smooth_images(generator, batch)
        fakes = labels.bool()
        images[fakes] = with_noise_patches(
            images[fakes], random_corners(generator, int(fakes.sum()), (0, SIZE - PATCH)), generator
        )
        loss = F.binary_cross_entropy_with_logits(model(normalise(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), time.perf_counter() - start


def test_the_heatmap_follows_the_manipulated_region():
    threads = torch.get_num_threads()
    # One thread: the same arithmetic on every machine, and on a busy 2-core box two threads measured
    # ten times slower per step than one.
    torch.set_num_threads(1)
    try:
        model, seconds = train_patch_detector()
        print(f"trained the patch detector in {seconds:.1f} s")
        generator = torch.Generator().manual_seed(2)

        held_out = smooth_images(generator, 64)
        held_out[32:] = with_noise_patches(held_out[32:], random_corners(generator, 32, (0, SIZE - PATCH)), generator)
        with torch.no_grad():
            predictions = (model(normalise(held_out)) > 0).float()
        accuracy = (predictions == torch.tensor([0.0] * 32 + [1.0] * 32)).float().mean().item()
        assert accuracy >= 0.95, f"the detector must work before its explanations mean anything ({accuracy:.2f})"

        columns = np.arange(SIZE, dtype=np.float32)
        centroids: dict[str, list[float]] = {}
        patch_hotter = []
        # Patches kept 4 px off the middle: the 64 px input gives the CNN a 2x2 feature map, and a patch
        # straddling the middle lights both columns.
        sides = {"left": (0, SIZE // 2 - PATCH - 4), "right": (SIZE // 2 + 4, SIZE - PATCH)}
        for side, x_range in sides.items():
            corners = random_corners(generator, 8, x_range)
            fakes = normalise(with_noise_patches(smooth_images(generator, 8), corners, generator))
            centroids[side] = []
            for image, (x, y) in zip(fakes, corners, strict=True):
                heat = fuse(gradcam(model, image.unsqueeze(0)))
                centroids[side].append(float((heat.sum(axis=0) * columns).sum() / heat.sum()))
                inside = np.zeros_like(heat, dtype=bool)
                inside[y:y + PATCH, x:x + PATCH] = True
                patch_hotter.append(heat[inside].mean() > heat[~inside].mean())
    finally:
        torch.set_num_threads(threads)

    assert np.mean(patch_hotter) >= 0.8, patch_hotter
    assert max(centroids["left"]) < SIZE / 2 < min(centroids["right"]), centroids
