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
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.machine import machine_info
from benchmarks.phases import Phases
from benchmarks.report import with_failed_phases, write_doc_block, write_json
from benchmarks.settings import PRESETS, preset_name
from benchmarks.suites import cpu_settings, gpu_settings, run_cpu, run_gpu
from benchmarks.tables import render_cpu_table, render_gpu_table
from benchmarks.targets import CPU_TARGETS, H100_BF16_DENSE_PEAK_FLOPS, target_met
from benchmarks.workspace import MODEL
from deepfake_platform.config import REPO_ROOT

DOC = REPO_ROOT / "docs" / "benchmarks.md"


def main(args: argparse.Namespace) -> int:
    """Measure, print the table, write JSON and the document; 1 when a phase failed."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here; run on a machine with a GPU.")
    preset = preset_name(device.type, args.quick)
    s = PRESETS[preset]
    info = machine_info(device)
    phases = Phases(args.phase_timeout)
    workdir = Path(tempfile.mkdtemp(prefix="deepfake-benchmark-", dir=args.workdir))
    started = time.perf_counter()
    try:
        if device.type == "cuda":
            summary = run_gpu(s, workdir, phases, device=device, model=args.model, gpu_batch=args.gpu_batch,
                              peak_flops=args.peak_flops)
            settings = gpu_settings(s, gpu_batch=args.gpu_batch)
            table = render_gpu_table(summary, info, settings)
        else:
            summary = run_cpu(s, workdir, phases, model=args.model, batch_size=args.batch_size,
                              infer_batch=args.infer_batch, compile=args.compile, no_ray=args.no_ray,
                              main_job_timeout=args.main_job_timeout)
            settings = cpu_settings(preset, s, batch_size=args.batch_size, infer_batch=args.infer_batch,
                                    compile=args.compile)
            table = render_cpu_table(summary, info, settings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = with_failed_phases(table, phases.errors)
    print(f"\n{table}\n\n(measured in {time.perf_counter() - started:.0f} s)", flush=True)
    if device.type != "cuda":
        met = [target_met(key, summary[key]) for key in CPU_TARGETS]
        print(f"targets met: {met.count('yes')} of {len(met)}", flush=True)
    if args.json:
        write_json(args.json, summary, info, settings, phases.errors)
    doc = args.doc if args.doc is not None else (None if preset == "quick" else DOC)
    if doc is not None:
        write_doc_block(doc, table, "gpu" if device.type == "cuda" else "cpu")
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
    parser.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE_PEAK_FLOPS,
                        help="the GPU's peak bf16 FLOP/s for MFU (default: H100 SXM dense, 989e12)")
    parser.add_argument("--phase-timeout", type=float, default=900.0, metavar="SECONDS",
                        help="each phase is stopped (and reported as failed) after this long")
    parser.add_argument("--main-job-timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="full mode: the main job (reproduce_baseline.py, 5 epochs) is stopped after this long")
    parser.add_argument("--workdir", help="where the temporary data, checkpoints and Ray files go (deleted after)")
    return parser


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
