"""The two suites: which phases a CPU run and a GPU run measure, in which order, and the settings they report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from benchmarks.in_process import measure_without_ray
from benchmarks.int8 import measure_int8_on_square_task
from benchmarks.main_job import measure_main_job
from benchmarks.numerics import measure_parity
from benchmarks.phases import Phases
from benchmarks.ray_phases import measure_ray
from benchmarks.runners import platform_train_runner, predictor_runner, synthetic_batches
from benchmarks.settings import Settings
from benchmarks.summary import summarize_cpu, summarize_gpu
from benchmarks.targets import INFER_FLOP_PER_IMAGE, TRAIN_FLOP_PER_IMAGE
from benchmarks.workspace import MODEL, benchmark_config, save_random_checkpoint
from deepfake_platform.config import ExperimentConfig, with_changes
from deepfake_platform.data import build_dataset
from deepfake_platform.predict import resolve_precision
from deepfake_platform.training import build_detector


def run_cpu(s: Settings, workdir: Path, phases: Phases, *, model: str, batch_size: int, infer_batch: int,
            compile: bool, no_ray: bool, main_job_timeout: float) -> dict[str, float]:
    """All CPU phases; returns the summary figures."""
    data_root = workdir / "data"
    need = batch_size * max(s.train_warmup, s.train_steps, s.ray_steps) + infer_batch
    train_count = max(64, 2 * math.ceil(need / 2))
    # Validation images: what int8 calibrates on (the checkpoint's data root); Ray Train's loop validates every
    # epoch too, outside the figures measured.
    build_dataset(data_root, counts={"train": train_count, "val": 64, "test": 2}, size=256)
    config = benchmark_config(workdir, data_root, model, batch_size, compile=compile)
    checkpoint = workdir / "model.pth"
    image = next((data_root / "test" / "fake").glob("*.jpg")).read_bytes()

    # The main job first, on a quiet machine.
    if s.main_job and not no_ray:
        phases.run("the main job, as make run runs it", lambda: measure_main_job(workdir, main_job_timeout),
                   timeout_s=main_job_timeout + 60)
    measure_without_ray(config, data_root, s, infer_batch, phases, checkpoint, workdir)
    # Labels agree trivially on a model whose scores all sit near its threshold (random weights, or the main job's
    # barely trained one): int8 is judged on the tiny hybrid trained where it separates the classes.
    phases.run("int8 against the platform's precision, tiny hybrid on the square task",
               lambda: measure_int8_on_square_task(workdir / "int8", s.int8_images, s.int8_epochs))
    if not no_ray:
        measure_ray(config, checkpoint, data_root, image, s, workdir, phases)
    precision = resolve_precision("auto", torch.device("cpu"))
    # bf16 against fp32 only where the platform trains in bf16: an emulated bf16 run takes an hour and
    # says nothing about what the platform does on this machine.
    if s.parity_seeds and precision == "bf16":
        phases.run("numerics: bf16 vs fp32", lambda: measure_parity(workdir, s))
    if model != MODEL:  # the FLOP per image are the hybrid's at 224 px
        return summarize_cpu(phases.raw, precision=precision)
    return summarize_cpu(phases.raw, TRAIN_FLOP_PER_IMAGE, INFER_FLOP_PER_IMAGE, precision)


def cpu_settings(preset: str, s: Settings, *, batch_size: int, infer_batch: int, compile: bool) -> dict[str, Any]:
    """What a CPU run measured with, as its table and JSON report it."""
    return {"mode": preset, "train batch": batch_size, "train steps per round": s.train_steps,
            "rounds": s.train_rounds, "Ray Train steps per epoch": s.ray_steps,
            "inference batch": infer_batch, "serve requests": s.serve_requests,
            "serve concurrency": s.serve_concurrency, "torch.compile": "on" if compile else "off",
            "platform precision": resolve_precision("auto", torch.device("cpu"))}


def run_gpu(s: Settings, workdir: Path, phases: Phases, *, device: torch.device, model: str, gpu_batch: int,
            peak_flops: float) -> dict[str, float]:
    """Training and inference on the GPU at batch `gpu_batch`, eager and compiled; returns images/s and MFU."""
    from deepfake_platform.checkpoints import input_size

    config = benchmark_config(workdir, workdir, model, gpu_batch, precision="bf16")
    detector = build_detector(config)
    size = input_size(config, detector)
    checkpoint = save_random_checkpoint(detector, config, workdir / "model.pth")
    del detector
    for compiled in (False, True):
        mode = "compiled" if compiled else "eager"
        train_config = with_changes(config, train={"compile": compiled}, scaling={"use_gpu": True})

        def train(cfg: ExperimentConfig = train_config, mode: str = mode) -> dict[str, dict[str, Any]]:
            loader = synthetic_batches(max(s.train_warmup, s.train_steps), gpu_batch, size, device)
            run = platform_train_runner(cfg, loader, device)
            run(s.train_warmup)
            return {f"train_{mode}": run(s.train_steps)}

        def infer(compiled: bool = compiled, mode: str = mode) -> dict[str, dict[str, Any]]:
            from deepfake_platform.predict import Predictor

            predictor = Predictor(checkpoint, device=str(device), precision="bf16", compile=compiled)
            batch = synthetic_batches(1, gpu_batch, size, device)[0][0]
            run = predictor_runner(predictor, batch)
            run(s.infer_warmup)
            return {f"infer_{mode}": run(s.infer_steps)}

        phases.run(f"train on GPU, {mode}", train)
        phases.run(f"inference on GPU, {mode}", infer)
    return summarize_gpu(phases.raw, peak_flops)


def gpu_settings(s: Settings, *, gpu_batch: int) -> dict[str, Any]:
    """What a GPU run measured with, as its table and JSON report it."""
    return {"batch": gpu_batch, "steps": s.train_steps, "precision": "bf16", "channels_last": "on"}
