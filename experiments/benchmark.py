"""Benchmark: the platform's training, inference and serving speed on this machine, against naive PyTorch.

    python experiments/benchmark.py                   # full run (about 10 minutes on 2 cores): updates docs/benchmarks.md
    python experiments/benchmark.py --quick           # fewer steps, under 2 minutes: prints the table only
    python experiments/benchmark.py --json bench.json # the figures as JSON as well
    python experiments/benchmark.py --device cuda     # on a GPU: batch 256, eager and compiled, MFU

Measured side by side in one process, on the hybrid detector (random weights) at 224 px:
  training   a naive fp32 loop (plain Adam, default threads) and the platform's step (train_one_epoch:
             bf16 autocast, channels_last, fused Adam), interleaved round by round; then the platform
             through Ray Train (TorchTrainer, two short epochs, the second one's `images_per_s`);
  inference  naive fp32 (no_grad) and the predict path (Predictor.predict_tensor, bf16), batch 16;
  serving    the Serve app (serve/app.py) over HTTP on 127.0.0.1: sequential single requests (p50
             latency) and concurrent clients (images/s), against the predict path's batched throughput;
  numerics   (full mode) the tiny hybrid trained in fp32 and in bf16 on a generated set, val AUC of each.
Every phase is bounded in steps/requests and in seconds (--phase-timeout); a phase that fails or runs
out of time is reported as such and the others still run (exit status 1).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks import measure as bench
from deepfake_platform.checkpoints import DetectorCheckpoint, write_checkpoint
from deepfake_platform.config import REPO_ROOT, ExperimentConfig, with_changes
from deepfake_platform.data import build_dataset
from deepfake_platform.predict import resolve_precision
from deepfake_platform.training import build_detector
from models import parameter_table

DOC = REPO_ROOT / "docs" / "benchmarks.md"
MODEL = "hybrid_resnet18_vit_b16"
# An env var nobody sets: the benchmark's Serve app runs without API-token authentication.
NO_TOKEN_ENV = "DEEPFAKE_BENCHMARK_NO_TOKEN"


@dataclass(frozen=True)
class Settings:
    """How much to measure: step and request counts of each phase."""

    train_warmup: int
    train_steps: int
    train_rounds: int
    ray_steps: int
    infer_warmup: int
    infer_steps: int
    infer_rounds: int
    serve_single: int
    serve_warmup: int
    serve_requests: int
    serve_concurrency: int
    parity_seeds: int
    parity_epochs: int
    int8_images: int = 32
    main_job: bool = False
    score_images: int = 32


PRESETS = {
    "full": Settings(train_warmup=2, train_steps=5, train_rounds=3, ray_steps=8, infer_warmup=1, infer_steps=3,
                     infer_rounds=3, serve_single=20, serve_warmup=48, serve_requests=96, serve_concurrency=16,
                     parity_seeds=3, parity_epochs=4, int8_images=64, main_job=True,
                     score_images=160),
    "quick": Settings(train_warmup=1, train_steps=1, train_rounds=1, ray_steps=2, infer_warmup=1, infer_steps=1,
                      infer_rounds=1, serve_single=5, serve_warmup=16, serve_requests=32, serve_concurrency=16,
                      parity_seeds=0, parity_epochs=0),
    # On a GPU: batch 256, so fewer steps carry more images.
    "cuda": Settings(train_warmup=3, train_steps=20, train_rounds=1, ray_steps=0, infer_warmup=3, infer_steps=20,
                     infer_rounds=1, serve_single=0, serve_warmup=0, serve_requests=0, serve_concurrency=0,
                     parity_seeds=0, parity_epochs=0),
}


class Phases:
    """Runs named phases under a time limit; a phase that fails is recorded and the run goes on."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.raw: dict[str, dict[str, Any] | None] = {}
        self.errors: dict[str, str] = {}

    def run(self, name: str, measure: Callable[[], dict[str, dict[str, Any]]], timeout_s: float | None = None) -> None:
        """Run `measure`, which returns {figure name: figures}; on failure record why."""
        print(f"[benchmark] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            with bench.time_limit(timeout_s or self.timeout_s, name):
                self.raw.update(measure())
        except Exception as err:  # one failed phase must not lose the figures of the others
            hint = " Raise --phase-timeout on a slower machine." if isinstance(err, bench.BenchmarkTimeout) else ""
            self.errors[name] = f"{type(err).__name__}: {err}{hint}"
            print(f"[benchmark] {name} FAILED: {self.errors[name]}", flush=True)
        finally:
            # The phase's models go now, not when the next phase needs their memory.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(f"[benchmark] {name} done in {time.perf_counter() - start:.0f} s", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def benchmark_config(workdir: Path, data_root: Path, model: str, batch_size: int, **train: Any) -> ExperimentConfig:
    """The platform's default recipe on `model`, random weights, writing only under `workdir`."""
    output = {"checkpoints_dir": str(workdir / "checkpoints"), "runs_dir": str(workdir / "runs"),
              "artifacts_dir": str(workdir / "artifacts"), "storage_path": str(workdir / "ray_results"),
              "promote": False}
    return with_changes(
        ExperimentConfig(name="benchmark"), model={"name": model, "pretrained": "off"},
        data={"root": str(data_root)}, train={"batch_size": batch_size, **train}, output=output,
    )


def save_random_checkpoint(model: torch.nn.Module, config: ExperimentConfig, path: Path) -> Path:
    """A platform checkpoint of `model`, built by `config` and never trained (speed does not depend on weights)."""
    return write_checkpoint(DetectorCheckpoint(
        detector=config.model.name, detector_kwargs=dict(model.detector_kwargs), model_state_dict=model.state_dict(),
        epoch=0, val_auc=math.nan, val_threshold=0.5, config=config.to_dict(), parameters=parameter_table(model),
    ), path)


# ---- CPU --------------------------------------------------------------------------------------------


def measure_training(config: ExperimentConfig, naive_model: torch.nn.Module, data_root: Path,
                     s: Settings) -> dict[str, dict[str, Any]]:
    """Naive fp32 loop (on `naive_model`) and the platform step without Ray, interleaved round by round."""
    from torch.utils.data import DataLoader

    from deepfake_platform.data import ImageDataset, build_transform, load_split
    from deepfake_platform.training import image_size_for, make_loaders

    size = image_size_for(config, naive_model)
    naive_loader = DataLoader(ImageDataset(load_split(data_root, "train"), build_transform("train", size)),
                              batch_size=config.train.batch_size, shuffle=True)
    platform_loader = make_loaders(config, data_root, size, 0, 1)[0]
    runners = {
        "train_naive_fp32": bench.naive_fp32_train_runner(naive_model, naive_loader, lr=config.train.lr),
        "train_platform": bench.platform_train_runner(config, platform_loader, torch.device("cpu")),
    }
    return bench.interleaved(runners, warmup=s.train_warmup, steps=s.train_steps, rounds=s.train_rounds)


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
        "infer_naive_fp32": bench.naive_fp32_infer_runner(naive_model, batch),
        "infer_predictor": bench.predictor_runner(predictor, batch),
        "infer_int8": bench.predictor_runner(int8, batch),
    }
    figures = bench.interleaved(runners, warmup=s.infer_warmup, steps=s.infer_steps, rounds=s.infer_rounds)
    body = Path(paths[0]).read_bytes()

    def single() -> None:  # what Serve does for one upload, without Serve: decode, preprocess, predict
        predictor.predict_images([Image.open(io.BytesIO(body)).convert("RGB")])

    single()
    latencies = []
    for _ in range(max(3, s.serve_single)):
        start = time.perf_counter()
        single()
        latencies.append(time.perf_counter() - start)
    figures["bare_single"] = {"p50_ms": 1000 * bench.percentile(latencies, 50), "requests": float(len(latencies))}
    return figures


def measure_int8_agreement(checkpoint: Path, data_root: Path, split: str = "val",
                           limit: int = 256) -> dict[str, dict[str, Any]]:
    """int8 against the platform's precision on a split's images: mean |difference| of the probabilities
    and the share of images given the same label at the checkpoint's threshold."""
    import numpy as np

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
    return {"int8_accuracy": {"mean_abs_diff": float(np.mean(np.abs(p - q))),
                              "label_agreement": float(np.mean((p >= threshold) == (q >= threshold))),
                              "images": float(len(paths))}}


def measure_onnx_parity(checkpoint: Path, workdir: Path) -> dict[str, dict[str, Any]]:
    """experiments/export.py's ONNX export of the checkpoint and its fp32 parity check."""
    from deepfake_platform.export import export_model, parity
    from deepfake_platform.predict import Predictor

    predictor = Predictor(checkpoint, precision="fp32")
    path, _ = export_model(predictor, "onnx", workdir / "export" / "model.onnx")
    return {"onnx": {"max_abs_diff": parity(predictor, path, "onnx")}}


MAIN_JOB_LINE = re.compile(r"Wall time (\d+) s; the epochs took (\d+) s")
RUN_LINE = re.compile(r"^Run \S+: \S+ on (.+), \d+ epochs", re.MULTILINE)


def measure_main_job(workdir: Path, timeout_s: float) -> tuple[dict[str, dict[str, Any]], Path, Path]:
    """The main job as `make run` runs it (the reference recipe on the embedded data, built first), in a
    fresh folder: its wall time, start to exit, against the sum of its epoch times. Also its best
    checkpoint and data root, which the int8 comparison uses (a trained model, not random weights)."""
    home = workdir / "main-job"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    start = time.perf_counter()
    ran = subprocess.run([sys.executable, str(REPO_ROOT / "experiments" / "reproduce_baseline.py"), "--no-promote",
                          "--name", "benchmark-main"], cwd=home, env=env, capture_output=True, text=True,
                         timeout=timeout_s)
    wall = time.perf_counter() - start
    if ran.returncode != 0:
        raise RuntimeError(f"the main job failed (exit {ran.returncode}): {(ran.stderr or ran.stdout)[-600:]}")
    epochs = MAIN_JOB_LINE.search(ran.stdout)
    data = RUN_LINE.search(ran.stdout)
    if epochs is None or data is None:
        raise RuntimeError(f"the main job's output did not say its times: {ran.stdout[-600:]}")
    print(f"[benchmark] main job: {epochs.group(0)}", flush=True)
    best = home / "checkpoints" / "benchmark-main" / "best.pth"
    return {"main_job": {"wall_s": wall, "epochs_s": float(epochs.group(2)),
                         "reported_wall_s": float(epochs.group(1))}}, best, Path(data.group(1))


def measure_ray(config: ExperimentConfig, checkpoint: Path, data_root: Path, image: bytes, s: Settings,
                workdir: Path, phases: Phases) -> None:
    """Ray Train and Ray Serve phases on one local Ray, shut down afterwards whatever happens."""
    import ray  # ray:
    from ray import serve  # ray:

    os.environ["RAY_AUTH_MODE"] = "disabled"  # a private local cluster on loopback
    os.environ.pop(NO_TOKEN_ENV, None)
    cores = os.cpu_count() or 1
    # Replicas and workers get every core's thread (Ray would give a 0.5-CPU Serve replica one): the
    # comparison is with the bare model, which runs on all of them.
    try:
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,  # ray:
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": str(cores)}})
    except Exception as err:  # no Ray here: the other phases' figures still count
        phases.errors["start a local Ray"] = f"{type(err).__name__}: {err}"
        return
    try:
        ray_config = with_changes(config, train={"epochs": 2, "max_steps_per_epoch": s.ray_steps})
        phases.run("train through Ray Train", lambda: {
            "train_ray": bench.ray_train_throughput(ray_config, data_root, workdir / "ray_results")})
        phases.run("serve over HTTP", lambda: measure_serve(checkpoint, image, s, workdir))
        with_errors_ignored(serve.shutdown)
        phases.run("batch scoring with Ray Data vs the predict path",
                   lambda: measure_scoring(checkpoint, data_root, s, workdir))
    finally:
        with_errors_ignored(serve.shutdown)
        ray.shutdown()


def with_errors_ignored(action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception as err:  # clean-up after a failed phase: the phase's own error is the one to report
        print(f"[benchmark] clean-up: {type(err).__name__}: {err}", flush=True)


def measure_serve(checkpoint: Path, image: bytes, s: Settings, workdir: Path) -> dict[str, dict[str, Any]]:
    """The Serve app over HTTP: warm-up, sequential single requests, then concurrent clients."""
    # The prediction log and feedback in the temporary folder, never in the directory it was started from.
    base = bench.deploy_serve(checkpoint, free_port(), {"token_env": NO_TOKEN_ENV, "log_dir": str(workdir / "logs"),
                                                        "feedback_dir": str(workdir / "feedback")})
    url = f"{base}/predict"
    # Warm-up: every dynamic batch size (1 .. max_batch_size) builds its kernels once.
    bench.single_request_latencies(url, image, 2, timeout_s=120)
    bench.concurrent_load(url, image, s.serve_warmup, s.serve_concurrency, timeout_s=300)
    latencies = bench.single_request_latencies(url, image, s.serve_single, timeout_s=120)
    single = {"p50_ms": 1000 * bench.percentile(latencies, 50), "p90_ms": 1000 * bench.percentile(latencies, 90),
              "requests": float(len(latencies))}
    load = bench.concurrent_load(url, image, s.serve_requests, s.serve_concurrency, timeout_s=300)
    return {"serve_single": single, "serve_load": load}


def measure_scoring(checkpoint: Path, data_root: Path, s: Settings, workdir: Path,
                    batch_size: int = 16) -> dict[str, dict[str, Any]]:
    """score.py's Ray Data pipeline on image files against the single-process predict path on the same files
    at the same batch size (decode, preprocess, predict). Two scoring runs, a small and a large one, give
    the pipeline's steady rate (the extra files over the extra time: what an archive of thousands of
    files sees) and its start-up cost (Ray Data's start, the model actor's load, fill and drain)."""
    from deepfake_platform.data import load_image, load_split
    from deepfake_platform.orchestration.scoring import run_scoring
    from deepfake_platform.predict import Predictor

    sources = [Path(path) for path, _ in load_split(data_root, "train")]

    def archive(name: str, count: int) -> list[Path]:  # distinct files: scoring skips paths it has seen
        folder = workdir / name
        folder.mkdir()
        files = [folder / f"{i:05d}{sources[i % len(sources)].suffix}" for i in range(count)]
        for i, path in enumerate(files):
            shutil.copyfile(sources[i % len(sources)], path)
        return files

    small, large = archive("archive-small", s.score_images // 5), archive("archive-large", s.score_images)
    predictor = Predictor(checkpoint)
    predictor.predict_images([load_image(str(large[0]))])  # warm-up
    start = time.perf_counter()
    for first in range(0, len(large), batch_size):
        predictor.predict_images([load_image(str(path)) for path in large[first:first + batch_size]])
    bare = len(large) / (time.perf_counter() - start)
    del predictor
    gc.collect()
    walls = []
    for files in (small, large):
        start = time.perf_counter()
        summary = run_scoring([str(path) for path in files], workdir / f"{files[0].parent.name}.parquet", checkpoint,
                              batch_size=batch_size, faces="off")
        walls.append(time.perf_counter() - start)
        if summary.scored != len(files) or summary.unreadable:
            raise RuntimeError(f"batch scoring scored {summary.scored} of {len(files)} files "
                               f"({summary.unreadable} unreadable)")
    end_to_end = len(large) / walls[1]
    if walls[1] - walls[0] >= 0.1 * walls[1]:
        steady = steady_rate(walls, small, large)
        start_s = walls[0] - len(small) / steady
    else:  # a model so fast that start-up is all there is (the tiny test model): the end-to-end rate, a lower bound
        steady, start_s = end_to_end, math.nan
    return {"score_bare": {"images_per_s": bare},
            "score_ray_data": {"images_per_s": steady, "images": float(len(large)),
                               "end_to_end_images_per_s": end_to_end, "start_s": start_s}}


def steady_rate(walls: list[float], small: list[Path], large: list[Path]) -> float:
    """Images/s of the files the large run scored beyond the small one, over its extra time."""
    return (len(large) - len(small)) / (walls[1] - walls[0])


def measure_parity(workdir: Path, s: Settings) -> dict[str, dict[str, Any]]:
    """The tiny hybrid trained in fp32 and bf16 on a generated 64 px set: val AUC per seed."""
    data_root = workdir / "parity_data"
    build_dataset(data_root, counts={"train": 256, "val": 128, "test": 2}, size=64)
    config = benchmark_config(workdir, data_root, "hybrid_tiny", 16, lr=1e-3, epochs=s.parity_epochs)
    runs = bench.precision_parity(config, data_root, seeds=range(s.parity_seeds))
    print(f"[benchmark] per seed: {runs}", flush=True)
    return {"parity": bench.parity_summary(runs)}


def measure_without_ray(config: ExperimentConfig, data_root: Path, s: Settings, args: argparse.Namespace,
                        phases: Phases, checkpoint: Path, workdir: Path) -> None:
    """The phases in this process: matmul peak, training, inference, int8 and export; writes the model to
    `checkpoint`."""
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    # One randomly initialised detector serves as the checkpoint and as the naive loops' model.
    naive_model = build_detector(config)
    save_random_checkpoint(naive_model, config, checkpoint)
    phases.run("hardware: matmul peak", lambda: {"matmul_peak": {
        "fp32": bench.matmul_flops(torch.float32, cpu), "bf16": bench.matmul_flops(torch.bfloat16, cpu)}})
    phases.run("train: naive fp32 vs platform step", lambda: measure_training(config, naive_model, data_root, s))
    phases.run("inference: naive fp32 vs predict path vs int8",
               lambda: measure_inference(naive_model, checkpoint, data_root, s, args.infer_batch))
    phases.run("export: ONNX parity", lambda: measure_onnx_parity(checkpoint, workdir))


def run_cpu(args: argparse.Namespace, s: Settings, workdir: Path, phases: Phases) -> dict[str, float]:
    """All CPU phases; returns the summary figures."""
    data_root = workdir / "data"
    need = args.batch_size * max(s.train_warmup, s.train_steps, s.ray_steps) + args.infer_batch
    train_count = max(64, 2 * math.ceil(need / 2))
    # Validation images: the int8 comparison's (when no main job ran); Ray Train's loop validates every
    # epoch too, outside the figures measured.
    build_dataset(data_root, counts={"train": train_count, "val": s.int8_images, "test": 2}, size=256)
    config = benchmark_config(workdir, data_root, args.model, args.batch_size, compile=args.compile)
    checkpoint = workdir / "model.pth"
    image = next((data_root / "test" / "fake").glob("*.jpg")).read_bytes()

    # The main job first, on a quiet machine: its trained model then judges int8 (random weights cannot).
    trained: tuple[Path, Path] | None = None
    if s.main_job and not args.no_ray:
        def main_job() -> dict[str, dict[str, Any]]:
            nonlocal trained
            figures, best, root = measure_main_job(workdir, args.main_job_timeout)
            trained = (best, root)
            return figures

        phases.run("the main job, as make run runs it", main_job, timeout_s=args.main_job_timeout + 60)
    measure_without_ray(config, data_root, s, args, phases, checkpoint, workdir)
    model, root = trained or (checkpoint, data_root)
    phases.run("int8 against the platform's precision, validation images",
               lambda: measure_int8_agreement(model, root, "val"))
    if not args.no_ray:
        measure_ray(config, checkpoint, data_root, image, s, workdir, phases)
    precision = resolve_precision("auto", torch.device("cpu"))
    # bf16 against fp32 only where the platform trains in bf16: an emulated bf16 run takes an hour and
    # says nothing about what the platform does on this machine.
    if s.parity_seeds and precision == "bf16":
        phases.run("numerics: bf16 vs fp32", lambda: measure_parity(workdir, s))
    if args.model != MODEL:  # the FLOP per image are the hybrid's at 224 px
        return bench.summarize_cpu(phases.raw, precision=precision)
    return bench.summarize_cpu(phases.raw, bench.TRAIN_FLOP_PER_IMAGE, bench.INFER_FLOP_PER_IMAGE, precision)


# ---- GPU --------------------------------------------------------------------------------------------


def run_gpu(args: argparse.Namespace, s: Settings, workdir: Path, phases: Phases) -> dict[str, float]:
    """Training and inference on the GPU at batch --gpu-batch, eager and compiled; returns images/s and MFU."""
    from deepfake_platform.training import image_size_for

    device = torch.device(args.device)
    config = benchmark_config(workdir, workdir, args.model, args.gpu_batch, precision="bf16")
    model = build_detector(config)
    size = image_size_for(config, model)
    checkpoint = save_random_checkpoint(model, config, workdir / "model.pth")
    del model
    for compiled in (False, True):
        mode = "compiled" if compiled else "eager"
        train_config = with_changes(config, train={"compile": compiled}, scaling={"use_gpu": True})

        def train(cfg: ExperimentConfig = train_config, mode: str = mode) -> dict[str, dict[str, Any]]:
            loader = bench.synthetic_batches(max(s.train_warmup, s.train_steps), args.gpu_batch, size, device)
            run = bench.platform_train_runner(cfg, loader, device)
            run(s.train_warmup)
            return {f"train_{mode}": run(s.train_steps)}

        def infer(compiled: bool = compiled, mode: str = mode) -> dict[str, dict[str, Any]]:
            from deepfake_platform.predict import Predictor

            predictor = Predictor(checkpoint, device=str(device), precision="bf16", compile=compiled)
            batch = bench.synthetic_batches(1, args.gpu_batch, size, device)[0][0]
            run = bench.predictor_runner(predictor, batch)
            run(s.infer_warmup)
            return {f"infer_{mode}": run(s.infer_steps)}

        phases.run(f"train on GPU, {mode}", train)
        phases.run(f"inference on GPU, {mode}", infer)
    return bench.summarize_gpu(phases.raw, args.peak_flops)


# ---- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write JSON and the document; 1 when a phase failed."""
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here; run on a machine with a GPU.")
    preset = "cuda" if device.type == "cuda" else ("quick" if args.quick else "full")
    s = PRESETS[preset]
    info = bench.machine_info(device)
    phases = Phases(args.phase_timeout)
    workdir = Path(tempfile.mkdtemp(prefix="deepfake-benchmark-", dir=args.workdir))
    started = time.perf_counter()
    try:
        if device.type == "cuda":
            summary = run_gpu(args, s, workdir, phases)
            settings = {"batch": args.gpu_batch, "steps": s.train_steps, "precision": "bf16", "channels_last": "on"}
            table = bench.render_gpu_table(summary, info, settings)
        else:
            summary = run_cpu(args, s, workdir, phases)
            settings = {"mode": preset, "train batch": args.batch_size, "train steps per round": s.train_steps,
                        "rounds": s.train_rounds, "Ray Train steps per epoch": s.ray_steps,
                        "inference batch": args.infer_batch, "serve requests": s.serve_requests,
                        "serve concurrency": s.serve_concurrency, "torch.compile": "on" if args.compile else "off",
                        "platform precision": resolve_precision("auto", torch.device("cpu"))}
            table = bench.render_cpu_table(summary, info, settings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if phases.errors:
        table += "\n\nFailed phases: " + "; ".join(f"{name}: {why}" for name, why in phases.errors.items())
    print(f"\n{table}\n\n(measured in {time.perf_counter() - started:.0f} s)", flush=True)
    if device.type != "cuda":
        met = [bench.target_met(key, summary[key]) for key in bench.CPU_TARGETS]
        print(f"targets met: {met.count('yes')} of {len(met)}", flush=True)
    if args.json:
        # null, not NaN, for a figure that was not measured: NaN is not JSON.
        figures = {key: None if math.isnan(value) else value for key, value in summary.items()}
        figures.update(machine=info, settings=settings, errors=phases.errors)
        Path(args.json).write_text(json.dumps(figures, indent=2, allow_nan=False) + "\n")
    doc = args.doc if args.doc is not None else (None if preset == "quick" else DOC)
    if doc is not None:
        block = "gpu" if device.type == "cuda" else "cpu"
        Path(doc).write_text(bench.update_doc(Path(doc).read_text(), table, block))
        print(f"updated {doc}", flush=True)
    return 1 if phases.errors else 0


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps, no numerics run (under 2 minutes)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--doc", metavar="PATH", type=Path,
                        help=f"Markdown file whose generated block to update (default: {DOC.relative_to(REPO_ROOT)} "
                             "in full and --device cuda runs, none with --quick)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default=MODEL, help="detector to measure (tests use hybrid_tiny)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch on the CPU")
    parser.add_argument("--infer-batch", type=int, default=16, help="inference batch on the CPU")
    parser.add_argument("--gpu-batch", type=int, default=256, help="training and inference batch on a GPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the platform step on the CPU")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Train and Serve phases (their figures: null)")
    parser.add_argument("--peak-flops", type=float, default=bench.H100_BF16_DENSE_PEAK_FLOPS,
                        help="the GPU's peak bf16 FLOP/s for MFU (default: H100 SXM dense, 989e12)")
    parser.add_argument("--phase-timeout", type=float, default=900.0, metavar="SECONDS",
                        help="each phase is stopped (and reported as failed) after this long")
    parser.add_argument("--main-job-timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="full mode: the main job (reproduce_baseline.py, 5 epochs) is stopped after this long")
    parser.add_argument("--workdir", help="where the temporary data, checkpoints and Ray files go (deleted after)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
