"""Pretrained backbone weights on machines without internet.

For each backbone that asks for pretrained weights, the sources are tried in this order:
1. a local weight file named in the detector kwargs (`cnn_weights`, `vit_weights`, `weights`),
2. the Hugging Face cache (and timm's older torch-hub cache), looked up without touching the network,
3. a download from the Hugging Face Hub, only when allowed and the Hub answers within seconds,
4. nothing: `pretrained_policy='required'` raises, `'auto'` warns loudly and keeps the random
   initialisation, `'off'` never tries any of this.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn
from torch import nn

logger = logging.getLogger(__name__)

PRETRAINED_POLICIES = ("auto", "required", "off")
# Where the detector kwargs live in the platform config; error messages name the full key to set.
CONFIG_PREFIX = "model.kwargs."
# Set to 0 to never attempt a download (CI, air-gapped clusters).
ALLOW_DOWNLOAD_ENV = "DEEPFAKE_ALLOW_DOWNLOAD"
# Backbones are built with num_classes=0, so ImageNet classifier weights have nowhere to go.
CLASSIFIER_PREFIXES = ("fc", "head", "classifier", "head_dist")
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
PROBE_TIMEOUT_S = 3.0


def check_policy(policy: str) -> None:
    """Raise ValueError unless `policy` is one of PRETRAINED_POLICIES."""
    if policy not in PRETRAINED_POLICIES:
        raise ValueError(
            f"pretrained_policy must be one of {', '.join(PRETRAINED_POLICIES)}; got {policy!r}."
        )


def create_backbone(
    name: str,
    *,
    pretrained: bool,
    weights: str | os.PathLike | None,
    policy: str,
    weights_key: str,
    **timm_kwargs: Any,
) -> tuple[nn.Module, str]:
    """Create timm backbone `name` without classifier; load pretrained weights as `policy` allows.

    Returns the backbone and its pretrained status: 'local file <path>', 'timm/HF cache',
    'downloaded', 'unavailable' or 'off'. `weights_key` is the kwarg naming the local file.
    """
    check_policy(policy)
    model = timm.create_model(name, pretrained=False, num_classes=0, **timm_kwargs)
    if policy == "off" or not (pretrained or weights):
        return model, "off"
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"Weight file {path} for backbone {name!r} does not exist; "
                f"fix or unset {CONFIG_PREFIX}{weights_key}."
            )
        load_backbone_state(model, read_state_dict(path), source=f"weight file {path}")
        return model, f"local file {path}"

    cached = cached_weight_file(model.pretrained_cfg)
    if cached is not None:
        load_backbone_state(model, read_state_dict(cached), source=f"cached weights {cached}")
        logger.info("Loaded %s weights from the cache: %s", name, cached)
        return model, "timm/HF cache"

    hub_id = model.pretrained_cfg.get("hf_hub_id")
    tried = [
        f"no local file was given ({CONFIG_PREFIX}{weights_key} is unset)",
        f"the Hugging Face cache {hf_constants.HF_HUB_CACHE} holds no {hub_id or name!r} weights",
    ]
    blocked = download_blocked_reason()
    if blocked is None and hub_id:
        try:
            downloaded = download_weight_file(hub_id)
        except Exception as err:  # any download failure falls back to the policy, reason kept
            tried.append(f"the download from the Hugging Face Hub failed ({err})")
        else:
            load_backbone_state(model, read_state_dict(downloaded), source=f"downloaded weights {downloaded}")
            return model, "downloaded"
    else:
        tried.append(f"no download was tried ({blocked or 'timm knows no Hub repository for it'})")
    return model, _unavailable(name, hub_id, policy, weights_key, tried)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or from .pth/.bin with torch.load(weights_only=True)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state = safetensors.torch.load_file(str(path), device="cpu")
    else:
        # weights_only: a weight file from a stranger must not be able to run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints wrap the weights; timm and torchvision files are the bare state dict.
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors.")
    # DataParallel/DDP checkpoints prefix every key with 'module.'.
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_backbone_state(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str) -> None:
    """Load a timm-format state dict into a classifier-less backbone, strictly except for the classifier."""
    state_dict = {k: v for k, v in state_dict.items() if k.split(".")[0] not in CLASSIFIER_PREFIXES}
    if isinstance(model, VisionTransformer):
        # timm's own ViT filter resamples position embeddings to this model's image size.
        state_dict = vit_checkpoint_filter_fn(state_dict, model)
    arch = model.pretrained_cfg.get("architecture", type(model).__name__)
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:
        raise ValueError(f"The {source} does not fit backbone {arch!r}: {err}") from err
    if missing or unexpected:
        raise ValueError(
            f"The {source} does not fit backbone {arch!r}: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}. Is it a timm {arch!r} state dict?"
        )


def cached_weight_file(pretrained_cfg: dict[str, Any]) -> Path | None:
    """Return the cached weight file for a timm pretrained config, looking only on disk."""
    hub_id = pretrained_cfg.get("hf_hub_id")
    if hub_id:
        repo_id, revision = _split_hub_id(hub_id)
        for filename in HUB_FILENAMES:
            try:
                return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True))
            except LocalEntryNotFoundError:
                continue
    url = pretrained_cfg.get("url")
    if url:
        # timm before 0.9 cached weights under torch hub's checkpoints folder.
        legacy = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if legacy.suffix in WEIGHT_SUFFIXES and legacy.is_file():
            return legacy
    return None


def download_weight_file(hub_id: str) -> Path:
    """Download a timm weight file from the Hugging Face Hub into its cache and return its path."""
    repo_id, revision = _split_hub_id(hub_id)
    for filename in HUB_FILENAMES[:-1]:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        except EntryNotFoundError:
            continue
    return Path(hf_hub_download(repo_id, HUB_FILENAMES[-1], revision=revision))


def download_blocked_reason() -> str | None:
    """Say why a download must not be tried now, or return None when it may be."""
    if os.environ.get(ALLOW_DOWNLOAD_ENV, "1") == "0":
        return f"{ALLOW_DOWNLOAD_ENV}=0"
    if hf_constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "0").lower() in (
        "1",
        "true",
        "yes",
        "on",
    ):
        return "HF_HUB_OFFLINE is set"
    if not _reachable(hf_constants.ENDPOINT):
        return f"{hf_constants.ENDPOINT} is unreachable"
    return None


def _reachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    parsed = urlparse(url)
    answered: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout_s):
                answered.append(True)
        except OSError:
            answered.append(False)

    # DNS lookups ignore socket timeouts, so the wait is bounded here instead.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return answered == [True]


def _split_hub_id(hub_id: str) -> tuple[str, str | None]:
    repo_id, _, revision = hub_id.partition("@")
    return repo_id, revision or None


def _unavailable(name: str, hub_id: str | None, policy: str, weights_key: str, tried: list[str]) -> str:
    message = (
        f"No pretrained weights found for backbone {name!r}: {'; '.join(tried)}. "
        f"To use them offline, set {CONFIG_PREFIX}{weights_key} to a timm state-dict file "
        f"({', '.join(WEIGHT_SUFFIXES)}), or copy a Hugging Face cache holding {hub_id or name!r} into "
        f"{hf_constants.HF_HUB_CACHE} (fill it on a machine with internet by running "
        f"timm.create_model({name!r}, pretrained=True))."
    )
    if policy == "required":
        raise RuntimeError(f"{message} pretrained_policy='required' forbids random initialisation.")
    message += (
        f" Continuing with RANDOM initialisation of {name!r} (pretrained_policy='auto'); "
        "expect accuracy far below the pretrained reference."
    )
    warnings.warn(message, UserWarning, stacklevel=3)
    logger.warning(message)
    return "unavailable"
