"""Tests for the benchmark: its measuring functions on the tiny hybrid, and the pure figures-to-table code.

No assertion here is about speed: a test machine's speed says nothing about the code. The tests check
that every figure is produced, finite and in range, and that ratios, tables and documents are right.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from benchmarks.http_load import concurrent_load, single_request_latencies
from benchmarks.machine import machine_info, matmul_flops
from benchmarks.numerics import parity_summary, precision_parity
from benchmarks.report import update_doc
from benchmarks.runners import platform_train_runner, synthetic_batches
from benchmarks.scoring import steady_and_startup
from benchmarks.summary import summarize_cpu, summarize_gpu
from benchmarks.tables import render_cpu_table, render_gpu_table
from benchmarks.targets import CPU_JSON_KEYS, CPU_TARGETS, target_met
from benchmarks.timing import BenchmarkTimeout, interleaved, percentile, time_limit
from benchmarks.workspace import benchmark_config
from deepfake_platform.config import ExperimentConfig, with_changes
from deepfake_platform.data import build_dataset

REPO = Path(__file__).resolve().parents[1]


def finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.slow
@pytest.mark.long  # about a minute (it trains the tiny hybrid for int8's agreement): make test stays under 15
@pytest.mark.timeout(300)
def test_quick_run_without_ray_writes_every_json_key(tmp_path):
    out = tmp_path / "bench.json"
    doc = tmp_path / "benchmarks.md"
    doc.write_text("intro\n<!-- benchmark:cpu:start -->\nthe previous table\n<!-- benchmark:cpu:end -->\nafter\n")
    ran = subprocess.run([sys.executable, str(REPO / "experiments" / "benchmark.py"), "--quick", "--no-ray", "--model",
                          "hybrid_tiny", "--json", str(out), "--doc", str(doc), "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=280)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"updated {doc}" in ran.stdout and "targets met: " in ran.stdout
    figures = json.loads(out.read_text())
    assert set(CPU_JSON_KEYS) <= set(figures)
    for key in ("train_speedup_vs_naive_fp32", "infer_speedup_vs_naive_fp32", "train_naive_fp32_images_per_s",
                "train_platform_images_per_s", "infer_naive_fp32_images_per_s", "infer_predictor_bf16_images_per_s",
                "infer_int8_images_per_s", "int8_speedup_vs_bf16", "bare_single_p50_ms", "matmul_fp32_flops"):
        assert finite_positive(figures[key]), (key, figures[key])
    assert 0.0 <= figures["data_wait_fraction"] <= 1.0
    # int8 and the export are compared with the model they come from, on real image files.
    # int8 is judged on the tiny hybrid trained on the square task, calibrated on its validation images.
    assert 0.0 < figures["int8_mean_abs_diff"] <= 0.05
    assert 0.0 <= figures["int8_label_agreement"] <= 1.0 and figures["int8_images_compared"] == 128
    assert figures["int8_calibrated"] == 1.0 and 0.0 <= figures["int8_scores_spread"] <= 1.0
    assert 0.0 <= figures["onnx_parity_max_abs_diff"] <= 1e-3
    # Skipped phases are null (valid JSON), never a made-up number; shares need the hybrid's FLOP count.
    for key in ("ray_train_vs_plain_step", "serve_vs_bare_batched", "serve_p50_ms", "train_ray_images_per_s",
                "serve_p50_vs_bare_single", "main_job_overhead", "score_vs_predict_path", "train_share_of_bf16_peak",
                "infer_share_of_bf16_peak", "score_steady_images_per_s", "score_startup_s",
                "serve_front_cpu_ms_per_request", "serve_idle_cores", "serve_detector_cores", "ray_train_other_cores"):
        assert figures[key] is None, key
    assert not [key for key in figures if key.startswith("cpu_")], "a CPU breakdown of a phase that did not run"
    assert figures["errors"] == {}
    assert figures["machine"]["torch"] == torch.__version__
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "the previous table" not in text
    assert "| train: platform step without Ray" in text
    assert not list(tmp_path.glob("deepfake-benchmark-*")), "the temporary work folder was left behind"


@pytest.mark.timeout(300)
def test_precision_parity_trains_both_precisions(tmp_path):
    root = tmp_path / "data"
    build_dataset(root, counts={"train": 16, "val": 8, "test": 2}, size=32)
    config = benchmark_config(tmp_path, root, "hybrid_tiny", 8, lr=1e-3, epochs=1)
    runs = precision_parity(config, root, seeds=[0, 1])
    assert {name: {figure: len(values) for figure, values in run.items()} for name, run in runs.items()} == {
        "fp32": {"val_auc": 2, "train_loss": 2}, "bf16": {"val_auc": 2, "train_loss": 2}}
    assert all(0.0 <= auc <= 1.0 for run in runs.values() for auc in run["val_auc"])
    assert all(finite_positive(loss) for run in runs.values() for loss in run["train_loss"])
    summary = parity_summary(runs)
    assert summary["bf16_minus_fp32_val_auc"] == pytest.approx(
        sum(runs["bf16"]["val_auc"]) / 2 - sum(runs["fp32"]["val_auc"]) / 2)
    table = render_cpu_table({**summarize_cpu({"parity": summary})}, machine_info(torch.device("cpu")), {})
    assert "| bf16 - fp32, paired by seed |" in table


def test_platform_runner_reports_data_wait_and_throughput():
    config = with_changes(ExperimentConfig(), model={"name": "hybrid_tiny", "pretrained": "off"})
    loader = synthetic_batches(3, 4, 64, torch.device("cpu"))
    figures = platform_train_runner(config, loader, torch.device("cpu"))(3)
    assert figures["train_images"] == 12
    assert finite_positive(figures["images_per_s"])
    assert 0.0 <= figures["data_wait_fraction"] <= 1.0


def test_interleaved_alternates_runners_and_takes_medians():
    calls = []

    def runner(name, rates):
        rates = iter(rates)
        return lambda steps: calls.append((name, steps)) or {"images_per_s": next(rates)}

    result = interleaved({"a": runner("a", [99.0, 1.0, 3.0, 2.0]), "b": runner("b", [99.0, 5.0, 4.0, 6.0])},
                         warmup=1, steps=2, rounds=3)
    assert calls == [("a", 1), ("b", 1)] + [("a", 2), ("b", 2)] * 3
    assert result["a"]["images_per_s"] == 2.0 and result["b"]["images_per_s"] == 5.0
    assert result["a"]["rounds_images_per_s"] == [1.0, 3.0, 2.0]


def test_summarize_cpu_ratios_and_missing_phases():
    raw = {
        "train_naive_fp32": {"images_per_s": 2.0},
        "train_platform": {"images_per_s": 5.5, "data_wait_fraction": 0.03},
        "train_ray": {"images_per_s": 5.5 * 0.97, "data_wait_fraction": 0.04},
        "infer_naive_fp32": {"images_per_s": 6.0},
        "infer_predictor": {"images_per_s": 24.0},
        "serve_load": {"images_per_s": 18.0, "p50_ms": 800.0},
        "serve_single": None,  # a failed phase
        "bare_single": {"p50_ms": 100.0},
        "infer_int8": {"images_per_s": 40.0},
        "int8_accuracy": {"mean_abs_diff": 0.004, "label_agreement": 0.995, "images": 200.0, "spread": 0.97,
                          "calibrated": 1.0},
        "score_bare": {"images_per_s": 2.0},
        "score_ray_data": {"images_per_s": 1.9, "images": 160.0, "steady_images": 128.0, "start_s": 14.0,
                           "end_to_end_images_per_s": 1.5},
        "onnx": {"max_abs_diff": 2e-7},
        "main_job": {"wall_s": 690.0, "epochs_s": 600.0},
        "matmul_peak": {"fp32": 200e9, "bf16": 400e9},
    }
    summary = summarize_cpu(raw, train_flop_per_image=100e9, infer_flop_per_image=10e9)
    as_fp32 = summarize_cpu(raw, train_flop_per_image=100e9, infer_flop_per_image=10e9, precision="fp32")
    assert as_fp32["train_share_of_bf16_peak"] == pytest.approx(5.5 * 100e9 / 200e9)  # the peak of what ran
    assert summary["int8_speedup_vs_bf16"] == pytest.approx(40 / 24)
    assert summary["main_job_overhead"] == pytest.approx(1.15)
    assert math.isnan(summary["serve_p50_vs_bare_single"])
    assert summary["train_speedup_vs_naive_fp32"] == pytest.approx(2.75)
    assert summary["ray_train_vs_plain_step"] == pytest.approx(0.97)
    assert summary["infer_speedup_vs_naive_fp32"] == pytest.approx(4.0)
    assert summary["serve_vs_bare_batched"] == pytest.approx(0.75)
    assert math.isnan(summary["serve_p50_ms"])
    assert summary["train_naive_fp32_share_of_fp32_peak"] == pytest.approx(1.0)
    assert summary["train_share_of_bf16_peak"] == pytest.approx(5.5 * 100e9 / 400e9)
    assert summary["infer_share_of_bf16_peak"] == pytest.approx(24 * 10e9 / 400e9)
    assert summary["train_platform_share_of_bf16_peak"] == summary["train_share_of_bf16_peak"]
    assert math.isnan(summarize_cpu(raw)["train_share_of_bf16_peak"])
    met = {key: target_met(key, summary[key]) for key in CPU_TARGETS}
    assert met == {"train_share_of_bf16_peak": "yes", "ray_train_vs_plain_step": "yes", "data_wait_fraction": "yes",
                   "infer_share_of_bf16_peak": "no", "serve_vs_bare_batched": "no",
                   "serve_p50_vs_bare_single": "not measured", "int8_speedup_vs_bf16": "yes",
                   "int8_mean_abs_diff": "yes", "int8_label_agreement": "yes", "onnx_parity_max_abs_diff": "yes",
                   "main_job_overhead": "yes", "score_vs_predict_path": "yes"}
    # Batch scoring: the steady rate under its old and new names, the start-up beside it.
    assert summary["score_steady_images_per_s"] == summary["score_images_per_s"] == 1.9
    assert summary["score_startup_s"] == summary["score_start_s"] == 14.0
    assert summary["score_vs_predict_path"] == pytest.approx(0.95)
    assert target_met("data_wait_fraction", 0.2) == "no"
    assert target_met("main_job_overhead", 1.16) == "no"
    assert target_met("serve_p50_ms", 10.0) == ""
    table = render_cpu_table(summary, machine_info(torch.device("cpu")), {"mode": "test"})
    assert "| 2.75 x naive; 138 % of the bf16 matmul peak | >= 0.8 | yes |" in table
    assert "p50 n/a ms" in table
    assert "690 s / 600 s = 1.15 | <= 1.15 | yes |" in table
    assert "0.95 x the predict path in one process on the same files (2.00 images/s, decoding included), over 128 " \
           "files; start-up 14 s (Ray Data and the model actor); start to finish on 160 files 0.75 x | >= 0.9 | yes |" \
        in table
    assert "calibrated on its validation images" in table and "(97 % of the scores at least 0.05 from" in table


def test_scoring_steady_rate_and_startup_from_two_runs():
    # 16 files in 20 s and 80 files in 52 s: 64 extra files in 32 s, 2 images/s; the small run's 16 took 8 s of it.
    steady, startup = steady_and_startup(20.0, 16, 52.0, 80)
    assert steady == pytest.approx(2.0) and startup == pytest.approx(12.0)
    # A model so fast the runs take the same time: the end-to-end rate, and no start-up claimed.
    steady, startup = steady_and_startup(10.0, 16, 10.5, 80)
    assert steady == pytest.approx(80 / 10.5) and math.isnan(startup)


def test_summarize_gpu_mfu():
    summary = summarize_gpu({"train_eager": {"images_per_s": 2128.0}, "infer_compiled": None}, 989e12)
    assert summary["train_eager_mfu"] == pytest.approx(2128 * 116.5e9 / 989e12)
    assert math.isnan(summary["infer_compiled_mfu"]) and math.isnan(summary["train_compiled_images_per_s"])
    assert "| train: platform step, bf16, eager | 2128 | 25.1 % |" in render_gpu_table(
        summary, machine_info(torch.device("cpu")), {"batch": 256})


def test_update_doc_replaces_only_its_block():
    text = "a\n<!-- benchmark:cpu:start -->\nx\n<!-- benchmark:cpu:end -->\nb\n<!-- benchmark:gpu:start -->\ny\n" \
           "<!-- benchmark:gpu:end -->\n"
    updated = update_doc(text, "| new |\n", "cpu")
    assert updated == text.replace("\nx\n", "\n| new |\n")
    assert update_doc(updated, "x", "cpu") == text
    with pytest.raises(ValueError, match="markers"):
        update_doc("no markers", "x", "cpu")


def test_percentile_and_time_limit():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(BenchmarkTimeout, match="the phase"), time_limit(0.05, "the phase"):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.01)
    with time_limit(30, "a short block"):
        pass


class _Answer(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"fake_probability": 0.5}'
        self.send_response(200 if self.path == "/predict" else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_clients_count_every_request(http_server):
    latencies = single_request_latencies(f"{http_server}/predict", b"jpeg", 3, timeout_s=30)
    assert len(latencies) == 3 and all(finite_positive(value) for value in latencies)
    load = concurrent_load(f"{http_server}/predict", b"jpeg", requests=10, concurrency=4, timeout_s=30)
    assert load["requests"] == 10 and load["concurrency"] == 4
    assert finite_positive(load["images_per_s"]) and load["p90_ms"] >= load["p50_ms"] > 0
    with pytest.raises(RuntimeError, match="answered 500"):
        concurrent_load(f"{http_server}/broken", b"jpeg", requests=2, concurrency=2, timeout_s=30)


def test_parity_summary_judges_the_paired_difference():
    fp32 = {"val_auc": [0.90, 0.80, 0.85], "train_loss": [0.3, 0.4, 0.35]}
    close = {"val_auc": [0.91, 0.79, 0.86], "train_loss": [0.31, 0.39, 0.35]}
    worse = {"val_auc": [0.60, 0.52, 0.55], "train_loss": [0.6, 0.65, 0.62]}
    summary = parity_summary({"fp32": fp32, "bf16": close})
    assert summary["bf16_auc_within_noise"] == 1.0
    assert summary["fp32_val_auc_mean"] == pytest.approx(0.85) and summary["bf16_train_loss_mean"] == pytest.approx(0.35)
    assert parity_summary({"fp32": fp32, "bf16": worse})["bf16_auc_within_noise"] == 0.0


def test_the_probe_measures_every_dtype_within_its_budget():
    started = time.perf_counter()
    rates = {dtype: matmul_flops(dtype, torch.device("cpu"), budget_s=0.7) for dtype in (torch.float32, torch.bfloat16)}
    assert all(finite_positive(rate) for rate in rates.values()), rates
    # One product over its share ends the probe: an emulated dtype costs seconds, not minutes.
    assert time.perf_counter() - started < 120
