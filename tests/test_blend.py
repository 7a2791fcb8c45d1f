"""On-the-fly self-blended pseudo-fakes: masks confined to the face box, determinism, the balanced data set."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch.utils.data import DataLoader

from deepfake_platform.data.blend import (
    OnTheFlySelfBlend,
    SelfBlendDataset,
    default_face_box,
    self_blend_face,
)
from deepfake_platform.data.images import load_image
from deepfake_platform.data.transforms import EvalPreset

SIZE = 64


def face_crop(name: str = "astronaut", size: int = 96) -> Image.Image:
    """A square crop of one of scikit-image's bundled photographs (the astronaut's is her face)."""
    photo = Image.fromarray(getattr(data, name)()).convert("RGB")
    side = min(photo.size)
    return photo.crop((0, 0, side, side)).resize((size, size), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> list[Path]:
    """Four real face crops written as PNG files."""
    root = tmp_path_factory.mktemp("reals")
    paths = []
    for index, name in enumerate(["astronaut", "chelsea", "coffee", "rocket"]):
        path = root / f"real_{index}.png"
        face_crop(name, size=80).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("seed", range(12))
def test_the_blend_stays_inside_the_box(seed):
    image = face_crop()
    box = (20, 30, 70, 80)
    blended, mask = self_blend_face(image, np.random.default_rng(seed), box)
    left, top, right, bottom = box
    inside = np.zeros(mask.shape, dtype=bool)
    inside[top:bottom, left:right] = True

    assert mask.shape == (96, 96) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert np.all(mask[~inside] == 0.0)
    assert mask[inside].max() > 0.0
    # The fade leaves the box's own border at zero: no hard edge where the box ends.
    assert np.all(mask[top, left:right] == 0.0) and np.all(mask[top:bottom, left] == 0.0)

    before, after = np.asarray(image, dtype=np.int16), np.asarray(blended, dtype=np.int16)
    assert blended.mode == "RGB" and blended.size == image.size
    assert np.array_equal(after[~inside], before[~inside])
    assert np.abs(after[inside] - before[inside]).max() > 0


def test_the_default_box_is_the_central_face_region():
    image = face_crop(size=100)
    assert default_face_box(100, 100) == (15, 15, 85, 85)
    for seed in range(5):
        _, mask = self_blend_face(image, np.random.default_rng(seed))
        rows, cols = np.nonzero(mask)
        assert rows.min() >= 15 and rows.max() < 85 and cols.min() >= 15 and cols.max() < 85


@pytest.mark.parametrize("box", [(0, 0, 200, 50), (40, 10, 30, 50), (10, 10, 14, 60)])
def test_a_box_outside_the_image_or_too_small_is_refused(box):
    with pytest.raises(ValueError, match="box"):
        self_blend_face(face_crop(), np.random.default_rng(0), box)


def test_pseudo_fakes_are_fixed_by_seed_epoch_and_index():
    image = face_crop()
    blend = OnTheFlySelfBlend(seed=7)

    def pixels(maker: OnTheFlySelfBlend, index: int, epoch: int) -> np.ndarray:
        return np.asarray(maker(image, index=index, epoch=epoch))

    reference = pixels(blend, 3, 1)
    assert np.array_equal(reference, pixels(blend, 3, 1))
    # A copy in a DataLoader worker draws the same pseudo-fake.
    assert np.array_equal(reference, pixels(pickle.loads(pickle.dumps(blend)), 3, 1))
    assert not np.array_equal(reference, pixels(blend, 3, 2))
    assert not np.array_equal(reference, pixels(blend, 4, 1))
    assert not np.array_equal(reference, pixels(OnTheFlySelfBlend(seed=8), 3, 1))
    assert not np.array_equal(reference, np.asarray(image))


def test_the_data_set_pairs_each_real_with_its_pseudo_fake(real_files):
    transform = EvalPreset(image_size=SIZE)
    dataset = SelfBlendDataset([(str(path), 0) for path in real_files], transform, seed=1)

    assert len(dataset) == 2 * len(real_files)
    labels = [dataset[index][1] for index in range(len(dataset))]
    assert labels == [0.0] * len(real_files) + [1.0] * len(real_files)
    for index, path in enumerate(real_files):
        real, _ = dataset[index]
        fake, _ = dataset[len(real_files) + index]
        assert torch.equal(real, transform(load_image(path)))
        assert fake.shape == real.shape == (3, SIZE, SIZE)
        assert not torch.equal(fake, real)
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_set_epoch_draws_new_pseudo_fakes(real_files):
    dataset = SelfBlendDataset([(str(path), 0) for path in real_files], EvalPreset(image_size=SIZE), seed=1)
    first_fake = len(real_files)
    epoch_0 = dataset[first_fake][0]
    assert torch.equal(epoch_0, dataset[first_fake][0])
    dataset.set_epoch(1)
    assert not torch.equal(epoch_0, dataset[first_fake][0])
    assert torch.equal(dataset[0][0], SelfBlendDataset([(str(real_files[0]), 0)], EvalPreset(image_size=SIZE))[0][0])


def test_given_fakes_pass_through_unblended(real_files):
    transform = EvalPreset(image_size=SIZE)
    reals, fakes = real_files[:3], real_files[3:]
    samples = [(str(reals[0]), 0), (str(fakes[0]), 1), (str(reals[1]), 0), (str(reals[2]), 0)]
    dataset = SelfBlendDataset(samples, transform)

    assert len(dataset) == 2 * 3 + 1
    assert [dataset[index][1] for index in range(len(dataset))] == [0.0] * 3 + [1.0] * 4
    assert torch.equal(dataset[6][0], transform(load_image(fakes[0])))
    assert torch.equal(dataset[1][0], transform(load_image(reals[1])))


def test_bad_samples_are_refused_with_a_sentence(real_files):
    with pytest.raises(ValueError, match="at least one real sample"):
        SelfBlendDataset([(str(real_files[0]), 1)], EvalPreset(image_size=SIZE))
    with pytest.raises(ValueError, match="0 \\(real\\) or 1 \\(fake\\)"):
        SelfBlendDataset([(str(real_files[0]), 2)], EvalPreset(image_size=SIZE))


def test_a_dataloader_yields_balanced_tensor_batches(real_files):
    dataset = SelfBlendDataset([(str(path), 0) for path in real_files], EvalPreset(image_size=SIZE), seed=3)
    loader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    images = torch.cat([batch[0] for batch in batches])
    labels = torch.cat([batch[1] for batch in batches])
    assert images.shape == (2 * len(real_files), 3, SIZE, SIZE) and images.dtype == torch.float32
    assert labels.dtype == torch.float64 and labels.sum().item() == len(real_files)
