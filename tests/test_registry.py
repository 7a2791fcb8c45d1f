"""The model registry (a real MLflow SQLite store, tiny checkpoints, no Ray): versions, the champion and
challenger aliases, best.pth and serving.json moving with them, the server's withdrawal, the promotion gate,
and `experiments/models.py` run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_platform.checkpoints import file_sha256
from deepfake_platform.monitoring import PredictionLog
from deepfake_platform.promotion_gate import gate_refusal, shadow_evidence
from deepfake_platform.registry import REGISTERED_MODEL, Registry, RegistryError, version_file
from deepfake_platform.serving_state import read_state, slot, withdraw
from deepfake_platform.tracking import RunRecord, Tracking
from tests.factories import tiny_checkpoint
from tests.proctools import user_env

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "experiments" / "models.py"


def register(home: Path, seed: int, *, champion: bool = False, registry: Registry | None = None) -> int:
    """Track a run holding a tiny checkpoint and register it, as finalize_run does; its version."""
    registry = registry or Registry(home)
    model = tiny_checkpoint(home / "runs" / f"r{seed}" / "model" / "best.pth", seed=seed)
    run_id = registry.tracking.log_run(RunRecord(f"r{seed}", {"train": {"lr": 1e-4}}, [{"epoch": 0, "val_auc": 0.7}],
                                                 {"test_auc": 0.8}, [], model=model))
    assert run_id is not None
    return registry.register(model, run_id=run_id, summary={"run": f"r{seed}"}, champion=champion,
                             tags={"kind": "train", "run": f"r{seed}", "val_auc": 0.7, "test_auc": 0.8}).version


def aliases(registry: Registry) -> dict[str, int]:
    return {alias: int(version) for alias, version in registry.client.get_registered_model(REGISTERED_MODEL).aliases.items()}


def served(home: Path) -> bytes:
    return (home / "artifacts" / "best.pth").read_bytes()


def test_promote_challenge_and_rollback_move_the_aliases_best_pth_and_the_serving_state(tmp_path):
    registry = Registry(tmp_path)
    assert register(tmp_path, 1, registry=registry) == 1  # the first version answers: the server needs one
    assert register(tmp_path, 2, registry=registry) == 2  # then a challenger by default
    assert aliases(registry) == {"champion": 1, "challenger": 2}
    assert served(tmp_path) == version_file(tmp_path / "artifacts", 1).read_bytes()
    state_file = tmp_path / "artifacts" / "serving.json"
    state = read_state(state_file)
    assert state["history"] == [1] and state["challenger"]["mode"] is None
    champion = slot(state, "champion", state_file)
    assert champion.path == version_file(tmp_path / "artifacts", 1) and champion.sha256 == file_sha256(champion.path)

    registry.promote(2)  # the challenger answers: its slot empties
    assert aliases(registry) == {"champion": 2}
    assert served(tmp_path) == version_file(tmp_path / "artifacts", 2).read_bytes() != version_file(
        tmp_path / "artifacts", 1).read_bytes()
    assert json.loads((tmp_path / "artifacts" / "best.json").read_text())["version"] == 2
    state = read_state(state_file)
    assert state["history"] == [1, 2] and state["challenger"] is None and state["champion"]["version"] == 2

    assert register(tmp_path, 3, registry=registry) == 3
    registry.challenge(3, mode="canary", fraction=0.25)
    assert slot(read_state(state_file), "challenger", state_file).fraction == 0.25
    registry.rollback()
    assert aliases(registry) == {"champion": 1, "challenger": 3}
    assert served(tmp_path) == version_file(tmp_path / "artifacts", 1).read_bytes()
    assert read_state(state_file)["history"] == [1]
    with pytest.raises(RegistryError, match="no previous champion to roll back to .version 1 is the only"):
        registry.rollback()
    with pytest.raises(RegistryError, match="there is no version 9 of deepfake-detector.*known versions: 1, 2, 3"):
        registry.promote(9)
    with pytest.raises(RegistryError, match="version 1 is the champion already"):
        registry.challenge(1)
    assert register(tmp_path, 4, champion=True, registry=registry) == 4  # --promote: champion at once
    assert aliases(registry)["champion"] == 4 and read_state(state_file)["history"] == [1, 4]
    tags = registry.describe(4)["tags"]
    assert tags["sha256"] == file_sha256(version_file(tmp_path / "artifacts", 4)) and tags["val_auc"] == "0.7"
    assert registry.version_by_sha256(tags["sha256"]) == 4


def test_a_challenger_the_server_withdrew_is_reconciled_in_mlflow(tmp_path):
    registry = Registry(tmp_path)
    register(tmp_path, 1, registry=registry)
    register(tmp_path, 2, registry=registry)
    assert withdraw(tmp_path / "artifacts" / "serving.json", 2, "error rate 0.40 above 0.05")
    said = registry.reconcile()
    assert said and "withdrew challenger version 2" in said[0] and "error rate 0.40 above 0.05" in said[0]
    assert aliases(registry) == {"champion": 1}
    assert "error rate 0.40 above 0.05" in registry.describe(2)["tags"]["withdrawn"]
    assert registry.reconcile() == []  # once


def shadow_line(request_id: str, champion_p: float, challenger_p: float, error: str | None = None) -> dict:
    label = lambda p: "fake" if p >= 0.5 else "real"  # noqa: E731
    return {"event": "shadow", "request_id": request_id, "time": f"2026-12-05T12:00:{request_id[-2:]}+00:00",
            "champion": {"version": 1, "fake_probability": champion_p, "label": label(champion_p)},
            "challenger": {"version": 2, "fake_probability": None if error else challenger_p,
                           "label": None if error else label(challenger_p), "latency_ms": 12.0, "error": error}}


def test_the_shadow_evidence_counts_agreement_delta_and_accuracy_on_corrections():
    lines = [shadow_line("r01", 0.9, 0.8), shadow_line("r02", 0.9, 0.2), shadow_line("r03", 0.1, 0.3),
             shadow_line("r04", 0.1, 0.0, error="boom"),
             {"request_id": "r05", "fake_probability": 0.9, "model": {"version": 1, "role": "champion"}}]
    corrections = [{"request_id": "r02", "label": "real"}, {"request_id": "r03", "label": "fake"},
                   {"request_id": "r05", "label": "real"}]  # r05 was not shadowed
    evidence = shadow_evidence(lines, corrections, 2)
    assert (evidence.shadowed, evidence.failed, evidence.corrections) == (3, 1, 2)
    assert evidence.agreement == pytest.approx(2 / 3) and evidence.mean_abs_delta == pytest.approx((0.1 + 0.7 + 0.2) / 3)
    assert (evidence.champion_accuracy, evidence.challenger_accuracy) == (0.0, 0.5)
    assert gate_refusal(evidence, min_shadowed=3, min_corrections=2) is None
    refusal = gate_refusal(evidence, min_shadowed=4, min_corrections=2)
    assert refusal.startswith("version 2 has 3 shadowed request(s), 4 required;")
    assert shadow_evidence(lines, corrections, 7).shadowed == 0


def models(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MODELS), *args], cwd=home, env=user_env(), capture_output=True,
                          text=True, timeout=120)


def models_here(home: Path, capsys, *args: str) -> subprocess.CompletedProcess:
    """The same command in this process (each subprocess pays seconds of imports): exit code and output."""
    from deepfake_platform.orchestration.registry_cli import run

    code = 0
    try:
        run(["--home", str(home), *args])
    except SystemExit as end:
        code = end.code or 0
    said = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, said.out, said.err)


@pytest.mark.timeout(300)
def test_the_registry_command_as_a_user_runs_it(tmp_path, capsys):
    missing = models(tmp_path, "promote", "1")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith(
        "error: no model is registered under"), missing.stderr[-2000:]
    registry = Registry(tmp_path)
    register(tmp_path, 1, registry=registry)
    register(tmp_path, 2, registry=registry)

    listed = models(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = [line.split() for line in listed.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[:2] for row in rows] == [["2", "challenger"], ["1", "champion"]], listed.stdout
    for chatter in ("alembic", "Creating initial MLflow", "INFO", "Warning", "telemetry"):
        assert chatter not in listed.stdout + listed.stderr, listed.stdout + listed.stderr

    # The gate: the server's log says what the shadow saw.
    log = PredictionLog(tmp_path / "logs" / "predictions")
    for line in [shadow_line("r01", 0.9, 0.8), shadow_line("r02", 0.9, 0.2)]:
        log.write(line)
    (tmp_path / "feedback").mkdir()
    (tmp_path / "feedback" / "labels.jsonl").write_text(json.dumps({"request_id": "r02", "label": "real"}) + "\n")
    refused = models(tmp_path, "promote", "2", "--min-shadowed", "3", "--min-corrections", "1")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "shadowed requests      2" in refused.stdout and "challenger 100.0%" in refused.stdout
    assert refused.stderr.strip().splitlines()[-1].startswith("error: not promoted: version 2 has 2 shadowed")
    assert aliases(registry)["champion"] == 1
    promoted = models_here(tmp_path, capsys, "promote", "2", "--min-shadowed", "2", "--min-corrections", "1")
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    assert "Version 2 is the champion (history [1, 2])" in promoted.stdout
    assert served(tmp_path) == version_file(tmp_path / "artifacts", 2).read_bytes()

    challenged = models_here(tmp_path, capsys, "challenge", "1", "--mode", "canary", "--fraction", "0.25")
    assert challenged.returncode == 0 and "Version 1 is the challenger (canary on 25% of requests)" in challenged.stdout
    rolled = models_here(tmp_path, capsys, "rollback")
    assert rolled.returncode == 0 and "version 1 is the champion again" in rolled.stdout, rolled.stderr[-2000:]
    assert aliases(registry) == {"champion": 1}  # the challenger that now answers left its slot

    (tmp_path / "artifacts" / "serving.json").write_text("{ half")
    corrupt = models_here(tmp_path, capsys, "show", "2")
    assert corrupt.returncode == 2 and "serving.json is not valid JSON" in corrupt.stderr
    assert "Traceback" not in corrupt.stderr


@pytest.mark.timeout(300)
def test_the_store_opens_with_mlflow_ui_and_an_unreachable_server_is_one_sentence(tmp_path, monkeypatch, capsys):
    tracking = Tracking.start(tmp_path)
    run_id = tracking.log_run(RunRecord("r", {"a": {"b": 1}}, [{"epoch": 0, "val_auc": 0.5}, {"epoch": 1, "val_auc": 0.7}],
                                        {"test_auc": 0.8}, []))
    client, _ = tracking.client()
    assert [m.step for m in client.get_metric_history(run_id, "val_auc")] == [0, 1]
    assert client.get_run(run_id).data.params == {"a.b": "1"}
    assert client.get_experiment_by_name("deepfake-platform").artifact_location.startswith("file:///")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert Tracking.start(tmp_path / "other").log_run(RunRecord("r", {}, [], {}, [])) is None
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("warning: MLflow tracking failed (") and \
        "check that MLFLOW_TRACKING_URI=http://127.0.0.1:9 is reachable" in said[0]


def test_the_registry_command_hides_no_package_from_the_recipes_beside_it():
    """A script's folder comes first on sys.path, so a recipe importing the project's `models` package finds
    experiments/models.py (the command the issue names): it must hand over the real package."""
    probe = ("import sys; sys.path.insert(0, 'experiments'); import models; "
             "from models import create_detector; print(models.__file__)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(REPO / "models" / "__init__.py")
    other = {path.parent.name for path in REPO.glob("*/__init__.py")} - {"models"}
    assert not other & {path.stem for path in (REPO / "experiments").glob("*.py")}
