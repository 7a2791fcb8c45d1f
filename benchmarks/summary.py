"""From raw figures to the run's summary: the ratios the targets name, shares of the peak, MFU (pure)."""

from __future__ import annotations

import math

from benchmarks.targets import INFER_FLOP_PER_IMAGE, TRAIN_FLOP_PER_IMAGE


def _ratio(numerator: float | None, denominator: float | None) -> float:
    if numerator is None or denominator is None or not denominator:
        return math.nan
    return numerator / denominator


def summarize_cpu(raw: dict[str, dict[str, float] | None], train_flop_per_image: float | None = None,
                  infer_flop_per_image: float | None = None, precision: str = "bf16") -> dict[str, float]:
    """The JSON figures of a CPU run: the ratios the targets name, the raw figures and, when the FLOP per
    image are given, each figure's share of the measured matmul peak of `precision`, the precision the
    platform ran at (NaN for what was not measured)."""

    def figure(phase: str, key: str = "images_per_s") -> float | None:
        values = raw.get(phase)
        return None if values is None else values.get(key)

    def utilisation(phase: str, flop: float | None, dtype: str) -> float | None:
        rate, peak = figure(phase), figure("matmul_peak", dtype)
        return None if flop is None or rate is None else _ratio(rate * flop, peak)

    summary = {
        "train_speedup_vs_naive_fp32": _ratio(figure("train_platform"), figure("train_naive_fp32")),
        "ray_train_vs_plain_step": _ratio(figure("train_ray"), figure("train_platform")),
        "data_wait_fraction": figure("train_platform", "data_wait_fraction"),
        "infer_speedup_vs_naive_fp32": _ratio(figure("infer_predictor"), figure("infer_naive_fp32")),
        "serve_vs_bare_batched": _ratio(figure("serve_load"), figure("infer_predictor")),
        "serve_p50_ms": figure("serve_single", "p50_ms"),
        "serve_p90_ms": figure("serve_single", "p90_ms"),
        "bare_single_p50_ms": figure("bare_single", "p50_ms"),
        "serve_p50_vs_bare_single": _ratio(figure("serve_single", "p50_ms"), figure("bare_single", "p50_ms")),
        "ray_train_data_wait_fraction": figure("train_ray", "data_wait_fraction"),
        "train_naive_fp32_images_per_s": figure("train_naive_fp32"),
        "train_platform_images_per_s": figure("train_platform"),
        "train_ray_images_per_s": figure("train_ray"),
        "infer_naive_fp32_images_per_s": figure("infer_naive_fp32"),
        "infer_predictor_images_per_s": figure("infer_predictor"),
        "infer_int8_images_per_s": figure("infer_int8"),
        "int8_speedup_vs_bf16": _ratio(figure("infer_int8"), figure("infer_predictor")),
        "int8_mean_abs_diff": figure("int8_accuracy", "mean_abs_diff"),
        "int8_label_agreement": figure("int8_accuracy", "label_agreement"),
        "int8_images_compared": figure("int8_accuracy", "images"),
        "int8_scores_spread": figure("int8_accuracy", "spread"),
        "int8_calibrated": figure("int8_accuracy", "calibrated"),
        "onnx_parity_max_abs_diff": figure("onnx", "max_abs_diff"),
        "main_job_overhead": _ratio(figure("main_job", "wall_s"), figure("main_job", "epochs_s")),
        "main_job_wall_s": figure("main_job", "wall_s"),
        "main_job_epochs_s": figure("main_job", "epochs_s"),
        "score_vs_predict_path": _ratio(figure("score_ray_data"), figure("score_bare")),
        "score_images_per_s": figure("score_ray_data"),
        "score_predict_path_images_per_s": figure("score_bare"),
        "score_images": figure("score_ray_data", "images"),
        "score_end_to_end_vs_predict_path": _ratio(figure("score_ray_data", "end_to_end_images_per_s"),
                                                   figure("score_bare")),
        "score_start_s": figure("score_ray_data", "start_s"),
        # The names issue 23 gives the two parts of a scoring run; score_images_per_s and score_start_s above
        # are the same figures under the names earlier runs wrote.
        "score_steady_images_per_s": figure("score_ray_data"),
        "score_startup_s": figure("score_ray_data", "start_s"),
        "score_steady_images": figure("score_ray_data", "steady_images"),
        "serve_images_per_s": figure("serve_load"),
        "serve_concurrent_p50_ms": figure("serve_load", "p50_ms"),
        "matmul_fp32_flops": figure("matmul_peak", "fp32"),
        "matmul_bf16_flops": figure("matmul_peak", "bf16"),
        "platform_peak_flops": figure("matmul_peak", precision),
        "platform_precision_is_bf16": 1.0 if precision == "bf16" else 0.0,
        "train_naive_fp32_share_of_fp32_peak": utilisation("train_naive_fp32", train_flop_per_image, "fp32"),
        "train_share_of_bf16_peak": utilisation("train_platform", train_flop_per_image, precision),
        "infer_share_of_bf16_peak": utilisation("infer_predictor", infer_flop_per_image, precision),
    }
    # The keys earlier runs wrote, kept for whoever compares JSON files across versions.
    summary["infer_predictor_bf16_images_per_s"] = summary["infer_predictor_images_per_s"]
    summary["train_platform_share_of_bf16_peak"] = summary["train_share_of_bf16_peak"]
    summary["infer_predictor_share_of_bf16_peak"] = summary["infer_share_of_bf16_peak"]
    if raw.get("parity"):
        summary.update(raw["parity"])
    summary.update(cpu_figures(raw))
    return {key: math.nan if value is None else float(value) for key, value in summary.items()}


def summarize_gpu(raw: dict[str, dict[str, float] | None], peak_flops: float) -> dict[str, float]:
    """Images/s and model FLOP utilisation (MFU) of each GPU phase against `peak_flops`."""
    summary: dict[str, float] = {"peak_flops": peak_flops}
    for phase, flop in (("train_eager", TRAIN_FLOP_PER_IMAGE), ("train_compiled", TRAIN_FLOP_PER_IMAGE),
                        ("infer_eager", INFER_FLOP_PER_IMAGE), ("infer_compiled", INFER_FLOP_PER_IMAGE)):
        values = raw.get(phase)
        rate = math.nan if values is None else float(values["images_per_s"])
        summary[f"{phase}_images_per_s"] = rate
        summary[f"{phase}_mfu"] = mfu(rate, flop, peak_flops)
    return summary


def mfu(rate: float, flop_per_image: float, peak_flops: float) -> float:
    """Model FLOP utilisation: achieved FLOP/s (images/s times FLOP per image) over the peak."""
    return rate * flop_per_image / peak_flops


# The windows in which the benchmark watched who used the cores (benchmarks/process_cpu.py).
CPU_WINDOWS = ("cpu_serve_idle", "cpu_serve_load", "cpu_train_ray", "cpu_score")
FRONT_ROLES = ("serve replica DeepfakeAPI", "serve proxy")


def role_key(window: str, role: str) -> str:
    """The JSON key of one role's cores in one window: `cpu_serve_load__serve_proxy`."""
    return f"{window}__" + "".join(ch if ch.isalnum() else "_" for ch in role.lower()).strip("_")


def cpu_figures(raw: dict[str, dict[str, float] | None]) -> dict[str, float | None]:
    """Each window's cores per role (flat keys), and what they come to: the Serve front's (proxy and ingress)
    CPU per request beyond its idle cost, the cores Serve and Ray use with the app idle, the share of the
    cores the Detector replica got under load, and the cores everything but the training worker used while
    Ray Train ran."""
    figures: dict[str, float | None] = {}
    for window in CPU_WINDOWS:
        for role, cores in (raw.get(window) or {}).items():
            figures[role_key(window, role)] = cores
    idle, busy, train = raw.get("cpu_serve_idle") or {}, raw.get("cpu_serve_load") or {}, raw.get("cpu_train_ray") or {}
    requests = (raw.get("serve_load") or {}).get("requests")
    front = None
    if busy and idle and requests:
        extra_cores = sum(busy.get(role, 0.0) - idle.get(role, 0.0) for role in FRONT_ROLES)
        front = 1000.0 * extra_cores * busy["wall_s"] / requests
    figures["serve_front_cpu_ms_per_request"] = front
    figures["serve_idle_cores"] = (sum(v for k, v in idle.items() if k not in ("wall_s", "benchmark driver"))
                                   if idle else None)
    figures["serve_detector_cores"] = sum(v for k, v in busy.items() if k.startswith("serve replica Detector")) \
        if busy else None
    figures["ray_train_other_cores"] = (sum(v for k, v in train.items()
                                            if k not in ("wall_s", "benchmark driver", "train worker"))
                                        if train else None)
    return figures
