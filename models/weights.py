"""Pretrained backbone weights on machines without internet, loaded by timm.

timm does the loading (`pretrained_cfg_overlay=dict(file=...)`: weights_only, classifier dropped,
ViT position embeddings resampled to the model's size). What is left here is choosing the file and
saying what happened. For each backbone that asks for pretrained weights, in order:
1. a local weight file named in the detector kwargs (`cnn_weights`, `vit_weights`, `weights`),
2. the Hugging Face cache, looked up without touching the network,
3. a download from the Hugging Face Hub, only when allowed and the Hub answers within seconds,
4. nothing: `pretrained_policy='required'` raises, `'auto'` warns loudly and keeps the random
   initialisation (status `unavailable`), `'off'` never tries any of this.
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

import timm
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from torch import nn

logger = logging.getLogger(__name__)

PRETRAINED_POLICIES = ("auto", "required", "off")
# Where the detector kwargs live in the platform config; error messages name the full key to set.
CONFIG_PREFIX = "model.kwargs."
# Set to 0 to never attempt a download (CI, air-gapped clusters).
ALLOW_DOWNLOAD_ENV = "DEEPFAKE_ALLOW_DOWNLOAD"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
PROBE_TIMEOUT_S = 3.0


def check_policy(policy: str) -> None:
    """Raise ValueError unless `policy` is one of PRETRAINED_POLICIES."""
    if policy not in PRETRAINED_POLICIES:
        raise ValueError(f"pretrained_policy must be one of {', '.join(PRETRAINED_POLICIES)}; got {policy!r}.")


def create_backbone(name: str, *, pretrained: bool, weights: str | os.PathLike | None, policy: str, weights_key: str,
                    **timm_kwargs: Any) -> tuple[nn.Module, str]:
    """timm backbone `name` without classifier, with pretrained weights as `policy` allows.

    Returns the backbone and its pretrained status: 'local file <path>', 'timm/HF cache', 'downloaded',
    'unavailable' or 'off'. `weights_key` is the kwarg naming the local file.
    """
    check_policy(policy)
    if policy == "off" or not (pretrained or weights):
        return timm.create_model(name, pretrained=False, num_classes=0, **timm_kwargs), "off"
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"Weight file {path} for backbone {name!r} does not exist; fix or unset {CONFIG_PREFIX}{weights_key}."
            )
        return _from_file(name, path, f"weight file {path}", timm_kwargs), f"local file {path}"

    default_cfg = timm.models.get_pretrained_cfg(name)
    hub_id = default_cfg.hf_hub_id if default_cfg is not None else None
    cached = cached_weight_file(hub_id) if hub_id else None
    if cached is not None:
        logger.info("Loading %s weights from the cache: %s", name, cached)
        return _from_file(name, cached, f"cached weights {cached}", timm_kwargs), "timm/HF cache"

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
            return _from_file(name, downloaded, f"downloaded weights {downloaded}", timm_kwargs), "downloaded"
    else:
        tried.append(f"no download was tried ({blocked or 'timm knows no Hub repository for it'})")
    model = timm.create_model(name, pretrained=False, num_classes=0, **timm_kwargs)
    return model, _unavailable(name, hub_id, policy, weights_key, tried)


def _from_file(name: str, path: Path, source: str, timm_kwargs: dict[str, Any]) -> nn.Module:
    try:
        # Built with its pretrained classifier, timm loads strictly (a file for another architecture fails
        # instead of loading half its weights); the classifier is dropped afterwards.
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **timm_kwargs)
    except (RuntimeError, KeyError, ValueError) as err:
        raise ValueError(
            f"The {source} does not fit backbone {name!r}: {str(err)[:500]}. Is it a timm {name!r} state dict "
            f"({', '.join(WEIGHT_SUFFIXES)})?"
        ) from err
    model.reset_classifier(0)
    return model


def cached_weight_file(hub_id: str) -> Path | None:
    """The cached weight file of a timm Hugging Face repository, looking only on disk."""
    repo_id, revision = _split_hub_id(hub_id)
    for filename in HUB_FILENAMES:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True))
        except LocalEntryNotFoundError:
            continue
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
    if hf_constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
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
    # Once: a UserWarning reaches the console (and pytest.warns); a log line as well printed it twice.
    warnings.warn(message, UserWarning, stacklevel=3)
    return "unavailable"
