"""Tests for models/: registry, the hybrid reference, freezing, offline weights, frequency detector."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from models import (
    Detector,
    FrequencyDetector,
    HybridModel,
    azimuthal_spectrum_features,
    create_detector,
    format_parameter_table,
    list_detectors,
    parameter_table,
)
from models.weights import ALLOW_DOWNLOAD_ENV, download_blocked_reason

REPO = Path(__file__).resolve().parents[1]
REFERENCE_PARAMS = 97_894_209
# Detectors above this size are only built on the meta device here; the reference test runs one.
TINY_LIMIT = 10_000_000


@pytest.fixture
def no_pretrained_sources(monkeypatch, tmp_path):
    """An empty Hugging Face / torch-hub cache and downloads switched off; returns the HF cache dir."""
    hf_cache = tmp_path / "hf"
    monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "0")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    return hf_cache


def _state_equal(module: torch.nn.Module, reference: dict[str, torch.Tensor]) -> bool:
    state = module.state_dict()
    return state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_every_detector():
    assert {
        "hybrid_resnet18_vit_b16",
        "hybrid_tiny",
        "cnn_efficientnet_b0",
        "vit_b16",
        "cnn_tiny",
        "vit_tiny",
    } <= set(list_detectors())


def test_unknown_detector_names_the_known_ones():
    with pytest.raises(ValueError, match="hybrid_tiny") as err:
        create_detector("resnet_lstm")
    assert "resnet_lstm" in str(err.value)


def test_unknown_kwargs_are_named():
    with pytest.raises(TypeError, match="'dropout'.*'lr'"):
        create_detector("hybrid_tiny", lr=0.1, dropout=0.5)


def test_kwargs_must_be_json_serialisable():
    with pytest.raises(TypeError, match="JSON"):
        create_detector("hybrid_tiny", cnn_kwargs={"act_layer": torch.nn.GELU})


@pytest.mark.parametrize("name", list_detectors())
def test_registered_detector_contract(name):
    with torch.device("meta"):
        meta_model = create_detector(name, pretrained_policy="off")
    assert isinstance(meta_model, Detector)  # the contract of models/protocol.py
    assert isinstance(meta_model.default_image_size, int)
    assert set(meta_model.pretrained_status.values()) == {"off"}
    assert meta_model.detector_name == name
    assert meta_model.detector_kwargs == {"pretrained_policy": "off"}
    if parameter_table(meta_model)["total"] > TINY_LIMIT:
        return  # full size: the meta build proves the architecture; running it would be slow

    model = create_detector(name, pretrained_policy="off")
    size = model.default_image_size
    logits = model(torch.randn(3, 3, size, size))
    assert logits.shape == (3,)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())

    rebuilt = create_detector(name, **json.loads(json.dumps(model.detector_kwargs)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_full_size_parameter_counts_on_meta():
    counts = {}
    for name in ("hybrid_resnet18_vit_b16", "cnn_efficientnet_b0", "vit_b16"):
        with torch.device("meta"):
            counts[name] = parameter_table(create_detector(name, pretrained_policy="off"))["total"]
    assert counts == {
        "hybrid_resnet18_vit_b16": REFERENCE_PARAMS,
        "cnn_efficientnet_b0": 4_007_548 + 1_281,
        "vit_b16": 85_798_656 + 769,
    }


# --- the reference hybrid -----------------------------------------------------------------------


def test_reference_hybrid_has_97_894_209_trainable_parameters_and_runs():
    model = HybridModel(cnn_backbone="resnet18", cnn_pretrained=False, vit_pretrained=False)
    table = parameter_table(model)
    assert table["total"] == table["trainable"] == REFERENCE_PARAMS
    assert [m.in_features for m in model.head if isinstance(m, torch.nn.Linear)] == [1280, 512, 512]
    assert model.pretrained_status == {"cnn": "off", "vit": "off"}
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2,)
    assert torch.isfinite(logits).all()


def test_reference_snippet_offline_warns_and_random_inits(no_pretrained_sources):
    with pytest.warns(UserWarning, match="RANDOM initialisation") as record:
        model = HybridModel(cnn_backbone="resnet18", cnn_pretrained=True, vit_pretrained=True)
    assert model.pretrained_status == {"cnn": "unavailable", "vit": "unavailable"}
    messages = " ".join(str(w.message) for w in record)
    assert "model.kwargs.cnn_weights" in messages and "model.kwargs.vit_weights" in messages


# --- freezing ------------------------------------------------------------------------------------


def _trainable_after_backward(model: torch.nn.Module) -> set[str]:
    size = model.default_image_size
    model(torch.randn(2, 3, size, size)).sum().backward()
    for name, param in model.named_parameters():
        # The contract that matters to the optimizer: frozen parameters receive no gradient.
        assert (param.grad is not None) == param.requires_grad, name
    return {name for name, param in model.named_parameters() if param.grad is not None}


@pytest.mark.parametrize(
    ("freeze", "trainable", "frozen"),
    [
        ("none", ["cnn.conv1.0.weight", "vit.pos_embed", "head.0.weight"], []),
        (
            "cnn",
            ["vit.blocks.0.attn.qkv.weight", "head.4.bias"],
            ["cnn.conv1.0.weight", "cnn.layer4.0.conv1.weight"],
        ),
        ("vit", ["cnn.layer1.0.conv1.weight", "head.0.weight"], ["vit.pos_embed", "vit.norm.weight"]),
        (
            "backbones",
            ["head.0.weight", "head.4.weight"],
            ["cnn.layer4.0.conv1.weight", "vit.blocks.1.mlp.fc2.weight"],
        ),
        (
            "last1",
            ["cnn.layer4.0.conv1.weight", "vit.blocks.1.mlp.fc2.weight", "vit.norm.weight", "head.0.weight"],
            [
                "cnn.layer3.0.conv1.weight",
                "cnn.conv1.0.weight",
                "vit.blocks.0.attn.qkv.weight",
                "vit.pos_embed",
            ],
        ),
        (
            "last2",
            ["cnn.layer3.0.conv1.weight", "vit.blocks.0.attn.qkv.weight"],
            ["cnn.layer2.0.conv1.weight", "vit.cls_token"],
        ),
    ],
)
def test_freeze_modes_on_the_hybrid(freeze, trainable, frozen):
    model = create_detector("hybrid_tiny", freeze=freeze)
    got = _trainable_after_backward(model)
    assert set(trainable) <= got
    assert not set(frozen) & got
    table = parameter_table(model)
    assert table["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert table["trainable"] + table["frozen"] == table["total"]
    assert sum(m["total"] for m in table["modules"].values()) == table["total"]
    assert table["modules"]["head"]["frozen"] == 0


def test_last_k_on_efficientnet_trains_last_blocks_and_head_conv():
    model = create_detector("cnn_tiny", freeze="last1")
    got = _trainable_after_backward(model)
    blocks = {name.split(".")[2] for name in got if name.startswith("cnn.blocks.")}
    assert blocks == {str(len(model.cnn.blocks) - 1)}
    assert {"cnn.conv_head.weight", "cnn.bn2.weight", "head.weight"} <= got
    assert "cnn.conv_stem.weight" not in got


@pytest.mark.parametrize(
    ("name", "freeze"), [("hybrid_tiny", "everything"), ("hybrid_tiny", "last0"), ("vit_tiny", "cnn")]
)
def test_invalid_freeze_lists_valid_modes(name, freeze):
    with pytest.raises(ValueError, match="none, .*backbones, lastK"):
        create_detector(name, freeze=freeze)


def test_parameter_table_renders_markdown():
    model = create_detector("cnn_tiny", freeze="backbones")
    table = parameter_table(model)
    head = sum(p.numel() for p in model.head.parameters())
    lines = format_parameter_table(table).splitlines()
    assert lines[0] == "| module | total | trainable | frozen |"
    assert f"| head | {head:,} | {head:,} | 0 |" in lines
    assert lines[-1] == f"| **all** | {table['total']:,} | {head:,} | {table['total'] - head:,} |"


# --- pretrained weights without internet --------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_cnn_weights_load_from_a_local_file(tmp_path, suffix, no_pretrained_sources):
    source = timm.create_model("resnet10t", pretrained=False)  # with its 1000-class 'fc' head
    path = tmp_path / f"resnet10t{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        safetensors.torch.save_file(source.state_dict(), str(path))
    model = create_detector("hybrid_tiny", cnn_weights=str(path))
    assert model.pretrained_status == {"cnn": f"local file {path}", "vit": "off"}
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert _state_equal(model.cnn, expected)


def test_single_detector_weights_resample_vit_position_embeddings(tmp_path):
    source = timm.create_model("test_vit", pretrained=False, img_size=96)
    path = tmp_path / "test_vit.pth"
    torch.save(source.state_dict(), path)
    model = create_detector("vit_tiny", weights=str(path))
    assert model.pretrained_status == {"vit": f"local file {path}"}
    assert torch.equal(model.vit.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model.vit.pos_embed.shape != source.pos_embed.shape  # timm resampled them to 64 px
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model_state_dict": source.state_dict()}, wrapped)  # not a timm state dict: a sentence
    with pytest.raises(ValueError, match="Is it a timm 'test_vit' state dict"):
        create_detector("vit_tiny", weights=str(wrapped))


def test_missing_weight_file_names_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.kwargs.vit_weights"):
        create_detector("hybrid_tiny", vit_weights=str(tmp_path / "nowhere.pth"))


def test_wrong_weight_file_is_an_error_not_a_silent_partial_load(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit backbone 'resnet10t'"):
        create_detector("hybrid_tiny", cnn_weights=str(path))


def test_weights_load_from_the_hugging_face_cache(no_pretrained_sources):
    source = timm.create_model("resnet10t", pretrained=False)
    repo_id = source.pretrained_cfg["hf_hub_id"]
    commit = "0" * 40
    repo_dir = no_pretrained_sources / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    safetensors.torch.save_file(source.state_dict(), str(snapshot / "model.safetensors"))

    model = create_detector("hybrid_tiny", cnn_pretrained=True)
    assert model.pretrained_status == {"cnn": "timm/HF cache", "vit": "off"}
    assert _state_equal(model.cnn, {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")})


def test_required_policy_without_weights_names_the_keys(no_pretrained_sources):
    with pytest.raises(RuntimeError, match="model.kwargs.cnn_weights") as err:
        create_detector("hybrid_tiny", cnn_pretrained=True, pretrained_policy="required")
    assert str(no_pretrained_sources) in str(err.value)


def test_auto_policy_without_weights_warns_and_random_inits(no_pretrained_sources):
    with pytest.warns(UserWarning, match="model.kwargs.weights"):
        model = create_detector("cnn_tiny", pretrained=True)
    assert model.pretrained_status == {"cnn": "unavailable"}


def test_off_policy_never_touches_weight_files(tmp_path):
    model = create_detector("hybrid_tiny", cnn_weights=str(tmp_path / "absent.pth"), pretrained_policy="off")
    assert model.pretrained_status == {"cnn": "off", "vit": "off"}


def test_invalid_policy_is_rejected():
    with pytest.raises(ValueError, match="auto, required, off"):
        create_detector("cnn_tiny", pretrained_policy="sometimes")


def test_downloads_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "0")
    assert download_blocked_reason() == f"{ALLOW_DOWNLOAD_ENV}=0"
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download_blocked_reason() == "HF_HUB_OFFLINE is set"


# --- the frequency detector ----------------------------------------------------------------------


def _natural_like_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    # Natural images have a power spectrum falling roughly as 1/f^2; random phases make each one unique.
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    amplitude = 1.0 / np.maximum(freq, 1.0 / size)
    phase = np.exp(2j * np.pi * rng.uniform(size=(size, size, 3)))
    pixels = np.real(np.fft.ifft2(amplitude[..., None] * phase, axes=(0, 1)))
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    return (pixels * 255).astype(np.uint8)


def _resampled(image: np.ndarray) -> np.ndarray:
    # The down-up resampling a face swap leaves behind: the top of the spectrum is lost.
    size = image.shape[0]
    small = Image.fromarray(image).resize((size // 2, size // 2), Image.BILINEAR)
    return np.asarray(small.resize((size, size), Image.BILINEAR))


def _real_and_fake(seed: int, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    real = [_natural_like_image(rng) for _ in range(n)]
    return real + [_resampled(image) for image in real], np.array([0] * n + [1] * n)


def test_spectrum_features_are_fixed_size_normalised_and_accept_pil():
    image = _natural_like_image(np.random.default_rng(0), size=48)
    features = azimuthal_spectrum_features(image, n_bins=32)
    assert features.shape == (32,)
    assert features.min() == 0.0 and features.max() == 1.0
    np.testing.assert_allclose(azimuthal_spectrum_features(Image.fromarray(image), n_bins=32), features)


def test_frequency_detector_separates_resampled_images():
    train_images, train_labels = _real_and_fake(seed=1, n=30)
    test_images, test_labels = _real_and_fake(seed=2, n=20)
    detector = FrequencyDetector().fit(train_images, train_labels)
    fake_probability = detector.predict_proba(test_images)
    accuracy = np.mean((fake_probability > 0.5) == test_labels)
    assert accuracy >= 0.9


def test_frequency_detector_state_round_trips_through_a_weights_only_file(tmp_path):
    images, labels = _real_and_fake(seed=3, n=10)
    detector = FrequencyDetector(n_bins=32).fit(images, labels)
    path = tmp_path / "frequency.pth"
    torch.save({"frequency_state": detector.to_state()}, path)
    restored = FrequencyDetector.from_state(torch.load(path, weights_only=True)["frequency_state"])
    np.testing.assert_allclose(restored.predict_proba(images), detector.predict_proba(images))


def test_frequency_detector_needs_both_classes():
    images, _ = _real_and_fake(seed=4, n=3)
    with pytest.raises(ValueError, match="both present"):
        FrequencyDetector().fit(images, [0] * len(images))


def test_the_readme_detector_example_registers_a_detector_that_keeps_the_contract(tmp_path):
    text = (REPO / "README.md").read_text()
    example = text.split("<!-- tested: tests/test_models.py runs this example -->", 1)[1]
    example = example.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "resnet_example.py").write_text(example)
    # In a process of its own: the registry is global, and the example adds to it.
    check = """
import resnet_example, torch
from models import Detector, create_detector, list_detectors, parameter_table
assert "cnn_resnet18" in list_detectors()
model = create_detector("cnn_resnet18", pretrained_policy="off", freeze="cnn")
assert isinstance(model, Detector) and model.detector_name == "cnn_resnet18"
assert model.detector_kwargs == {"pretrained_policy": "off", "freeze": "cnn"}
assert model(torch.randn(2, 3, 64, 64)).shape == (2,)
table = parameter_table(model)
assert table["trainable"] == 512 + 1 and table["frozen"] == table["total"] - 513
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
