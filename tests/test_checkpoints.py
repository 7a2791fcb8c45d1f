"""Checkpoints: atomic writes, weights_only loading, refusal of pickle payloads, rebuilding the model."""

from __future__ import annotations

import pickle

import pytest
import torch

from deepfake_platform import checkpoints
from deepfake_platform.checkpoints import (
    CheckpointError,
    build_model_from_checkpoint,
    checkpoint_filename,
    load_checkpoint,
    save_checkpoint,
)
from models import create_detector


def tiny_payload(epoch: int = 0, val_auc: float = 0.5) -> dict:
    model = create_detector("hybrid_tiny", pretrained_policy="off")
    return {
        "model_state_dict": model.state_dict(),
        "epoch": epoch,
        "val_auc": val_auc,
        "val_threshold": 0.4,
        "config": {"name": "t"},
        "detector": {"name": "hybrid_tiny", "kwargs": dict(model.detector_kwargs)},
    }


def test_round_trip_rebuilds_the_same_model(tmp_path):
    payload = tiny_payload()
    path = save_checkpoint(payload, tmp_path / "best.pth")
    loaded = load_checkpoint(path)
    model = build_model_from_checkpoint(loaded).eval()
    images = torch.randn(2, 3, 64, 64)
    reference = create_detector("hybrid_tiny", pretrained_policy="off")
    reference.load_state_dict(payload["model_state_dict"])
    torch.testing.assert_close(model(images), reference.eval()(images))
    assert loaded["val_threshold"] == 0.4


def test_a_crash_while_writing_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(tiny_payload(epoch=1, val_auc=0.9), tmp_path / "best.pth")

    def crash(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny_payload(epoch=2, val_auc=0.95), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth"]  # no temporary file left behind


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_pickle_payload_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not (tmp_path / "PWNED").exists()


def test_missing_truncated_and_foreign_files_are_sentences(tmp_path):
    with pytest.raises(CheckpointError, match="reproduce_baseline.py"):
        load_checkpoint(tmp_path / "nope.pth")
    path = save_checkpoint(tiny_payload(), tmp_path / "cut.pth")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(path)
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="lacks model_state_dict"):
        load_checkpoint(tmp_path / "foreign.pth")


def test_filename_format():
    assert checkpoint_filename(3, 0.99321) == "epoch_003_auc_0.9932.pth"


def test_link_checkpoint_makes_best_the_same_file_without_rewriting(tmp_path):
    from deepfake_platform.checkpoints import link_checkpoint

    epoch_file = save_checkpoint(tiny_payload(epoch=3, val_auc=0.8), tmp_path / "epoch_003_auc_0.8000.pth")
    save_checkpoint(tiny_payload(epoch=1, val_auc=0.6), tmp_path / "best.pth")
    best = link_checkpoint(epoch_file, tmp_path / "best.pth")
    assert best.stat().st_ino == epoch_file.stat().st_ino
    assert load_checkpoint(best)["epoch"] == 3
    epoch_file.unlink()  # a stale epoch file removed later leaves best.pth whole
    assert load_checkpoint(best)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth"]
