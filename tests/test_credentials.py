"""Content credentials: a JPEG signed here (a local CA and leaf made here, ES256, no time-stamp authority, no
network) with an action declaring a generative-AI source is read back, through the function and through
predict.py run as a user runs it; a file without a manifest, a tampered one and a corrupt one are reported,
never raised."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_platform.credentials import describe_credentials, read_credentials, read_credentials_path
from tests.factories import c2pa_jpegs, tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jpegs() -> dict[str, bytes]:
    return c2pa_jpegs()


def test_a_signed_image_declaring_generative_ai_reads_back(jpegs, tmp_path):
    credentials = read_credentials(jpegs["signed"], "image/jpeg")
    assert credentials["present"] is True and credentials["valid"] is True
    assert credentials["validation_state"] == "Valid"  # no trust anchors configured: valid, not trusted
    assert credentials["claim_generator"] == "test-generator 1.0"
    assert credentials["generative_ai"] is True and credentials["digital_source_types"] == ["trainedAlgorithmicMedia"]
    (tmp_path / "signed.jpg").write_bytes(jpegs["signed"])
    assert read_credentials_path(tmp_path / "signed.jpg") == credentials
    assert describe_credentials(credentials).startswith("content credentials by test-generator 1.0: valid")


def test_no_manifest_a_tampered_one_and_a_corrupt_file_are_answers_not_errors(jpegs):
    plain = read_credentials(jpegs["plain"], "image/jpeg")
    assert plain["present"] is False and plain["valid"] is None and plain["note"] is None
    tampered = read_credentials(jpegs["tampered"], "image/jpeg")
    assert tampered["present"] is True and tampered["valid"] is False and tampered["validation_state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in tampered["validation_failures"]
    assert "INVALID" in describe_credentials(tampered)
    corrupt = read_credentials(b"not a jpeg at all", "image/jpeg")
    assert corrupt["present"] is False and "could not be read" in corrupt["note"]
    unsupported = read_credentials(jpegs["signed"], "application/x-unknown")
    assert unsupported["present"] is False and "not a format" in unsupported["note"]


def test_predict_py_reports_the_credentials_beside_the_verdict(jpegs, tmp_path):
    (tmp_path / "signed.jpg").write_bytes(jpegs["signed"])
    checkpoint = tiny_checkpoint(tmp_path / "whole.pth", 0.5)
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "predict.py"), str(tmp_path / "signed.jpg"), "--checkpoint",
         str(checkpoint), "--json", str(tmp_path / "v.json")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "content credentials by test-generator 1.0: valid (Valid), declares a generative-AI source" in result.stdout
    (answer,) = json.loads((tmp_path / "v.json").read_text())
    assert answer["verdict"] in ("fake", "real")  # the model's own verdict, beside the credentials
    assert answer["credentials"]["generative_ai"] is True and answer["credentials"]["valid"] is True
