"""Exported models and the INT8 predict path: files that run without this project, with their preprocessing,
answering as the checkpoint does."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from deepfake_platform.predict import Predictor
from tests.factories import photo, tiny_checkpoint
from tests.proctools import user_env

REPO = Path(__file__).resolve().parents[1]

# A program that knows nothing of this project: it reads the sidecar JSON, preprocesses with PIL and numpy
# as the JSON says, runs the exported file, and prints the probabilities of the images named on its
# command line (one batch, so the batch size is whatever the caller passes).
STANDALONE = textwrap.dedent('''
    import json, sys
    import numpy as np
    from PIL import Image

    model, meta = sys.argv[1], json.load(open(sys.argv[2]))

    def prepare(path):
        image = Image.open(path).convert("RGB")
        w, h, short = image.size[0], image.size[1], meta["resize_short_side"]
        size = (int(short * w / h), short) if w > h else (short, int(short * h / w))
        image = image.resize(size, Image.BILINEAR)
        w, h, c = image.size[0], image.size[1], meta["center_crop"]
        left, top = int(round((w - c) / 2.0)), int(round((h - c) / 2.0))
        image = image.crop((left, top, left + c, top + c))
        array = np.asarray(image, dtype=np.float32) * meta["scale"]
        array = (array - np.array(meta["mean"], np.float32)) / np.array(meta["std"], np.float32)
        return array.transpose(2, 0, 1)

    batch = np.stack([prepare(path) for path in sys.argv[3:]]).astype(np.float32)
    if model.endswith(".onnx"):
        import onnxruntime as ort
        probability = ort.InferenceSession(model).run(["fake_probability"], {meta["input"]["name"]: batch})[0]
    else:
        import torch
        probability = torch.jit.load(model)(torch.from_numpy(batch))[0].detach().numpy()
    labels = ["fake" if p >= meta["threshold"] else "real" for p in probability]
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("deepfake_platform", "models", "serve"))
    print(json.dumps({"probability": probability.reshape(-1).tolist(), "labels": labels, "project_modules": loaded}))
''')


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Path]:
    """Real image files of several shapes, JPEG and PNG, one of them a real face photograph."""
    from skimage import data

    root = tmp_path_factory.mktemp("pictures")
    paths = [root / "astronaut.jpg"]
    Image.fromarray(data.astronaut()).resize((300, 260)).save(paths[0], quality=92)
    for i, size in enumerate((96, 150, 64)):
        paths.append(root / f"photo{i}.png")
        photo(i, size).save(paths[-1])
    return paths


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_an_exported_model_runs_without_the_project_and_answers_as_the_checkpoint(tmp_path, pictures, fmt, suffix):
    checkpoint = tiny_checkpoint(tmp_path / "best.pth", 0.5)
    out = tmp_path / "export" / f"detector{suffix}"
    made = subprocess.run([sys.executable, str(REPO / "experiments" / "export.py"), "--checkpoint", str(checkpoint),
                           "--format", fmt, "--out", str(out)], env=user_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    sidecar = out.with_suffix(".json")
    assert out.is_file() and sidecar.is_file() and str(out) in made.stdout
    meta = json.loads(sidecar.read_text())
    assert meta["threshold"] == 0.5 and meta["center_crop"] == 64 and len(meta["mean"]) == 3
    assert meta["input"]["shape"][0] == "batch"

    expected = Predictor(checkpoint, precision="fp32")
    expected_p = expected.predict_images([Image.open(path).convert("RGB") for path in pictures])
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    for batch in (pictures, pictures[:1]):  # the batch dimension is dynamic: four images, then one
        ran = subprocess.run([sys.executable, "-I", str(script), str(out), str(sidecar), *map(str, batch)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
        answer = json.loads(ran.stdout)
        assert answer["project_modules"] == []
        assert np.max(np.abs(np.array(answer["probability"]) - expected_p[:len(batch)])) <= 1e-3
        assert answer["labels"] == ["fake" if p >= 0.5 else "real" for p in expected_p[:len(batch)]]


def test_export_of_a_missing_checkpoint_is_a_sentence(tmp_path):
    ran = subprocess.run([sys.executable, str(REPO / "experiments" / "export.py"), "--checkpoint",
                          str(tmp_path / "none.pth"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                         env=user_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode != 0
    assert "no checkpoint at" in ran.stderr and "Traceback" not in ran.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_int8_answers_as_the_fp32_model_and_is_cached_by_checkpoint(tmp_path, pictures, monkeypatch, capsys):
    monkeypatch.setenv("DEEPFAKE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPFAKE_HOME", str(tmp_path))  # no embedded set built here: nothing to calibrate on
    checkpoint = tiny_checkpoint(tmp_path / "best.pth", 0.5, seed=3)
    images = [Image.open(path).convert("RGB") for path in pictures]
    fp32 = Predictor(checkpoint, precision="fp32").predict_images(images)
    int8 = Predictor(checkpoint, precision="int8")
    assert int8.int8.method == "dynamic"
    note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("int8:")]
    assert len(note) == 1 and "no validation images" in note[0] and "dynamically" in note[0]
    cached = sorted((tmp_path / "cache" / "int8").glob("*.onnx"))
    assert len(cached) == 1 and cached[0].name.startswith(int8.info.sha256) and "dynamic" in cached[0].name
    probabilities = int8.predict_images(images)
    assert probabilities.shape == fp32.shape
    assert float(np.mean(np.abs(probabilities - fp32))) <= 0.01
    assert not np.array_equal(probabilities, fp32)  # it is another model run, not the fp32 one
    mtime = cached[0].stat().st_mtime_ns
    again = Predictor(checkpoint, precision="int8")  # the second load reuses the quantised file
    assert cached[0].stat().st_mtime_ns == mtime
    np.testing.assert_allclose(again.predict_images(images), probabilities, atol=1e-6)


@pytest.mark.timeout(600)
def test_static_int8_keeps_the_labels_of_a_model_that_separates_its_classes(tmp_path, monkeypatch):
    """The tiny hybrid trained where a bright square marks the fakes: its scores sit well away from the threshold,
    so a label int8 changes is a real disagreement. int8 calibrates on the record's validation images (static
    quantisation, convolutions included) and is judged on the held-out test images."""
    from benchmarks.int8 import scores_spread, train_square_detector
    from deepfake_platform.data import load_image, load_split
    from deepfake_platform.export import calibration_images

    monkeypatch.setenv("DEEPFAKE_CACHE", str(tmp_path / "cache"))
    checkpoint, root = train_square_detector(tmp_path, {"train": 96, "val": 32, "test": 64}, epochs=2)
    fp32, int8 = Predictor(checkpoint, precision="fp32"), Predictor(checkpoint, precision="int8")
    assert int8.int8.method == "static"
    calibration = calibration_images(fp32.record)
    assert len(calibration) == 32 and all(Path(path).parent.parent.name == "val" for path in calibration)
    assert {Path(path).parent.name for path in calibration[:16]} == {"real", "fake"}  # both classes in a batch
    graph = onnx.load(str(int8.int8.path)).graph
    dequantised = {name for node in graph.node if node.op_type == "DequantizeLinear" for name in node.output}
    for op in ("Conv", "MatMul"):  # int8 weights for the convolutions too, not only the matrix multiplications
        assert any(node.op_type == op and node.input[1] in dequantised for node in graph.node), op
    images = [load_image(path) for path, _ in load_split(root, "test")]
    p, q = fp32.predict_images(images), int8.predict_images(images)
    threshold = fp32.info.threshold
    assert scores_spread(p, threshold) >= 0.9, np.round(p, 3)  # not a coin toss at the threshold
    assert np.mean((p >= threshold) == (q >= threshold)) >= 0.99
    assert float(np.mean(np.abs(p - q))) <= 0.01
    assert not np.array_equal(p, q)


def test_predict_cli_runs_int8(tmp_path, pictures):
    checkpoint = tiny_checkpoint(tmp_path / "best.pth", 0.5)
    ran = subprocess.run([sys.executable, str(REPO / "experiments" / "predict.py"), str(pictures[1]), "--checkpoint",
                          str(checkpoint), "--precision", "int8", "--faces", "off", "--json", str(tmp_path / "v.json")],
                         env=user_env(DEEPFAKE_CACHE=str(tmp_path / "cache")), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    verdicts = json.loads((tmp_path / "v.json").read_text())
    text = json.dumps(verdicts)
    assert "fake_probability" in text
    fp32 = Predictor(checkpoint, precision="fp32").predict_images([Image.open(pictures[1]).convert("RGB")])[0]
    found = [float(v) for v in _values(verdicts, "fake_probability") if v is not None]
    assert found and abs(found[0] - float(fp32)) <= 0.01


def _values(tree, key):
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key:
                yield v
            yield from _values(v, key)
    elif isinstance(tree, list):
        for item in tree:
            yield from _values(item, key)
