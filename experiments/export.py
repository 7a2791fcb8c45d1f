"""Export a detector for embedded inference: ONNX (ONNX Runtime alone runs it) or TorchScript (plain torch).

    python experiments/export.py --checkpoint artifacts/best.pth --format onnx --out detector.onnx
    python experiments/export.py --checkpoint artifacts/best.pth --format torchscript --out detector.pt

Writes the model in fp32 with a dynamic batch dimension: input `images` (batch, 3, S, S), float32, RGB,
ImageNet-normalised; outputs `fake_probability` and `logit` (batch). Beside it, FILE with `.json` as suffix
holds the preprocessing (resize the short side, centre crop, mean, std), the decision threshold chosen on
validation and the face preset the model was trained with. The export is checked before it is kept: the
exported model's probabilities must match the checkpoint's (fp32) within --tolerance on a few images.

Use it without this project:

    import json, numpy as np, onnxruntime as ort
    meta = json.load(open("detector.json"))
    session = ort.InferenceSession("detector.onnx")
    probability, logit = session.run(None, {"images": batch})   # batch preprocessed as meta says
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepfake_platform.errors import MissingInput
from deepfake_platform.export import FORMATS, export_model, parity
from deepfake_platform.orchestration.cli import run_command
from deepfake_platform.predict import Predictor


def main(args: argparse.Namespace) -> dict:
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise MissingInput(f"no checkpoint at {checkpoint}. Train and promote one with `make run` "
                                "(or pass --checkpoint PATH to a .pth this platform wrote).")
    predictor = Predictor(checkpoint, precision="fp32")
    out = Path(args.out)
    model_path, sidecar = export_model(predictor, args.format, out)
    difference = parity(predictor, model_path, args.format)
    if difference > args.tolerance:
        model_path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        raise RuntimeError(f"the exported model's probabilities differ from the checkpoint's by up to {difference:.2e}, "
                           f"more than --tolerance {args.tolerance:g}; nothing was kept. Report it with the "
                           "checkpoint's detector name.")
    size = model_path.stat().st_size / 1e6
    print(f"Wrote {model_path} ({args.format}, {size:.1f} MB, dynamic batch) and {sidecar} (preprocessing, "
          f"threshold {predictor.info.threshold:.4f}); largest probability difference to the checkpoint: "
          f"{difference:.1e}.")
    return {"model": str(model_path), "preprocessing": str(sidecar), "max_abs_diff": difference}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="artifacts/best.pth", help="a detector checkpoint (.pth)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="the file to write (.onnx or .pt)")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest probability difference to the checkpoint accepted (fp32)")
    return parser


if __name__ == "__main__":
    run_command(lambda: main(get_args_parser().parse_args()))
