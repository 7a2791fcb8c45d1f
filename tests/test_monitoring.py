"""Drift and the prediction log's arithmetic (deepfake_platform/monitoring.py) on cases worked by hand, without
Serve or Ray: the server's /monitoring and the report over a real log are in test_serve_monitoring.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from deepfake_platform.monitoring import DriftWindow, bucket_size, ks_pvalue, psi, reference_scores, summarize

TEN = [float(value) for value in range(10)]


def test_psi_on_two_bins_worked_by_hand():
    # The reference's median (4.5) splits it half and half; three of the four current scores lie below it.
    expected = (0.75 - 0.5) * math.log(0.75 / 0.5) + (0.25 - 0.5) * math.log(0.25 / 0.5)
    assert psi(TEN, [0.0, 1.0, 2.0, 9.0], bins=2) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.2747, abs=1e-4)  # above 0.25: "the inputs changed"


def test_psi_floors_an_empty_bin_instead_of_dividing_by_zero():
    # Nothing above the median: that bin's share is floored at 1e-4, so the PSI is large but finite.
    expected = (1.0 - 0.5) * math.log(1.0 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert psi(TEN, [0.0, 1.0, 2.0], bins=2) == pytest.approx(expected, rel=1e-12)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 1, 2000)
    assert psi(reference, reference) == 0.0
    shifts = [psi(reference, np.clip(reference + shift, 0, 1)) for shift in (0.05, 0.2, 0.5)]
    assert 0 < shifts[0] < 0.1 < shifts[1] < shifts[2]


def test_psi_sees_a_shift_away_from_a_reference_of_one_repeated_value():
    assert psi([0.3] * 5, [0.3] * 5) == 0.0
    assert psi([0.3] * 5, [0.9] * 5) > 0.25
    assert psi([0.3] * 5, [0.1] * 5) > 0.25


def test_psi_and_ks_of_an_empty_sample_are_nan():
    assert math.isnan(psi([], [0.5])) and math.isnan(psi([0.5], []))
    assert math.isnan(ks_pvalue([], [0.5])) and math.isnan(ks_pvalue([0.5], []))


def test_ks_p_of_two_separated_samples_is_the_exact_probability_of_that_order():
    # Five scores all below five others: of the C(10, 5) = 252 equally likely orders, 2 are this extreme.
    assert ks_pvalue([0.1, 0.2, 0.3, 0.4, 0.5], [0.6, 0.7, 0.8, 0.9, 1.0]) == pytest.approx(2 / 252, rel=1e-9)
    assert ks_pvalue(TEN, TEN) == pytest.approx(1.0)


def test_ks_p_is_scipys_two_sample_test():
    rng = np.random.default_rng(1)
    reference, current = rng.normal(0, 1, 300), rng.normal(0.3, 1, 200)
    assert ks_pvalue(reference, current) == ks_2samp(reference, current).pvalue
    assert ks_pvalue(reference, current) < 0.01 < ks_pvalue(reference, rng.normal(0, 1, 200))


def test_the_drift_window_keeps_the_last_answers_and_their_rates():
    window = DriftWindow(reference=TEN, size=4)
    assert window.snapshot() == {"window_size": 0, "window_capacity": 4, "reference_size": 10, "psi": None,
                                 "ks_p": None, "fake_rate": None, "no_face_rate": None}
    window.add(100.0, True, False)  # pushed out by the four after it
    for score, fake, no_face in ((1.0, False, False), (2.0, False, False), (None, False, True), (9.0, True, False)):
        window.add(score, fake, no_face)
    snapshot = window.snapshot()
    assert snapshot["window_size"] == 4 and snapshot["fake_rate"] == 0.25 and snapshot["no_face_rate"] == 0.25
    # An answer without a score (a picture skipped for having no face) counts for the rates only.
    assert snapshot["psi"] == psi(TEN, [1.0, 2.0, 9.0]) and snapshot["ks_p"] == ks_pvalue(TEN, [1.0, 2.0, 9.0])


def test_the_reference_is_both_classes_validation_scores():
    assert reference_scores({"real": [0.1, 0.2], "fake": [0.9]}) == [0.1, 0.2, 0.9]
    assert reference_scores({"fake": [0.8]}) == [0.8]


def test_buckets_are_the_smallest_width_giving_at_most_thirty_over_the_span():
    assert bucket_size(0, 1200) == (60.0, "minute")
    assert bucket_size(0, 3 * 3600) == (600.0, "10 minutes")
    assert bucket_size(0, 86400) == (3600.0, "hour")
    assert bucket_size(0, 2 * 86400) == (6 * 3600.0, "6 hours")  # 48 hourly buckets would be too many
    assert bucket_size(0, 400 * 86400) == (30 * 86400.0, "30 days")


def test_each_bucket_summarises_its_answers_and_the_corrected_ones():
    records = [
        {"time": "2026-12-05T10:00:10+00:00", "request_id": "a", "fake_probability": 0.9, "label": "fake"},
        {"time": "2026-12-05T10:00:20+00:00", "request_id": "b", "fake_probability": 0.2, "label": "real"},
        {"time": "2026-12-05T10:00:30+00:00", "request_id": "c", "fake_probability": None, "label": None,
         "no_face": True},
        {"time": "2026-12-05T10:01:05+00:00", "request_id": "d", "fake_probability": 0.7, "label": "fake"},
    ]
    labels = {"a": "real", "b": "real", "d": "fake"}  # a was answered wrong, b and d right
    first, second = summarize(records, [0.1, 0.8], labels, bucket_s=60)
    assert first["start"] == "2026-12-05T10:00+00:00" and second["start"] == "2026-12-05T10:01+00:00"
    assert first["answers"] == 3 and first["median"] == pytest.approx(0.55)
    assert first["fake_rate"] == pytest.approx(1 / 3) and first["no_face_rate"] == pytest.approx(1 / 3)
    assert first["corrected"] == 2 and first["accuracy"] == 0.5
    assert second["corrected"] == 1 and second["accuracy"] == 1.0 and second["psi"] == psi([0.1, 0.8], [0.7])
