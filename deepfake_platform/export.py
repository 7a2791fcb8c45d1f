"""Models outside PyTorch: ONNX and TorchScript files for embedded inference, and the INT8 model.

`export_model` writes a detector as ONNX (runs with ONNX Runtime alone) or TorchScript (plain torch),
with a dynamic batch dimension, two outputs (`fake_probability`, `logit`) and its preprocessing in a JSON
file beside it. `Int8Model` is the `precision: int8` of the predict path: the same ONNX graph
quantised by ONNX Runtime and run by it. Static quantisation (QDQ): int8 weights per output channel and
activation ranges calibrated ahead of time on the checkpoint's validation images, for the convolutions and
matrix multiplications; the layers that read the image and the head stay fp32. Without validation images
to calibrate on, the matrix multiplications are quantised dynamically (activations per batch). Quantised
files are cached by the checkpoint's sha256 and the method.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable
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


# How many validation images calibrate the activation ranges of static quantisation, and in which batches.
CALIBRATION_IMAGES = 64
CALIBRATION_BATCH = 16


def quantize_int8(source: Path, target: Path, calibration: Iterable[np.ndarray] | None = None) -> Path:
    """`source` ONNX quantised to int8 at `target`: statically (QDQ) with activation ranges from the
    `calibration` batches (preprocessed, float32 NCHW), else dynamically (MatMul/Gemm only)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self, batches: Iterable[np.ndarray]):
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: np.ascontiguousarray(batch, dtype=np.float32)}

    def write(tmp: Path) -> None:
        logging.disable(logging.WARNING)  # its advice to pre-process the graph first, printed on every call
        try:
            if calibration is None:
                quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"])
                return
            graph = onnx.load(str(source)).graph
            inputs = {value.name for value in graph.input}
            # The first convolution of each branch sees the image itself: quantising its folded-BatchNorm output
            # to one int8 range per tensor moved the tiny hybrid's probabilities by 0.04 on its own (every other
            # layer by at most 0.006), for a layer of 3 input channels, a small share of the FLOPs. The head's
            # Gemms are a few thousand multiply-adds: fp32 too.
            first_convs = [node.name for node in graph.node if node.op_type == "Conv" and inputs & set(node.input)]
            quantize_static(str(source), str(tmp), Batches(calibration), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            op_types_to_quantize=["Conv", "MatMul"], nodes_to_exclude=first_convs)
        finally:
            logging.disable(logging.NOTSET)

    return write_to_path_atomic(target, write)


def calibration_images(record: Any, limit: int = CALIBRATION_IMAGES) -> list[str]:
    """Up to `limit` validation images of the data a checkpoint (DetectorCheckpoint) was trained on, both classes
    mixed (a fixed shuffle); [] when its data root is not reachable here. The root is the record's
    data.root, else the embedded set (under the output home, where `make run` builds it)."""
    from deepfake_platform.data import EMBEDDED_SETS, load_split
    from deepfake_platform.data.scan import DatasetError
    from deepfake_platform.outputs import output_home

    data = record.experiment_config.data
    home = output_home()
    root = home / Path(data.root).expanduser() if data.root else home / "data" / Path(EMBEDDED_SETS[data.embedded]["path"]).name
    if not root.is_dir():
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreadable files are skipped; training already named them
            samples = load_split(root, "val")
    except (DatasetError, OSError):
        return []
    order = np.random.default_rng(0).permutation(len(samples))[:limit]
    return [samples[i][0] for i in order]


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

    def __init__(self, detector: nn.Module, image_size: int, sha256: str = "",
                 calibration: Callable[[], Iterable[np.ndarray]] | None = None):
        """`calibration` gives the preprocessed validation batches static quantisation calibrates on (called only
        when no quantised file is cached); None: dynamic quantisation."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise RuntimeError("precision int8 runs on ONNX Runtime: `pip install onnxruntime` (a dependency of "
                               "this project; reinstall it with `make setup`).") from err
        self.method = "static" if calibration is not None else "dynamic"
        if sha256:
            target = cache_dir() / "int8" / f"{sha256}-{image_size}-{self.method}.onnx"
            if not target.is_file():
                self._build(detector, image_size, target, calibration)
        else:  # a model without a file: nothing to key a cache on
            target = Path(tempfile.mkdtemp(prefix="deepfake-int8-")) / "model.onnx"
            self._build(detector, image_size, target, calibration)
        self.path = target
        self.session = onnx_session(target)

    @staticmethod
    def _build(detector: nn.Module, image_size: int, target: Path,
               calibration: Callable[[], Iterable[np.ndarray]] | None) -> None:
        with tempfile.TemporaryDirectory(prefix="deepfake-export-") as tmp:
            fp32 = write_onnx(detector.to(memory_format=torch.contiguous_format), image_size, Path(tmp) / "fp32.onnx")
            quantize_int8(fp32, target, None if calibration is None else calibration())

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """The logits (B,) of a preprocessed batch (B, 3, H, W)."""
        batch = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return self.session.run(["logit"], {INPUT: batch})[0].astype(np.float32).reshape(-1)


def int8_model(predictor: Any) -> Int8Model:
    """The int8 model of a Predictor's checkpoint: statically quantised, calibrated on the checkpoint's
    validation images, or dynamically (with a one-line note) when none are reachable."""
    from deepfake_platform.data import load_image

    paths = calibration_images(predictor.record)
    if not paths:
        print(f"int8: no validation images of {predictor.info.name}'s data are reachable here to calibrate on; "
              "quantising its matrix multiplications dynamically (convolutions stay fp32).", file=sys.stderr, flush=True)
        return Int8Model(predictor.module, predictor.info.image_size, predictor.info.sha256)

    def batches() -> Iterable[np.ndarray]:
        for first in range(0, len(paths), CALIBRATION_BATCH):
            images = [load_image(path) for path in paths[first:first + CALIBRATION_BATCH]]
            yield predictor.preprocess(images).numpy()

    return Int8Model(predictor.module, predictor.info.image_size, predictor.info.sha256, calibration=batches)


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

