"""Backbone freezing, the `freeze` kwarg every detector takes and tuning searches over.

A detector has a `head` and one or both backbones named `cnn` and `vit`. Modes:
'none' (all trainable), 'cnn' / 'vit' (that backbone frozen), 'backbones' (head only), and
'lastK' such as 'last2': in every backbone only the last K blocks (ResNet layer1..layer4,
ViT and EfficientNet `blocks`) and the layers after them (ViT final norm, EfficientNet head conv)
train, plus the head.
"""

from __future__ import annotations

import re

from torch import nn

BACKBONE_NAMES = ("cnn", "vit")
# The grammar of a freeze mode, whatever the detector; which modes a given detector accepts: freeze_modes().
FIXED_MODES = ("none", *BACKBONE_NAMES, "backbones")
FREEZE_MODE_HELP = "none, cnn, vit, backbones or lastK with K a positive integer (e.g. last2)"
# Layers that sit after the last block: they belong to the top of the network, so 'lastK' trains them.
TAIL_NAMES = ("norm", "fc_norm", "conv_head", "bn2")
_LAST_K = re.compile(r"last([1-9][0-9]*)")


def is_freeze_mode(mode: str) -> bool:
    """Whether `mode` is written in the freeze-mode grammar (see FREEZE_MODE_HELP)."""
    return mode in FIXED_MODES or _LAST_K.fullmatch(mode) is not None


def freeze_modes(model: nn.Module) -> list[str]:
    """Return the freeze modes valid for `model`, 'lastK' standing for last1, last2, ..."""
    return ["none", *backbones(model), "backbones", "lastK"]


def backbones(model: nn.Module) -> dict[str, nn.Module]:
    """Return the detector's backbones by name ('cnn', 'vit')."""
    return {name: module for name, module in model.named_children() if name in BACKBONE_NAMES}


def apply_freeze(model: nn.Module, freeze: str) -> None:
    """Set requires_grad on every parameter of `model` according to the freeze mode."""
    found = backbones(model)
    last_k = _LAST_K.fullmatch(freeze)
    if not (last_k or freeze in ("none", "backbones", *found)):
        raise ValueError(
            f"freeze={freeze!r} is not valid for {type(model).__name__}; valid: "
            f"{', '.join(freeze_modes(model))} (with K a positive integer, e.g. last2)."
        )
    model.requires_grad_(True)
    if freeze in found:
        found[freeze].requires_grad_(False)
    elif freeze == "backbones" or last_k:
        for backbone in found.values():
            backbone.requires_grad_(False)
            if last_k:
                for module in top_modules(backbone, int(last_k.group(1))):
                    module.requires_grad_(True)


def top_modules(backbone: nn.Module, k: int) -> list[nn.Module]:
    """Return the last `k` blocks of a timm backbone and the layers after them."""
    tail = [module for name, module in backbone.named_children() if name in TAIL_NAMES]
    return backbone_blocks(backbone)[-k:] + tail


def backbone_blocks(backbone: nn.Module) -> list[nn.Module]:
    """Return the blocks (stages) of a timm backbone, input side first."""
    if all(hasattr(backbone, f"layer{i}") for i in range(1, 5)):
        return [getattr(backbone, f"layer{i}") for i in range(1, 5)]
    for name in ("blocks", "stages"):
        blocks = getattr(backbone, name, None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)):
            return list(blocks)
    raise ValueError(
        f"Cannot find the blocks of {type(backbone).__name__}: 'lastK' freezing supports timm ResNets "
        "(layer1..layer4) and models with `blocks` or `stages` (ViT, EfficientNet, ConvNeXt)."
    )


def parameter_table(model: nn.Module) -> dict:
    """Count total, trainable and frozen parameters, overall and per top-level module."""
    groups = {name: list(child.parameters()) for name, child in model.named_children()}
    own = list(model.parameters(recurse=False))
    if own:
        groups["(own)"] = own
    modules = {name: _counts(params) for name, params in groups.items()}
    return {**_counts(list(model.parameters())), "modules": modules}


def format_parameter_table(table: dict) -> str:
    """Render a parameter_table() as a Markdown table."""
    lines = ["| module | total | trainable | frozen |", "| --- | ---: | ---: | ---: |"]
    rows = [*table["modules"].items(), ("**all**", table)]
    lines += [f"| {name} | {c['total']:,} | {c['trainable']:,} | {c['frozen']:,} |" for name, c in rows]
    return "\n".join(lines)


def _counts(params: list[nn.Parameter]) -> dict[str, int]:
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
