"""Markdown tables of a run's summary: the CPU table against the targets with its numerics, the GPU table (pure)."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.targets import INFER_FLOP_PER_IMAGE, TRAIN_FLOP_PER_IMAGE, target_met, target_text


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def render_cpu_table(summary: dict[str, float], info: dict[str, str], settings: dict[str, Any]) -> str:
    """The Markdown tables of a CPU run: machine, figures against the targets, and bf16 numerics."""
    s = summary
    precision = "bf16" if s.get("platform_precision_is_bf16", 1.0) else "fp32"

    def row(what: str, rate: float, versus: str, key: str | None = None) -> str:
        met = "" if key is None else target_met(key, s[key])
        return f"| {what} | {_fmt(rate)} | {versus} | {'' if key is None else target_text(key)} | {met} |"

    def share(key: str) -> str:
        return f"{_fmt(100 * s[key], 0)} % of the {precision} matmul peak"

    lines = [
        _machine_line(info),
        "",
        f"Settings: {', '.join(f'{k} {v}' for k, v in settings.items())}. The platform runs at {precision} here"
        + ("." if precision == "bf16" else " (this CPU has no native bf16: its bf16 is emulated, so shares are of "
           "the fp32 peak, and the `*_bf16*` JSON keys refer to fp32)."),
        "",
        "| measurement | images/s | ratio | target | met |",
        "| --- | ---: | --- | --- | --- |",
        row("train: naive PyTorch loop, fp32, plain Adam (batch 8, 224 px)", s["train_naive_fp32_images_per_s"],
            f"1.00 (baseline); {_fmt(100 * s['train_naive_fp32_share_of_fp32_peak'], 0)} % of the fp32 peak"),
        row(f"train: platform step without Ray ({precision}, channels_last, fused Adam)",
            s["train_platform_images_per_s"], f"{_fmt(s['train_speedup_vs_naive_fp32'])} x naive; "
            + share("train_share_of_bf16_peak"), "train_share_of_bf16_peak"),
        row("train: platform through Ray Train (TorchTrainer, 2nd epoch)", s["train_ray_images_per_s"],
            f"{_fmt(s['ray_train_vs_plain_step'])} x step without Ray", "ray_train_vs_plain_step"),
        f"| data: share of the platform step spent waiting for data | | {_fmt(100 * s['data_wait_fraction'], 1)} % "
        f"(Ray Train: {_fmt(100 * s['ray_train_data_wait_fraction'], 1)} %) | < 10 % | "
        f"{target_met('data_wait_fraction', s['data_wait_fraction'])} |",
        row("infer: naive fp32, no_grad (batch 16)", s["infer_naive_fp32_images_per_s"], "1.00 (baseline)"),
        row(f"infer: predict path, Predictor.predict_tensor {precision} (batch 16)", s["infer_predictor_images_per_s"],
            f"{_fmt(s['infer_speedup_vs_naive_fp32'])} x naive; " + share("infer_share_of_bf16_peak"),
            "infer_share_of_bf16_peak"),
        row("infer: predict path, precision int8 (ONNX Runtime, batch 16)", s["infer_int8_images_per_s"],
            f"{_fmt(s['int8_speedup_vs_bf16'])} x the {precision} predict path", "int8_speedup_vs_bf16"),
        f"| int8 against {precision}: mean abs. probability difference (tiny hybrid trained on the square task, "
        f"{_fmt(s['int8_images_compared'], 0)} held-out images; "
        f"{'calibrated on its validation images' if s.get('int8_calibrated') == 1.0 else 'dynamic, uncalibrated'}) "
        f"| | {_fmt(s['int8_mean_abs_diff'], 4)} | {target_text('int8_mean_abs_diff')} | "
        f"{target_met('int8_mean_abs_diff', s['int8_mean_abs_diff'])} |",
        f"| int8 against {precision}: same label ({_fmt(100 * s['int8_scores_spread'], 0)} % of the scores at least "
        f"0.05 from the threshold) | | {_fmt(100 * s['int8_label_agreement'], 1)} % | >= 99 % | "
        f"{target_met('int8_label_agreement', s['int8_label_agreement'])} |",
        f"| export: ONNX against the checkpoint, fp32, largest probability difference | | "
        f"{_fmt_small(s['onnx_parity_max_abs_diff'])} | {target_text('onnx_parity_max_abs_diff')} | "
        f"{target_met('onnx_parity_max_abs_diff', s['onnx_parity_max_abs_diff'])} |",
        row(f"serve: POST /predict over HTTP, {settings.get('serve concurrency', '?')} concurrent clients",
            s["serve_images_per_s"], f"{_fmt(s['serve_vs_bare_batched'])} x predict path batch 16",
            "serve_vs_bare_batched"),
        f"| serve: single-image latency, one client | | p50 {_fmt(s['serve_p50_ms'], 0)} ms = "
        f"{_fmt(s['serve_p50_vs_bare_single'])} x the bare predict path's {_fmt(s['bare_single_p50_ms'], 0)} ms "
        f"(p90 {_fmt(s['serve_p90_ms'], 0)} ms; under load p50 {_fmt(s['serve_concurrent_p50_ms'], 0)} ms) | "
        f"{target_text('serve_p50_vs_bare_single')} | {target_met('serve_p50_vs_bare_single', s['serve_p50_vs_bare_single'])} |",
        row("batch scoring: score.py's Ray Data pipeline, steady rate (the large run's files beyond the small run's)",
            s["score_steady_images_per_s"],
            f"{_fmt(s['score_vs_predict_path'])} x the predict path in one process on the same files "
            f"({_fmt(s['score_predict_path_images_per_s'])} images/s, decoding included), over "
            f"{_fmt(s['score_steady_images'], 0)} files; start-up {_fmt(s['score_startup_s'], 0)} s (Ray Data and the "
            f"model actor); start to finish on {_fmt(s['score_images'], 0)} files "
            f"{_fmt(s['score_end_to_end_vs_predict_path'])} x", "score_vs_predict_path"),
        f"| main job (`reproduce_baseline.py`, 5 epochs): wall time over the sum of epoch times | | "
        f"{_fmt(s['main_job_wall_s'], 0)} s / {_fmt(s['main_job_epochs_s'], 0)} s = {_fmt(s['main_job_overhead'])} | "
        f"{target_text('main_job_overhead')} | {target_met('main_job_overhead', s['main_job_overhead'])} |",
    ]
    if not math.isnan(s["matmul_fp32_flops"]):
        lines += ["", (
            f"Hardware probe (the best of square, batched and ViT-shaped matmuls on all cores): "
            f"{_fmt(s['matmul_fp32_flops'] / 1e9, 0)} GFLOP/s fp32, {_fmt(s['matmul_bf16_flops'] / 1e9, 0)} GFLOP/s bf16. "
            f"Shares use {TRAIN_FLOP_PER_IMAGE / 1e9:.1f} GFLOP per training image and {INFER_FLOP_PER_IMAGE / 1e9:.1f} "
            "per inference image.")]
    lines += cpu_lines(s, info)
    if "fp32_val_auc_mean" in s:
        within = "yes" if s["bf16_auc_within_noise"] else "no"
        lines += [
            "",
            "| numerics (tiny hybrid, generated 64 px set) | val AUC, mean +- std over seeds | final train loss |",
            "| --- | ---: | ---: |",
            f"| fp32 | {_fmt(s['fp32_val_auc_mean'], 4)} +- {_fmt(s['fp32_val_auc_std'], 4)} "
            f"| {_fmt(s['fp32_train_loss_mean'], 4)} |",
            f"| bf16 autocast | {_fmt(s['bf16_val_auc_mean'], 4)} +- {_fmt(s['bf16_val_auc_std'], 4)} "
            f"| {_fmt(s['bf16_train_loss_mean'], 4)} |",
            f"| bf16 - fp32, paired by seed | {_fmt(s['bf16_minus_fp32_val_auc'], 4)} (within noise: {within}) | |",
        ]
        if max(s["fp32_val_auc_mean"], s["bf16_val_auc_mean"]) < 0.6:
            lines += ["", "Both precisions stayed near chance (AUC < 0.6): from random weights the tiny model did "
                          "not learn this data within the budget, so this shows that bf16 trains as fp32 does, not "
                          "parity at a high AUC."]
    return "\n".join(lines)


def _fmt_small(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1e}"


def render_gpu_table(summary: dict[str, float], info: dict[str, str], settings: dict[str, Any]) -> str:
    """The Markdown table of a GPU run: images/s and MFU, eager and compiled."""
    s = summary
    lines = [
        _machine_line(info),
        "",
        f"Settings: {', '.join(f'{k} {v}' for k, v in settings.items())}; peak {s['peak_flops'] / 1e12:.1f} TFLOP/s.",
        "",
        "| measurement | images/s | MFU |",
        "| --- | ---: | ---: |",
    ]
    for phase, what in (("train_eager", "train: platform step, bf16, eager"),
                        ("train_compiled", "train: platform step, bf16, torch.compile"),
                        ("infer_eager", "infer: predict path, bf16, eager"),
                        ("infer_compiled", "infer: predict path, bf16, torch.compile")):
        lines.append(f"| {what} | {_fmt(s[f'{phase}_images_per_s'], 0)} | {_fmt(100 * s[f'{phase}_mfu'], 1)} % |")
    return "\n".join(lines)


def _machine_line(info: dict[str, str]) -> str:
    return (f"Machine: {info['cpu']}, {info['cores']} cores ({info['cpu_bf16']}), accelerator {info['accelerator']}; "
            f"{info['date']}; Python {info['python']}, torch {info['torch']}, ray {info['ray']}, timm {info['timm']}.")


def cpu_lines(s: dict[str, float], info: dict[str, str]) -> list[str]:
    """Where the cores went in each watched window: every role's share of the machine, largest first."""
    cores = float(info.get("cores") or 1)
    names = {"cpu_serve_idle": "serve, app deployed and idle", "cpu_serve_load": "serve under load",
             "cpu_train_ray": "Ray Train (start-up included)", "cpu_score": "batch scoring, large run"}
    lines = []
    for window, what in names.items():
        prefix = f"{window}__"
        shares = sorted(((value, key[len(prefix):]) for key, value in s.items()
                         if key.startswith(prefix) and key != f"{prefix}wall_s" and not math.isnan(value)),
                        reverse=True)
        if shares:
            parts = ", ".join(f"{role.replace('_', ' ')} {100 * value / cores:.1f} %" for value, role in shares
                              if value / cores >= 0.005)
            lines.append(f"- {what} ({_fmt(s.get(prefix + 'wall_s'), 0)} s): {parts}")
    if not lines:
        return []
    front = s.get("serve_front_cpu_ms_per_request", math.nan)
    return ["", "Where the cores went (share of the machine's cores per process role, CPU seconds over wall "
                f"seconds; Serve's proxy and ingress: {_fmt(front, 0)} ms CPU per request beyond their idle cost):",
            *lines]
