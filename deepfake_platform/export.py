"""Models outside PyTorch: ONNX and TorchScript files for embedded inference, and the INT8 model.

`export_model` writes a detector as ONNX (runs with ONNX Runtime alone) or TorchScript (plain torch),
with a dynamic batch dimension, two outputs (`fake_probability`, `logit`) and its preprocessing in a JSON
file beside it. `Int8Model` is the `precision: int8` of the predict path: the same ONNX graph with its
matrix multiplications quantised to INT8 by ONNX Runtime's dynamic quantisation (weights int8 ahead of
time, activations per batch), run by ONNX Runtime. Quantised files are cached by the checkpoint's sha256.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfake_platform.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from deepfake_platform.errors import InvalidInput
from deepfake_platform.files import write_text_atomic, write_to_path_atomic

FORMATS = ("onnx", "torchscript")
OPSET = 17
INPUT = "images"
OUTPUTS = ("fake_probability", "logit")


class WithProbability(nn.Module):
    """A detector's logits and the (temperature-calibrated) fake probabilities, the two outputs of an exported
    model."""

    def __init__(self, detector: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.detector = detector
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.detector(images).float()
        return torch.sigmoid(logit / self.temperature), logit


def example_batch(image_size: int, batch: int = 2) -> torch.Tensor:
    """A fixed random batch, the tracing input of an export."""
    return torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))


def write_onnx(detector: nn.Module, image_size: int, path: Path, temperature: float = 1.0) -> Path:
    """The detector (fp32, eval mode) as an ONNX file with a dynamic batch dimension."""
    wrapped = WithProbability(detector, temperature).eval().float()
    axes = {INPUT: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUTS}}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer notes
            torch.onnx.export(wrapped, (example_batch(image_size),), str(tmp), input_names=[INPUT],
                              output_names=list(OUTPUTS), dynamic_axes=axes, opset_version=OPSET, dynamo=False)

    return write_to_path_atomic(path, write)


def write_torchscript(detector: nn.Module, image_size: int, path: Path, temperature: float = 1.0) -> Path:
    """The detector (fp32, eval mode) traced to TorchScript; any batch size runs."""
    wrapped = WithProbability(detector, temperature).eval().float()

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapped, example_batch(image_size), check_trace=False)
            traced.save(str(tmp))

    return write_to_path_atomic(path, write)


def preprocessing(image_size: int, threshold: float, *, detector: str, sha256: str, faces: dict[str, Any],
                  video_threshold: float | None = None, temperature: float = 1.0) -> dict[str, Any]:
    """What a program without this project must do to an image before the model, and how to read the answer."""
    return {
        "input": {"name": INPUT, "shape": ["batch", 3, image_size, image_size], "dtype": "float32",
                  "layout": "NCHW, RGB"},
        "resize_short_side": int(image_size * 256 / 224),
        "resample": "bilinear",
        "center_crop": image_size,
        "scale": 1 / 255,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "outputs": {"fake_probability": "sigmoid of logit / temperature (the calibration), shape [batch]",
                    "logit": "the raw logit, shape [batch]"},
        "temperature": temperature,
        "threshold": threshold,
        "video_threshold": video_threshold,
        "label": "fake when fake_probability >= threshold, else real",
        "faces": faces,
        "detector": detector,
        "checkpoint_sha256": sha256,
    }


def export_model(predictor: Any, fmt: str, out: Path) -> tuple[Path, Path]:
    """Write `predictor`'s model (deepfake_platform.predict.Predictor) as `fmt` to `out`, and its
    preprocessing to `out` with `.json` as suffix; both paths."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    calibration = predictor.calibration
    if calibration.method == "isotonic":
        raise InvalidInput("an isotonic calibration is not exported (it is a lookup table, not an operation of the "
                           "graph); calibrate the checkpoint with calibration.method temperature to export it.")
    module = predictor.module.to(memory_format=torch.contiguous_format)
    size = predictor.info.image_size
    (write_onnx if fmt == "onnx" else write_torchscript)(module, size, out, calibration.temperature)
    meta = preprocessing(size, predictor.info.threshold, detector=predictor.info.name, sha256=predictor.info.sha256,
                         faces=predictor.faces, video_threshold=predictor.record.video_threshold,
                         temperature=calibration.temperature)
    sidecar = write_text_atomic(out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return out, sidecar


def cache_dir() -> Path:
    """Where quantised models are kept between runs ($DEEPFAKE_CACHE, else ~/.cache/deepfake-platform)."""
    root = os.environ.get("DEEPFAKE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepfake-platform"
    return Path(root)


def quantize_int8(source: Path, target: Path) -> Path:
    """`source` ONNX with its MatMul/Gemm weights quantised to int8 (dynamic quantisation) at `target`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp: Path) -> None:
        # The convolutions stay fp32: the ResNet's are a small share of the FLOPs, and the exporter gives
        # their weights as computed (folded) values ORT's quantiser does not take.
        logging.disable(logging.WARNING)  # its advice to pre-process the graph first, printed on every call
        try:
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            logging.disable(logging.NOTSET)

    return write_to_path_atomic(target, write)


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on `path`, using `threads` (default: torch's) threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Int8Model:
    """A detector quantised to INT8 and run by ONNX Runtime on the CPU: logits of a preprocessed batch."""

    def __init__(self, detector: nn.Module, image_size: int, sha256: str = ""):
        try:
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise RuntimeError("precision int8 runs on ONNX Runtime: `pip install onnxruntime` (a dependency of "
                               "this project; reinstall it with `make setup`).") from err
        if sha256:
            target = cache_dir() / "int8" / f"{sha256}-{image_size}.onnx"
            if not target.is_file():
                self._build(detector, image_size, target)
        else:  # a model without a file: nothing to key a cache on
            target = Path(tempfile.mkdtemp(prefix="deepfake-int8-")) / "model.onnx"
            self._build(detector, image_size, target)
        self.path = target
        self.session = onnx_session(target)

    @staticmethod
    def _build(detector: nn.Module, image_size: int, target: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="deepfake-export-") as tmp:
            fp32 = write_onnx(detector.to(memory_format=torch.contiguous_format), image_size, Path(tmp) / "fp32.onnx")
            quantize_int8(fp32, target)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """The logits (B,) of a preprocessed batch (B, 3, H, W)."""
        batch = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return self.session.run(["logit"], {INPUT: batch})[0].astype(np.float32).reshape(-1)


def exported_probabilities(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """What an exported file answers for `images`, run as a program without this project would run it."""
    if fmt == "onnx":
        return onnx_session(path).run(["fake_probability"], {INPUT: images.numpy()})[0].reshape(-1)
    model = torch.jit.load(str(path))
    with torch.no_grad():
        return model(images)[0].numpy().reshape(-1)


def parity(predictor: Any, path: Path, fmt: str, batch: int = 3) -> float:
    """The largest |difference| between an exported model's probabilities and `predictor`'s (fp32) on a batch
    whose size differs from the tracing batch, so the dynamic batch dimension is exercised too."""
    images = example_batch(predictor.info.image_size, batch) * 0.5
    expected = predictor.predict_tensor(images)
    return float(np.max(np.abs(exported_probabilities(path, fmt, images) - expected)))

