"""Face detection and cropping on real photographs: scikit-image's astronaut and matplotlib's Grace Hopper."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image
from skimage import data as skimage_data

from deepfake_platform.config import ConfigError
from deepfake_platform.data.faces import (
    FACE_MODES,
    FaceBox,
    FaceDetectorError,
    FacePreset,
    HaarFaceDetector,
    YuNetFaceDetector,
    build_face_detector,
    crop_face,
    detect_faces,
    square_box,
)

# Eileen Collins's face in skimage.data.astronaut() (512x512), as annotated by hand.
ASTRONAUT_FACE = (177, 66, 95, 95)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skimage_data.astronaut())


@pytest.fixture(scope="module")
def grace_hopper() -> Image.Image:
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return Image.open(handle).convert("RGB")


@pytest.fixture(scope="module")
def haar() -> HaarFaceDetector:
    return build_face_detector(FacePreset(mode="all"))


def test_haar_finds_the_astronaut(haar, astronaut):
    boxes = haar.detect(astronaut)
    assert len(boxes) == 1
    assert np.abs(np.array(boxes[0].as_list()) - ASTRONAUT_FACE).max() <= 15
    assert 0.5 < boxes[0].score <= 1.0


def test_haar_finds_grace_hopper(haar, grace_hopper):
    width, height = grace_hopper.size  # 512x600; Haar gives (146, 96, 241, 241)
    boxes = haar.detect(grace_hopper)
    assert len(boxes) == 1
    box = boxes[0]
    centre_x, centre_y = box.x + box.width / 2, box.y + box.height / 2
    assert 0.35 * width < centre_x < 0.65 * width
    assert 0.2 * height < centre_y < 0.5 * height  # the face, not the uniform below it
    assert 0.3 * width < box.width < 0.6 * width


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_face_in_a_blank_or_noise_image(haar, kind):
    if kind == "blank":
        image = Image.new("RGB", (640, 480), (128, 128, 128))
    else:
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    assert detect_faces(image, FacePreset(mode="all"), haar) == []


def test_largest_and_all_on_two_faces(haar, astronaut):
    # The astronaut's head with room around it, pasted at full and at 0.6 scale onto a photo of a coffee
    # cup (on a flat grey canvas, histogram equalisation makes Haar miss a face at some scales).
    head = astronaut.crop((137, 26, 313, 202))
    canvas = Image.fromarray(skimage_data.coffee()).resize((800, 480))
    canvas.paste(head, (40, 150))
    canvas.paste(head.resize((106, 106), Image.Resampling.LANCZOS), (560, 60))

    crops = detect_faces(canvas, FacePreset(mode="all", crop_size=64), haar)
    assert len(crops) == 2
    big, small = (crop.box for crop in crops)
    assert big.area > small.area
    assert 40 < big.x + big.width / 2 < 40 + 176 and 150 < big.y + big.height / 2 < 150 + 176
    assert 560 < small.x + small.width / 2 < 560 + 106 and 60 < small.y + small.height / 2 < 60 + 106
    assert all(crop.image.size == (64, 64) and crop.image.mode == "RGB" for crop in crops)

    largest = detect_faces(canvas, FacePreset(mode="largest", crop_size=64), haar)
    assert [crop.box for crop in largest] == [big]
    assert detect_faces(canvas, FacePreset(mode="off"), haar) == []


def test_the_default_detector_is_built_once():
    preset = FacePreset(mode="largest")
    assert build_face_detector(preset) is build_face_detector(FacePreset(mode="all", margin=1.5))
    assert build_face_detector(preset).name == "haar"


def test_face_box_helpers():
    box = FaceBox(10, 20, 30, 40, 0.75)
    assert box.area == 1200
    assert box.as_list() == [10, 20, 30, 40]
    assert json.loads(json.dumps(box.to_dict())) == {"x": 10, "y": 20, "width": 30, "height": 40,
                                                      "score": 0.75}


def test_square_box_is_centred_and_square():
    left, top, right, bottom = square_box(FaceBox(50, 60, 100, 80, 1.0), 1.3, 640, 480)
    assert (left, top, right, bottom) == (35, 35, 165, 165)  # side 130 = 1.3 * 100, centre (100, 100)


@pytest.mark.parametrize("box", [FaceBox(0, 0, 50, 50, 1.0), FaceBox(600, 440, 40, 40, 1.0),
                                 FaceBox(3, 200, 61, 99, 1.0)])
def test_square_box_may_reach_past_the_border(box):
    left, top, right, bottom = square_box(box, 1.3, 640, 480)
    assert right - left == bottom - top == round(1.3 * max(box.width, box.height))
    assert abs((left + right) / 2 - (box.x + box.width / 2)) <= 0.5
    assert abs((top + bottom) / 2 - (box.y + box.height / 2)) <= 0.5
    assert left < 0 or top < 0 or right > 640 or bottom > 480


def test_square_box_rejects_a_box_from_another_image_and_a_small_margin():
    with pytest.raises(ValueError, match="does not lie inside a 640x480 image"):
        square_box(FaceBox(700, 10, 50, 50, 1.0), 1.3, 640, 480)
    with pytest.raises(ValueError, match="margin is 0.9; it must be at least 1"):
        square_box(FaceBox(10, 10, 50, 50, 1.0), 0.9, 640, 480)


@pytest.mark.parametrize("crop_size", [16, 64, 256])
def test_crop_face_sizes(astronaut, crop_size):
    crop = crop_face(astronaut, FaceBox(*ASTRONAUT_FACE, 1.0), margin=1.3, crop_size=crop_size)
    assert crop.size == (crop_size, crop_size) and crop.mode == "RGB"


def test_crop_face_with_margin_one_is_the_box_itself(astronaut):
    crop = crop_face(astronaut, FaceBox(*ASTRONAUT_FACE, 1.0), margin=1.0, crop_size=95)
    x, y, w, h = ASTRONAUT_FACE
    expected = np.asarray(astronaut)[y:y + h, x:x + w]
    assert np.abs(np.asarray(crop, dtype=float) - expected).mean() < 2


def test_crop_face_pads_outside_the_image_with_the_edge_not_black():
    pixels = np.zeros((100, 100, 3), dtype=np.uint8)
    pixels[:, :] = (0, 0, 255)
    pixels[:, 0] = (255, 0, 0)  # a red first column
    crop = np.asarray(crop_face(Image.fromarray(pixels), FaceBox(0, 40, 20, 20, 1.0), margin=2.0, crop_size=40))
    # The square runs from x = -10 to 30: its first quarter lies left of the image and repeats the red column.
    assert (crop[:, :8] == (255, 0, 0)).all()
    assert crop[:, 30:, 2].min() > 200


def test_crop_face_accepts_a_grey_image(astronaut):
    crop = crop_face(astronaut.convert("L"), FaceBox(*ASTRONAUT_FACE, 1.0), margin=1.3, crop_size=32)
    assert crop.mode == "RGB" and crop.size == (32, 32)


@pytest.mark.parametrize("values, message", [
    ({"mode": "faces"}, "faces.mode: input should be 'off', 'largest' or 'all', got 'faces'"),
    ({"detector": "dlib"}, "faces.detector: input should be 'haar' or 'yunet', got 'dlib'"),
    ({"margin": 0.8}, "faces.margin: input should be greater than or equal to 1, got 0.8"),
    ({"crop_size": 8}, "faces.crop_size: input should be greater than or equal to 16, got 8"),
    ({"crop_size": 64.0}, "faces.crop_size: input should be a valid integer, got 64.0"),
    ({"mode": "largest", "detector": "yunet"}, "faces: model_path is empty; set it to a local copy of "
                                               "face_detection_yunet_2023mar.onnx"),
])
def test_face_preset_validation_sentences(values, message):
    with pytest.raises(ConfigError) as error:
        FacePreset.from_dict(values)
    assert message in str(error.value)


def test_face_preset_from_dict():
    assert FacePreset.from_dict(None) == FacePreset() == FacePreset.from_dict({})
    preset = FacePreset.from_dict({"mode": "largest", "margin": 1.5})
    assert (preset.mode, preset.margin, preset.crop_size) == ("largest", 1.5, 256)
    assert FacePreset.from_dict(preset.to_dict()) == preset
    assert FacePreset.from_dict({"mode": "off", "detector": "yunet"}).detector == "yunet"
    with pytest.raises(ConfigError, match="unknown key faces.size; known keys here: crop_size, detector, margin, mode,"):
        FacePreset.from_dict({"size": 224})
    assert set(FACE_MODES) == {"off", "largest", "all"}


def test_yunet_missing_model_says_where_to_get_it(tmp_path):
    missing = tmp_path / "yunet.onnx"
    with pytest.raises(FaceDetectorError) as error:
        YuNetFaceDetector(str(missing))
    message = str(error.value)
    assert str(missing) in message
    assert "face_detection_yunet_2023mar.onnx from OpenCV Zoo" in message
    assert "set faces.model_path" in message
    with pytest.raises(FaceDetectorError, match="does not exist"):
        build_face_detector(FacePreset(mode="largest", detector="yunet", model_path=str(missing)))


def test_yunet_unreadable_model_is_a_sentence(tmp_path):
    garbage = tmp_path / "face_detection_yunet_2023mar.onnx"
    garbage.write_bytes(b"not an onnx graph" * 10)
    with pytest.raises(FaceDetectorError, match="could not read the YuNet face model .*faces.model_path"):
        YuNetFaceDetector(str(garbage))


def test_haar_cost_is_bounded_on_large_and_elongated_images(haar, astronaut):
    large = astronaut.resize((4000, 3000))
    start = time.perf_counter()
    boxes = haar.detect(large)
    assert time.perf_counter() - start < 2.0
    assert len(boxes) == 1 and boxes[0].width > 500  # the stretched face, found at full-image scale

    for size in [(20000, 40), (40, 20000)]:
        start = time.perf_counter()
        assert haar.detect(Image.new("RGB", size, (90, 90, 90))) == []
        assert time.perf_counter() - start < 0.5
