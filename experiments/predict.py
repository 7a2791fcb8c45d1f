"""Score images, folders and videos on this machine, without Ray or a server: per face, per image, per video.

    python experiments/predict.py photo.jpg                       # artifacts/best.pth, faces as it was trained
    python experiments/predict.py photos/ clip.mp4 --json verdicts.json --csv verdicts.csv
    python experiments/predict.py photo.jpg --faces all --explain heatmaps/
    python experiments/predict.py clip.mp4 --num-frames 8 --checkpoint artifacts/ensemble.pth

Each face gets its box and fake probability; an image's verdict is its most suspicious face; a video's is
the mean of its sampled frames' verdicts (32 frames, evenly spaced, unless the checkpoint records another
sampling), each frame with its index and time. A model that judges faces says `not_applicable`, with the
reason and no label, for a picture without a face, with faces all smaller than its input size divided by
--small-face-factor (4), or a video without a frame to judge. A C2PA manifest in the file (content
credentials) is reported beside the verdict (`credentials`), never blended into it.
Labels use the checkpoint's thresholds, chosen on validation (for videos, on validation videos when
training had them). --faces defaults to the face preset the checkpoint was trained with (whole images for a
model trained on whole images). Every default is the checkpoint's scoring choice (media.scoring_choices),
the same as score.py's, evaluate.py's and the server's, so a file gets the same verdict through each. --explain DIR
writes a Grad-CAM heatmap per face as PNG. The exit status is 1 when a file could not be read.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

from deepfake_platform.credentials import describe_credentials, read_credentials_path
from deepfake_platform.data.images import is_image_name
from deepfake_platform.data.video import DEFAULT_NUM_FRAMES, is_video_name
from deepfake_platform.ensemble import load_predictor
from deepfake_platform.errors import MissingInput
from deepfake_platform.files import write_atomic, write_text_atomic
from deepfake_platform.media import NOT_APPLICABLE, MediaScorer, explain_picture, file_choices
from deepfake_platform.orchestration.cli import run_command
from deepfake_platform.reporting import write_json


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    files = expand(args.paths)
    # Unset flags keep the checkpoint's choices, the ones score.py, evaluation and the server use too.
    choices = file_choices(args.checkpoint, faces=args.faces, num_frames=args.num_frames, every=args.every,
                           small_face_factor=args.small_face_factor, precision=args.precision,
                           operating_point=args.operating_point)
    scorer = MediaScorer(load_predictor(args.checkpoint, choices.precision), choices)
    print(f"{scorer.predictor.info.name} ({args.checkpoint}), faces {scorer.preset.mode}"
          + (f" ({scorer.preset.detector}, margin {scorer.preset.margin:g})" if scorer.preset.mode != "off" else "")
          + f", threshold {scorer.threshold:.4f}; {len(files)} file(s).", file=sys.stderr, flush=True)
    results = []
    for path in progress(files):
        credentials = read_credentials_path(path)
        try:
            verdict = scorer.score_path(path)
            result = {"path": str(path), **verdict.to_dict(), "credentials": credentials, "error": None}
            add_logits(result, scorer.predictor.calibration)
            if args.explain and verdict.kind == "image" and verdict.verdict != NOT_APPLICABLE:
                result["explanations"] = write_explanations(scorer, path, Path(args.explain))
        except ValueError as err:  # unreadable media, bad frames: named, the others still scored
            result = {"path": str(path), "kind": "video" if is_video_name(path) else "image",
                      "credentials": credentials, "error": str(err)}
        results.append(result)
        print(describe(result))
        if credentials["present"]:
            print(f"  {describe_credentials(credentials)}")
    if args.json:
        write_json(args.json, results)
    if args.csv:
        write_csv(args.csv, results)
    if any(result["error"] for result in results):
        sys.exit(1)
    return results


def expand(paths: list[str]) -> list[Path]:
    """The files to score: each given file, and every image and video under each given folder."""
    files = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and (is_image_name(p) or is_video_name(p)))
        elif path.is_file():
            files.append(path)
        else:
            raise MissingInput(f"{path} does not exist; pass image or video files, or folders of them.")
    if not files:
        raise MissingInput(f"no image or video under {', '.join(paths)}.")
    return files


def progress(files: list[Path]):
    from tqdm import tqdm

    return tqdm(files, unit="file", file=sys.stderr, disable=len(files) < 5)


def describe(result: dict[str, Any]) -> str:
    """One line per file."""
    if result["error"]:
        return f"{result['path']}: error: {result['error']}"
    if result["verdict"] == NOT_APPLICABLE:
        return f"{result['path']}: not applicable: {result['reason']}"
    head = f"{result['path']}: {result['label']} {result['fake_probability']:.4f} (threshold {result['threshold']:.4f})"
    if result["kind"] == "video":
        judged = [frame for frame in result["frames"] if frame["verdict"] != NOT_APPLICABLE]
        return head + f", mean of {len(judged)} of {len(result['frames'])} frames" + (
            f" ({len(result['frames']) - len(judged)} without a face to judge)" if len(judged) < len(result["frames"])
            else "")
    if not result["faces"]:  # faces off: the model judges whole images
        return head + ", whole image"
    faces = "; ".join(f"{face['box']} {face['fake_probability']:.4f}" for face in result["faces"])
    return head + f", {len(result['faces'])} face(s): {faces}"


def add_logits(result: dict[str, Any], calibration: Any) -> None:
    """The detector's raw logit beside each calibrated probability (file and faces): `logit`, None where the
    calibration (isotonic) cannot give it back."""
    result["logit"] = calibration.raw_logit(result.get("fake_probability"))
    for face in result.get("faces") or []:
        face["logit"] = calibration.raw_logit(face.get("fake_probability"))


def write_explanations(scorer: MediaScorer, path: Path, folder: Path) -> list[str]:
    """One Grad-CAM PNG per face of the image at `path`; their paths."""
    from deepfake_platform.data import load_image

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, explanation in enumerate(explain_picture(scorer, load_image(path))):
        target = folder / f"{path.stem}_face{index}.png"
        write_atomic(target, lambda handle, image=explanation.image: image.save(handle, format="PNG"))
        written.append(str(target))
    return written


CSV_COLUMNS = ("path", "kind", "verdict", "reason", "fake_probability", "label", "threshold", "no_face", "frame",
               "time_s", "face", "x", "y", "width", "height", "face_fake_probability", "error")


def write_csv(path: str, results: list[dict[str, Any]]) -> None:
    """One row per face (per frame for videos), or per file when it has none."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for result in results:
        base = {key: result.get(key) for key in ("path", "kind", "verdict", "reason", "fake_probability", "label",
                                                 "threshold", "no_face", "error")}
        pictures = result.get("frames") or ([{"frame": None, "time_s": None, "faces": result.get("faces", [])}]
                                            if not result["error"] else [])
        rows = [{**base, "frame": picture["frame"], "time_s": picture["time_s"], "face": index,
                 **dict(zip(("x", "y", "width", "height"), face["box"], strict=True)),
                 "face_fake_probability": face["fake_probability"]}
                for picture in pictures for index, face in enumerate(picture["faces"])]
        writer.writerows(rows or [base])
    write_text_atomic(path, text.getvalue())


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="image or video files, or folders of them")
    parser.add_argument("--checkpoint", default="artifacts/best.pth", help="a checkpoint or an ensemble spec")
    parser.add_argument("--faces", choices=["off", "largest", "all"],
                        help="faces to score (default: as the checkpoint was trained)")
    parser.add_argument("--small-face-factor", type=float,
                        help="faces whose short side is under the model's input size divided by this are too small to "
                             "judge (default 4)")
    parser.add_argument("--num-frames", type=int,
                        help=f"frames per video, evenly spaced (default: as the checkpoint records, else {DEFAULT_NUM_FRAMES})")
    parser.add_argument("--every", type=int, help="instead: every k-th frame")
    parser.add_argument("--operating-point", choices=["balanced", "high_precision", "high_recall"],
                        help="the thresholds to label at, chosen on validation (default: balanced)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32", "int8"],
                        help="auto (the default): bf16 where the CPU runs it natively, else fp32; int8: ONNX Runtime, "
                             "quantised")
    parser.add_argument("--json", help="write every verdict as JSON here")
    parser.add_argument("--csv", help="write one row per face as CSV here")
    parser.add_argument("--explain", metavar="DIR", help="write a Grad-CAM heatmap per face (images) as PNG here")
    return parser


if __name__ == "__main__":
    run_command(lambda: main(get_args_parser().parse_args()))
