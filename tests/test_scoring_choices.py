"""The choices that change a verdict, decided once: read from a model file's record, overridden only by what a
user sets, the same for a detector, a frequency detector and an ensemble. Plain records, no Ray."""

from __future__ import annotations

import dataclasses

import pytest

from deepfake_platform.checkpoints import (
    CheckpointError,
    epoch_checkpoints,
    file_sha256,
    read_checkpoint,
    write_checkpoint,
)
from deepfake_platform.data.video import DEFAULT_NUM_FRAMES
from deepfake_platform.ensemble import (
    Combiner,
    EnsembleSpec,
    MemberSpec,
    load_predictor,
    save_ensemble,
    save_frequency_member,
)
from deepfake_platform.media import MediaScorer, file_choices, predictor_choices
from deepfake_platform.predict import DEFAULT_PRECISION
from models import FrequencyDetector
from tests.factories import photo, tiny_checkpoint, tiny_record

FACES = {"mode": "largest", "detector": "haar", "margin": 1.5, "crop_size": 96}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("choices")
    faces = tiny_checkpoint(root / "faces.pth", 0.4, faces=FACES, video={"val_auc": 0.9, "threshold": 0.6})
    whole = tiny_checkpoint(root / "whole.pth", 0.3)
    images = [photo(i, 48) for i in range(6)]
    frequency = FrequencyDetector().fit(images, [i % 2 for i in range(6)])
    frequency_path = save_frequency_member(frequency, root / "frequency.pth", val_threshold=0.55, val_auc=0.7)
    spec = EnsembleSpec("pair", [MemberSpec("frequency", str(frequency_path), file_sha256(frequency_path)),
                                 MemberSpec("faces", str(faces), file_sha256(faces))],
                        Combiner("mean"), threshold=0.35, val_auc=0.8)
    return {"faces": faces, "whole": whole, "frequency": frequency_path,
            "ensemble": save_ensemble(spec, root / "ensemble.pth")}


def test_a_detector_is_scored_as_its_record_says(files):
    choices = file_choices(files["faces"])
    assert choices.faces.model_dump() == {**choices.faces.model_dump(), **FACES}
    assert (choices.threshold, choices.video_threshold) == (0.4, 0.6)
    assert (choices.num_frames, choices.every, choices.small_face_factor) == (DEFAULT_NUM_FRAMES, 0, 4.0)
    assert choices.input_size == 64 and choices.min_face_px == 16.0  # hybrid_tiny takes 64 px pictures
    assert choices.precision == DEFAULT_PRECISION
    whole = file_choices(files["whole"])
    assert whole.faces.mode == "off" and whole.video_threshold == whole.threshold == 0.3  # no video threshold


def test_a_recorded_video_sampling_is_the_default(tmp_path):
    path = tiny_checkpoint(tmp_path / "sampled.pth", video={"val_auc": 0.9, "threshold": 0.5, "num_frames": 12})
    assert file_choices(path).num_frames == 12


def test_flags_override_single_choices_and_unset_flags_keep_the_record(files):
    choices = file_choices(files["faces"], faces="all", num_frames=None, every=3, precision="fp32")
    # A face mode alone keeps the training's detector, margin and crop size.
    assert (choices.faces.mode, choices.faces.margin, choices.faces.crop_size) == ("all", 1.5, 96)
    assert (choices.num_frames, choices.every, choices.precision) == (DEFAULT_NUM_FRAMES, 3, "fp32")
    assert choices.override(faces={"margin": 1.2}).faces.mode == "all"


def test_an_ensemble_crops_as_its_members_were_trained_and_labels_at_its_own_threshold(files):
    choices = file_choices(files["ensemble"])
    assert choices.faces.mode == "largest" and choices.faces.margin == 1.5
    assert choices.threshold == choices.video_threshold == 0.35
    frequency = file_choices(files["frequency"])
    assert frequency.faces.mode == "off" and frequency.threshold == 0.55


@pytest.mark.parametrize("name", ["faces", "whole", "frequency", "ensemble"])
def test_a_loaded_predictor_and_its_file_give_the_same_choices(files, name):
    predictor = load_predictor(files[name], precision="fp32")
    assert predictor_choices(predictor) == file_choices(files[name])
    assert MediaScorer(predictor).choices == file_choices(files[name])
    assert predictor.info.threshold == read_checkpoint(files[name]).decision_threshold


def test_the_record_gives_its_typed_config_input_size_and_precision(tmp_path):
    record = tiny_record()
    assert record.experiment_config.model.name == "hybrid_tiny"
    assert record.image_size == load_predictor(tiny_checkpoint(tmp_path / "a.pth")).info.image_size
    assert record.trained_precision == record.experiment_config.train.precision  # first-format files
    broken = dataclasses.replace(record, config={"model": {"no_such_key": 1}})
    with pytest.raises(CheckpointError, match="no_such_key"):
        _ = broken.experiment_config


def test_epoch_checkpoints_lists_only_epoch_files_in_order(tmp_path):
    for epoch, auc in [(1, 0.7), (0, 0.6), (2, float("nan"))]:
        write_checkpoint(tiny_record(epoch=epoch), tmp_path / f"epoch_{epoch:03d}_auc_{auc:.4f}.pth")
    write_checkpoint(tiny_record(), tmp_path / "best.pth")
    assert [p.name[:9] for p in epoch_checkpoints(tmp_path)] == ["epoch_000", "epoch_001", "epoch_002"]
    assert [p.name[:9] for p in epoch_checkpoints(tmp_path, epoch=1)] == ["epoch_001"]
