"""Grad-CAM heatmaps for the detectors: where in the picture the fake logit comes from.

Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel of a feature map by the mean gradient of the
fake logit over that map, sums the channels and keeps the positive part. A detector's `cnn` branch is
explained on its last convolutional feature map, its `vit` branch on the patch tokens of its last
block; `fuse` averages the branches into one map and `overlay` draws it on the image:

    from deepfake_platform.data.transforms import EvalPreset
    picture, maps, fake_probability = explain_image(model, EvalPreset(image_size=224), image)

Explanations run in fp32 with autocast off, whatever precision the model is served in, so that small
gradients do not round to zero in bf16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image
from torch import nn

from deepfake_platform.data.transforms import IMAGENET_MEAN, IMAGENET_STD

BRANCHES = ("cnn", "vit")


def gradcam(model: nn.Module, image: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-branch Grad-CAM maps ("cnn", "vit"), each (H, W) float32 in [0, 1], for one (1, 3, H, W) image.

    `model` is a detector with a `cnn` and/or `vit` child (models/hybrid.py, models/single.py) that
    returns one fake logit per image. The frequency detector is not a torch module and has no feature
    map, so it cannot be explained here. The CNN is explained on its last feature map with more than
    one position, the ViT on the patch tokens entering its last block's attention (with class-token
    pooling the last block's own patch outputs never reach the logit). A branch with no evidence for
    "fake" gets an all-zero map. The model runs in eval mode; its train/eval flags, parameters and
    `requires_grad` flags are left as they were, with no `.grad` set and no hooks left behind.
    """
    maps, _ = _gradcam(model, image)
    return maps


def fuse(maps: dict[str, np.ndarray]) -> np.ndarray:
    """The mean of the min-max normalised maps (a constant map counts as zeros)."""
    if not maps:
        raise ValueError("fuse needs at least one heatmap; pass the dictionary that gradcam returns.")
    return np.mean([_normalise(np.asarray(heatmap, dtype=np.float32)) for heatmap in maps.values()], axis=0)


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> Image.Image:
    """`image` with `heatmap` (values in [0, 1]) resized onto it, coloured with `colormap` and alpha-blended."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"The heatmap must be a 2-D array (H, W), not one of shape {heatmap.shape}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is the heatmap's opacity and must lie in [0, 1], not {alpha}.")
    picture = image.convert("RGB")
    resized = Image.fromarray(heatmap, mode="F").resize(picture.size, Image.Resampling.BILINEAR)
    heat = np.clip(np.asarray(resized), 0.0, 1.0)
    colours = colormaps[colormap](heat)[..., :3].astype(np.float32) * 255.0
    pixels = np.asarray(picture, dtype=np.float32)
    blended = (1.0 - alpha) * pixels + alpha * colours
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def explain_image(
    model: nn.Module,
    transform: Callable[[Image.Image], torch.Tensor],
    image: Image.Image,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[Image.Image, dict[str, np.ndarray], float]:
    """The fused heatmap drawn on the picture the model saw, the per-branch maps and the fake probability.

    `transform` turns a PIL image into a normalised CHW tensor (e.g. `EvalPreset`); `mean` and `std`
    must be the ones it normalises with. The picture is the transformed tensor de-normalised, so a
    resize and centre crop in `transform` crop the picture exactly as they cropped the model's input.
    """
    tensor = transform(image.convert("RGB"))
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(
            f"The transform must return one (3, H, W) tensor, but it returned shape {tuple(tensor.shape)}."
        )
    maps, logit = _gradcam(model, tensor.unsqueeze(0))
    shape = (3, 1, 1)
    pixels = tensor.detach().float().cpu() * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
    seen = Image.fromarray(np.rint(pixels.clamp(0.0, 1.0).permute(1, 2, 0).numpy() * 255.0).astype(np.uint8))
    fake_probability = float(torch.sigmoid(torch.tensor(logit)))
    return overlay(seen, fuse(maps)), maps, fake_probability


def _gradcam(model: nn.Module, image: torch.Tensor) -> tuple[dict[str, np.ndarray], float]:
    # A torch.compile'd model keeps the hookable modules on its original module.
    model = getattr(model, "_orig_mod", model)
    branches = {name: child for name, child in model.named_children() if name in BRANCHES}
    if not branches:
        raise ValueError(
            f"{type(model).__name__} has neither a 'cnn' nor a 'vit' child module, so it has no feature map "
            "to explain; Grad-CAM works with the hybrid and single-backbone detectors in models/."
        )
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(
            f"gradcam explains one preprocessed image of shape (1, 3, H, W), not {tuple(image.shape)}; "
            "add the batch dimension with image.unsqueeze(0)."
        )
    parameters = list(model.parameters())
    low_precision = sorted({str(p.dtype) for p in parameters if p.is_floating_point() and p.dtype != torch.float32})
    if low_precision:
        raise ValueError(
            f"Grad-CAM runs in fp32, but the model holds {', '.join(low_precision)} weights; "
            "explain an fp32 copy instead (copy.deepcopy(model).float())."
        )
    device = parameters[0].device if parameters else image.device
    height, width = image.shape[-2:]

    captured: dict[str, list[torch.Tensor]] = {name: [] for name in branches}
    handles = []
    if "cnn" in branches:
        # Every top-level child of a timm CNN that yields a 4-D map is a candidate; the last one to run
        # before pooling is the output of forward_features (layer4 of a ResNet, bn2 of an EfficientNet).
        for child in branches["cnn"].children():
            handles.append(child.register_forward_hook(_capture_4d(captured["cnn"])))
    if "vit" in branches:
        handles.append(_vit_target(branches["vit"]).register_forward_hook(_capture(captured["vit"])))

    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        # inference_mode is not undone by enable_grad, and ambient bf16 autocast would round the gradients.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            # Gradients reach the feature maps through the input, so frozen backbones are explained too,
            # and autograd.grad leaves every parameter's .grad alone.
            inputs = image.detach().clone().to(device=device, dtype=torch.float32).requires_grad_(True)
            logit = model(inputs).reshape(-1)
            if logit.numel() != 1:
                raise ValueError(
                    f"The model returned {logit.numel()} outputs for one image; Grad-CAM needs one fake logit."
                )
            targets = {}
            if "cnn" in branches:
                targets["cnn"] = _last_spatial_map(captured["cnn"])
            if "vit" in branches:
                targets["vit"] = captured["vit"][-1]
            gradients = torch.autograd.grad(logit.sum(), list(targets.values()))
            maps = {}
            for (name, activation), gradient in zip(targets.items(), gradients, strict=True):
                if name == "vit":
                    activation, gradient = (_tokens_to_map(t, branches["vit"]) for t in (activation, gradient))
                cam = _cam(activation, gradient)[None, None]
                upsampled = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
                maps[name] = _normalise(upsampled[0, 0].cpu().numpy())
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return maps, float(logit.detach()[0])


def _capture(store: list[torch.Tensor]) -> Callable:
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        store.append(output)

    return hook


def _capture_4d(store: list[torch.Tensor]) -> Callable:
    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            store.append(output)

    return hook


def _last_spatial_map(outputs: list[torch.Tensor]) -> torch.Tensor:
    if not outputs:
        raise ValueError("The model's 'cnn' branch produced no 4-D feature map; is it a convolutional network?")
    # Some heads (MobileNetV3's conv head) run after pooling; their 1x1 outputs carry no location.
    spatial = [output for output in outputs if output.shape[-2] * output.shape[-1] > 1]
    return (spatial or outputs)[-1]


def _vit_target(vit: nn.Module) -> nn.Module:
    if not all(hasattr(vit, name) for name in ("blocks", "patch_embed", "num_prefix_tokens")):
        raise ValueError(
            f"The 'vit' branch is a {type(vit).__name__}, not a timm VisionTransformer with blocks, "
            "patch_embed and num_prefix_tokens, so its patch tokens cannot be located."
        )
    # With class-token pooling the last block's patch-token outputs never reach the logit (their gradient
    # is exactly zero); the last block's attention input does, through the class token's attention.
    return vit.blocks[-1].norm1 if getattr(vit, "global_pool", "token") == "token" else vit.blocks[-1]


def _tokens_to_map(tokens: torch.Tensor, vit: nn.Module) -> torch.Tensor:
    # (1, prefix + patches, C) tokens -> (1, C, rows, columns), dropping class and register tokens.
    rows, columns = vit.patch_embed.grid_size
    patches = tokens[:, vit.num_prefix_tokens:]
    if patches.shape[1] != rows * columns:
        raise ValueError(
            f"The ViT produced {patches.shape[1]} patch tokens but its patch grid is {rows}x{columns}; "
            "explain images at the size the model was built for."
        )
    return patches.reshape(patches.shape[0], rows, columns, patches.shape[-1]).permute(0, 3, 1, 2)


def _cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    # Channel weights are the spatially averaged gradients; the ReLU keeps evidence for "fake" only.
    weights = gradients.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activations.float()).sum(dim=1))[0].detach()


def _normalise(heatmap: np.ndarray) -> np.ndarray:
    low, high = float(heatmap.min()), float(heatmap.max())
    if high - low <= 1e-12:
        return np.zeros_like(heatmap, dtype=np.float32)
    return ((heatmap - low) / (high - low)).astype(np.float32)
