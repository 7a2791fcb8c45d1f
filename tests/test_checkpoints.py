"""Checkpoints: one typed record per kind, atomic writes, one weights_only loader, old files still load."""

from __future__ import annotations

import pickle

import pytest
import torch

from deepfake_platform import checkpoints
from deepfake_platform.checkpoints import (
    CheckpointError,
    DetectorCheckpoint,
    EnsembleCheckpoint,
    FrequencyCheckpoint,
    build_model,
    checkpoint_filename,
    describe_parameters,
    link_checkpoint,
    read_checkpoint,
    remove_partial_writes,
    write_checkpoint,
)
from models import create_detector, parameter_table
from tests.factories import tiny_record


def test_round_trip_rebuilds_the_same_model(tmp_path):
    record = tiny_record(val_threshold=0.4)
    path = write_checkpoint(record, tmp_path / "best.pth")
    loaded = read_checkpoint(path, DetectorCheckpoint)
    model = build_model(loaded).eval()
    images = torch.randn(2, 3, 64, 64)
    reference = create_detector("hybrid_tiny", pretrained_policy="off")
    reference.load_state_dict(record.model_state_dict)
    torch.testing.assert_close(model(images), reference.eval()(images))
    assert loaded.val_threshold == 0.4 and loaded.parameters["total"] == parameter_table(reference)["total"]


def test_the_file_is_a_plain_dict_with_the_first_formats_keys(tmp_path):
    path = write_checkpoint(tiny_record(), tmp_path / "best.pth")
    payload = torch.load(path, weights_only=True)  # what README promises users
    assert payload["kind"] == "detector" and payload["format"] == checkpoints.FORMAT_VERSION
    assert {"model_state_dict", "epoch", "val_auc", "val_threshold", "config", "detector"} <= payload.keys()
    assert payload["detector"]["name"] == "hybrid_tiny"


def test_first_format_files_still_load_and_describe_themselves_without_a_model(tmp_path):
    model = create_detector("hybrid_tiny", pretrained_policy="off", freeze="cnn")
    old = {"model_state_dict": model.state_dict(), "optimizer_state_dict": {}, "epoch": 1, "val_auc": 0.6,
           "val_threshold": 0.3, "config": {"name": "old"}, "history": [],
           "detector": {"name": "hybrid_tiny", "kwargs": dict(model.detector_kwargs)}}
    torch.save(old, tmp_path / "old.pth")
    record = read_checkpoint(tmp_path / "old.pth", DetectorCheckpoint)
    assert (record.epoch, record.val_threshold, record.parameters) == (1, 0.3, {})
    counted = describe_parameters(record)  # counted on a meta-device rebuild
    assert (counted["total"], counted["frozen"]) == (parameter_table(model)["total"], parameter_table(model)["frozen"])
    frequency = {"kind": "frequency", "state": {"kind": "x"}, "val_threshold": 0.5, "val_auc": 0.7}
    torch.save(frequency, tmp_path / "freq.pth")
    assert isinstance(read_checkpoint(tmp_path / "freq.pth"), FrequencyCheckpoint)


def test_a_record_of_another_kind_is_named(tmp_path):
    path = write_checkpoint(EnsembleCheckpoint(name="e", members=[], combiner={"kind": "mean"}, threshold=0.5,
                                               val_auc=0.5), tmp_path / "ensemble.pth")
    with pytest.raises(CheckpointError, match="is a ensemble file, not a detector file.*as a whole"):
        read_checkpoint(path, DetectorCheckpoint)


def test_a_crash_while_writing_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_checkpoint(tiny_record(epoch=1, val_auc=0.9), tmp_path / "best.pth")

    def crash(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tiny_record(epoch=2, val_auc=0.95), path)
    monkeypatch.undo()
    assert read_checkpoint(path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth"]  # no temporary file left behind


def test_partial_writes_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    kept = write_checkpoint(tiny_record(), tmp_path / "epoch_000_auc_0.7500.pth")
    (tmp_path / ".epoch_001_auc_0.8000.pth.k3j2.tmp").write_bytes(b"half")
    assert [p.name for p in remove_partial_writes(tmp_path)] == [".epoch_001_auc_0.8000.pth.k3j2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_pickle_payload_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        read_checkpoint(raw)
    assert not (tmp_path / "PWNED").exists()


def test_missing_truncated_and_foreign_files_are_sentences(tmp_path):
    with pytest.raises(CheckpointError, match="reproduce_baseline.py"):
        read_checkpoint(tmp_path / "nope.pth")
    path = write_checkpoint(tiny_record(), tmp_path / "cut.pth")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="could not be read"):
        read_checkpoint(path)
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="lacks detector"):
        read_checkpoint(tmp_path / "foreign.pth")
    torch.save({"kind": "mystery"}, tmp_path / "mystery.pth")
    with pytest.raises(CheckpointError, match="'mystery' file"):
        read_checkpoint(tmp_path / "mystery.pth")


def test_filename_format():
    assert checkpoint_filename(3, 0.99321) == "epoch_003_auc_0.9932.pth"
    assert checkpoint_filename(0, float("nan")) == "epoch_000_auc_nan.pth"


def test_link_checkpoint_makes_best_the_same_file_without_rewriting(tmp_path):
    epoch_file = write_checkpoint(tiny_record(epoch=3, val_auc=0.8), tmp_path / "epoch_003_auc_0.8000.pth")
    write_checkpoint(tiny_record(epoch=1, val_auc=0.6), tmp_path / "best.pth")
    best = link_checkpoint(epoch_file, tmp_path / "best.pth")
    assert best.stat().st_ino == epoch_file.stat().st_ino
    assert read_checkpoint(best).epoch == 3
    epoch_file.unlink()  # a stale epoch file removed later leaves best.pth whole
    assert read_checkpoint(best).epoch == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth"]
