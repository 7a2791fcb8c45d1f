"""The machine measured: its description for the table's header, and its practical matmul peak."""

from __future__ import annotations

import datetime
import os
import platform
import time

import torch

from benchmarks.timing import synchronize
from deepfake_platform.hardware import cpu_model
from deepfake_platform.predict import cpu_supports_bf16

# The probe's matmul shapes (batch, m, k, n), cheapest first: square ones, a batched one, and the ViT-B
# MLP's at batch 16 (16 x 197 tokens by 768 x 3072 and back).
PROBE_SHAPES = ((1, 1024, 1024, 1024), (8, 512, 512, 512), (1, 3152, 768, 3072), (1, 3152, 3072, 768),
                (1, 2048, 2048, 2048), (8, 1024, 1024, 1024), (1, 4096, 4096, 4096))


def matmul_flops(dtype: torch.dtype, device: torch.device, budget_s: float = 8.0) -> float:
    """The best FLOP/s of `dtype` matmuls on all threads over PROBE_SHAPES: the machine's practical peak.

    Large, batched and model-shaped products each get a share of the budget; the fastest one counts, so
    the shares computed from it do not exceed 100 % on a machine where one shape is slow. A shape whose
    single product takes longer than its share ends the probe (a dtype the CPU only emulates, bf16
    without AVX-512 BF16 or AMX, is measured in seconds, not minutes).
    """
    generator = torch.Generator().manual_seed(0)
    share, best = budget_s / len(PROBE_SHAPES), 0.0
    for batch, m, k, n in PROBE_SHAPES:
        shape_a, shape_b = ((m, k), (k, n)) if batch == 1 else ((batch, m, k), (batch, k, n))
        a = torch.randn(*shape_a, generator=generator).to(device, dtype)
        b = torch.randn(*shape_b, generator=generator).to(device, dtype)
        flop = 2.0 * batch * m * k * n
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)  # also the warm-up: thread pool and kernel selection
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed > share:
            best = max(best, flop / elapsed)
            break
        repeats = max(2, int(share / max(elapsed, 1e-6)))
        start = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        synchronize(device)
        best = max(best, repeats * flop / (time.perf_counter() - start))
    return best


def machine_info(device: torch.device) -> dict[str, str]:
    """CPU model, cores, bf16 support, accelerator, date and library versions: the table's header."""
    import ray
    import timm

    cpu = cpu_model()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "cpu_bf16": f"AMX {'yes' if amx else 'no'}, AVX-512 BF16 {'yes' if avx512_bf16 else 'no'}"
                    + ("" if cpu_supports_bf16() else " (bf16 autocast is emulated here: slow)"),
        "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else "none",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "timm": timm.__version__,
    }
