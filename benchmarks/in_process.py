"""The phases measured in this process, without Ray: training, inference, int8 agreement and ONNX parity.

Each returns {figure name: figures}, as `Phases.run` records them.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.machine import matmul_flops
from benchmarks.phases import Phases
from benchmarks.runners import (
    naive_fp32_infer_runner,
    naive_fp32_train_runner,
    platform_train_runner,
    predictor_runner,
)
from benchmarks.settings import Settings
from benchmarks.timing import interleaved, percentile
from benchmarks.workspace import save_random_checkpoint
from deepfake_platform.config import ExperimentConfig
from deepfake_platform.metrics import predicted_fake
from deepfake_platform.training import build_detector


def measure_training(config: ExperimentConfig, naive_model: torch.nn.Module, data_root: Path,
                     s: Settings) -> dict[str, dict[str, Any]]:
    """Naive fp32 loop (on `naive_model`) and the platform step without Ray, interleaved round by round."""
    from torch.utils.data import DataLoader

    from deepfake_platform.checkpoints import input_size
    from deepfake_platform.data import ImageDataset, build_transform, load_split
    from deepfake_platform.training import make_loaders

    size = input_size(config, naive_model)
    naive_loader = DataLoader(ImageDataset(load_split(data_root, "train"), build_transform("train", size)),
                              batch_size=config.train.batch_size, shuffle=True)
    platform_loader = make_loaders(config, data_root, size, 0, 1)[0]
    runners = {
        "train_naive_fp32": naive_fp32_train_runner(naive_model, naive_loader, lr=config.train.lr),
        "train_platform": platform_train_runner(config, platform_loader, torch.device("cpu")),
    }
    return interleaved(runners, warmup=s.train_warmup, steps=s.train_steps, rounds=s.train_rounds)


def measure_inference(naive_model: torch.nn.Module, checkpoint: Path, data_root: Path, s: Settings,
                      batch_size: int) -> dict[str, dict[str, Any]]:
    """Naive fp32 inference (on `naive_model`), the predict path at the platform's precision and at int8 on
    the same batch, interleaved; then the bare predict path's single-image latency (decode included)."""
    from deepfake_platform.data import load_image, load_split
    from deepfake_platform.predict import Predictor

    naive_model.zero_grad(set_to_none=True)  # a training phase may have left its gradients
    predictor = Predictor(checkpoint)  # precision auto, as predict.py, score.py and Serve run it
    int8 = Predictor(checkpoint, precision="int8")  # quantised once here, outside the timing
    paths = [path for path, _ in load_split(data_root, "train")][:batch_size]
    batch = predictor.preprocess([load_image(path) for path in paths])
    runners = {
        "infer_naive_fp32": naive_fp32_infer_runner(naive_model, batch),
        "infer_predictor": predictor_runner(predictor, batch),
        "infer_int8": predictor_runner(int8, batch),
    }
    figures = interleaved(runners, warmup=s.infer_warmup, steps=s.infer_steps, rounds=s.infer_rounds)
    body = Path(paths[0]).read_bytes()

    def single() -> None:  # what Serve does for one upload, without Serve: decode, preprocess, predict
        predictor.predict_images([Image.open(io.BytesIO(body)).convert("RGB")])

    single()
    latencies = []
    for _ in range(max(3, s.serve_single)):
        start = time.perf_counter()
        single()
        latencies.append(time.perf_counter() - start)
    figures["bare_single"] = {"p50_ms": 1000 * percentile(latencies, 50), "requests": float(len(latencies))}
    return figures


def int8_agreement(checkpoint: Path, data_root: Path, split: str = "test", limit: int = 256) -> dict[str, float]:
    """int8 against the platform's precision on a split's images: mean |difference| of the probabilities, the
    share of images given the same label at the checkpoint's threshold, the share of the reference scores at
    least 0.05 from that threshold (near 0 means the labels are coin tosses and agreement says little) and
    whether int8 was calibrated (static quantisation) or fell back to dynamic."""
    from benchmarks.int8 import scores_spread
    from deepfake_platform.data import load_image, load_split
    from deepfake_platform.predict import Predictor

    reference, int8 = Predictor(checkpoint), Predictor(checkpoint, precision="int8")
    paths = [path for path, _ in load_split(data_root, split)][:limit]
    if not paths:
        raise RuntimeError(f"no {split} images under {data_root} to compare int8 on")
    expected, got = [], []
    for start in range(0, len(paths), 16):
        batch = reference.preprocess([load_image(path) for path in paths[start:start + 16]])
        expected.append(reference.predict_tensor(batch))
        got.append(int8.predict_tensor(batch))
    p, q = np.concatenate(expected), np.concatenate(got)
    threshold = reference.info.threshold
    same_label = predicted_fake(p, threshold) == predicted_fake(q, threshold)
    return {"mean_abs_diff": float(np.mean(np.abs(p - q))), "label_agreement": float(np.mean(same_label)),
            "images": float(len(paths)), "spread": scores_spread(p, threshold),
            "calibrated": 1.0 if int8.int8.method == "static" else 0.0}


def measure_onnx_parity(checkpoint: Path, workdir: Path) -> dict[str, dict[str, Any]]:
    """experiments/export.py's ONNX export of the checkpoint and its fp32 parity check."""
    from deepfake_platform.export import export_model, parity
    from deepfake_platform.predict import Predictor

    predictor = Predictor(checkpoint, precision="fp32")
    path, _ = export_model(predictor, "onnx", workdir / "export" / "model.onnx")
    return {"onnx": {"max_abs_diff": parity(predictor, path, "onnx")}}


def measure_without_ray(config: ExperimentConfig, data_root: Path, s: Settings, infer_batch: int,
                        phases: Phases, checkpoint: Path, workdir: Path) -> None:
    """The phases in this process: matmul peak, training, inference, int8 and export; writes the model to
    `checkpoint`."""
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    # One randomly initialised detector serves as the checkpoint and as the naive loops' model.
    naive_model = build_detector(config)
    save_random_checkpoint(naive_model, config, checkpoint)
    phases.run("hardware: matmul peak", lambda: {"matmul_peak": {
        "fp32": matmul_flops(torch.float32, cpu), "bf16": matmul_flops(torch.bfloat16, cpu)}})
    phases.run("train: naive fp32 vs platform step", lambda: measure_training(config, naive_model, data_root, s))
    phases.run("inference: naive fp32 vs predict path vs int8",
               lambda: measure_inference(naive_model, checkpoint, data_root, s, infer_batch))
    phases.run("export: ONNX parity", lambda: measure_onnx_parity(checkpoint, workdir))
