"""The challenger's trial in the ingress, without Serve: which requests it sees, each limit that withdraws it,
and the serving state it follows and writes back."""

from __future__ import annotations

import pytest

from deepfake_platform.serving_state import read_state, slot, write_state
from serve.lifecycle import ChallengerTrial
from serve.settings import ChallengerArgs


def state_with(path, challenger: dict | None) -> None:
    champion = {"version": 1, "file": "models/v1.pth", "sha256": "a" * 64}
    write_state(path, {"registered_model": "deepfake-detector", "champion": champion, "challenger": challenger,
                       "history": [1], "withdrawn": None})


def trial_for(tmp_path, *, mode: str | None = None, fraction: float | None = None, **limits) -> ChallengerTrial:
    state = tmp_path / "serving.json"
    state_with(state, {"version": 2, "file": "models/v2.pth", "sha256": "b" * 64, "mode": mode,
                       "fraction": fraction})
    args = ChallengerArgs.model_validate({"mode": "shadow", "fraction": 0.1,
                                          "limits": {"min_requests": 10, **limits}})
    return ChallengerTrial(str(state), args, enabled=True, poll_s=0.0)


def side(probability: float, latency_ms: float = 10.0, threshold: float = 0.5) -> dict:
    return {"fake_probability": probability, "label": "fake" if probability >= threshold else "real",
            "latency_ms": latency_ms}


def test_a_shadow_sees_every_request_and_a_canary_exactly_its_share(tmp_path):
    (tmp_path / "a").mkdir()
    shadow = trial_for(tmp_path / "a")
    arms = [shadow.choose() for _ in range(50)]
    assert all(arm is not None and not arm.canary and arm.version == 2 for arm in arms)

    (tmp_path / "b").mkdir()
    canary = trial_for(tmp_path / "b", mode="canary", fraction=0.3)
    arms = [canary.choose() for _ in range(1000)]
    assert sum(arm is not None for arm in arms) == 300  # the others are the champion's alone
    assert all(arm.canary for arm in arms if arm is not None)


def test_the_config_decides_mode_and_fraction_unless_the_registry_says(tmp_path):
    trial = trial_for(tmp_path)  # mode and fraction null in the state
    trial.choose()
    assert (trial.trial.mode, trial.trial.fraction) == ("shadow", 0.1)


@pytest.mark.parametrize(("limit", "challenger", "error", "phrase"), [
    ({"max_error_rate": 0.05}, None, "ModelFailed: corrupt", "error rate"),
    ({"max_p95_latency_ms": 100.0}, side(0.7, latency_ms=500.0), None, "p95 latency"),
    ({"max_disagreement": 0.2}, side(0.2), None, "disagrees with the champion"),
])
def test_each_limit_withdraws_the_challenger_once_enough_requests_were_seen(tmp_path, limit, challenger, error,
                                                                            phrase):
    trial = trial_for(tmp_path, **limit)
    reasons = []
    for _ in range(10):
        arm = trial.choose()
        reasons.append(trial.record(arm, champion=side(0.8), challenger=challenger, error=error))
    assert reasons[:9] == [None] * 9  # not judged before min_requests
    assert phrase in reasons[9]
    assert trial.withdraw(2, reasons[9]) is True
    assert trial.withdraw(2, reasons[9]) is False  # once, however many requests crossed the limit together
    assert trial.choose() is None
    state = read_state(tmp_path / "serving.json")
    assert state["challenger"] is None and state["withdrawn"]["version"] == 2
    assert phrase in state["withdrawn"]["reason"]
    assert trial.snapshot()["withdrawn"]["version"] == 2


def test_drift_against_its_own_validation_scores_withdraws_it(tmp_path):
    trial = trial_for(tmp_path, max_psi=0.25, max_disagreement=1.0)
    trial.references[2] = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9] * 20
    reason = None
    for _ in range(10):
        reason = trial.record(trial.choose(), champion=side(0.99), challenger=side(0.99), error=None)
    assert reason is not None and "PSI" in reason


def test_a_healthy_challenger_stays_and_the_comparison_adds_up(tmp_path):
    trial = trial_for(tmp_path)
    for i in range(20):
        arm = trial.choose()
        assert trial.record(arm, champion=side(0.8), challenger=side(0.7 if i % 10 else 0.4), error=None) is None
    snapshot = trial.snapshot()
    assert snapshot["compared"] == 20 and snapshot["agreement"] == pytest.approx(0.9)
    assert snapshot["mean_abs_delta"] == pytest.approx((18 * 0.1 + 2 * 0.4) / 20)
    trial.correction({"shadow": {"champion": {"label": "fake"}, "challenger": {"version": 2, "label": "real"}}},
                     "real")
    snapshot = trial.snapshot()
    assert snapshot["corrections"] == 1
    assert snapshot["champion"]["accuracy_on_corrections"] == 0.0
    assert snapshot["challenger_model"]["accuracy_on_corrections"] == 1.0


def test_a_new_challenger_starts_a_new_trial_and_none_ends_it(tmp_path):
    trial = trial_for(tmp_path)
    trial.record(trial.choose(), champion=side(0.8), challenger=side(0.8), error=None)
    state_with(tmp_path / "serving.json", {"version": 3, "file": "models/v3.pth", "sha256": "c" * 64})
    assert trial.choose().version == 3
    assert trial.snapshot()["compared"] == 0
    state_with(tmp_path / "serving.json", None)
    assert trial.choose() is None and trial.snapshot() is None


def test_a_withdrawn_version_challenged_again_is_on_trial_again(tmp_path):
    trial = trial_for(tmp_path, max_error_rate=0.05)
    for _ in range(10):
        reason = trial.record(trial.choose(), champion=None, challenger=None, error="ModelFailed: out of memory")
    assert trial.withdraw(2, reason) and trial.choose() is None
    # `experiments/models.py challenge 2` again: the withdrawal is cleared from the state.
    state_with(tmp_path / "serving.json", {"version": 2, "file": "models/v2.pth", "sha256": "b" * 64})
    assert trial.choose().version == 2 and trial.snapshot()["requests_seen"] == 0


def test_a_correction_of_a_request_the_challenger_failed_on_scores_neither(tmp_path):
    trial = trial_for(tmp_path)
    trial.choose()
    trial.correction({"shadow": {"champion": {"version": 1, "label": "fake"},
                                 "challenger": {"version": 2, "error": "ModelFailed: corrupt"}}}, "real")
    assert trial.snapshot()["corrections"] == 0


def test_a_malformed_state_reads_as_none_on_a_server_and_as_an_error_elsewhere(tmp_path):
    path = tmp_path / "serving.json"
    for text in ("{ half", "[1, 2]", '{"champion": {"version": "x"}}'):
        path.write_text(text)
        state = read_state(path, strict=False)
        assert state is None or slot(state, "champion", path) is None
    path.write_text("{ half")
    with pytest.raises(ValueError):
        read_state(path)
