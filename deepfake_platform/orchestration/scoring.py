"""Batch scoring with Ray Data: a list of files in, one Parquet row per file out, on every node of the cluster.

Read top to bottom: which files (`list_inputs`: a folder tree, a glob, or a text/Parquet list of paths),
the CPU stage (`Prepare`: decode, crop faces as the model was trained, and for a single detector apply
the eval preset's geometry, so only model-sized uint8 pictures travel), the model stage (`Score`: an
actor pool holding the model, the one predict path), then `run_scoring`, which skips files already in the
output, writes the rows (path, verdict, fake_probability, label, faces, the model's sha256; the reason of a
file the model cannot judge, or the error of a file that could not be read) and returns a summary. Ray lines are marked `# ray:`.
"""

from __future__ import annotations

import glob as globbing
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepfake_platform.checkpoints import DetectorCheckpoint, read_checkpoint
from deepfake_platform.data.images import is_image_name
from deepfake_platform.data.video import is_video_name
from deepfake_platform.errors import InvalidInput, MissingInput
from deepfake_platform.files import write_to_path_atomic
from deepfake_platform.media import ScoringChoices, file_choices

COLUMNS = ("path", "kind", "verdict", "reason", "fake_probability", "label", "threshold", "no_face", "faces", "error",
           "model", "model_sha256")
SCHEMA = pa.schema([
    ("path", pa.string()), ("kind", pa.string()), ("verdict", pa.string()), ("reason", pa.string()),
    ("fake_probability", pa.float64()), ("label", pa.string()),
    ("threshold", pa.float64()), ("no_face", pa.bool_()), ("faces", pa.string()), ("error", pa.string()),
    ("model", pa.string()), ("model_sha256", pa.string()),
])


# ---- the files ---------------------------------------------------------------------------------------


def list_inputs(spec: str) -> list[str]:
    """Absolute paths of the images and videos `spec` names: a folder (searched recursively), a glob, a text
    file of paths (one per line) or a Parquet file with a `path` column."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [p for p in sorted(path.rglob("*")) if p.is_file() and (is_image_name(p) or is_video_name(p))]
    elif path.is_file() and path.suffix.lower() == ".parquet":
        table = pq.read_table(path)
        if "path" not in table.column_names:
            raise InvalidInput(f"{path} has no `path` column; give a Parquet list with one, or a text list.")
        found = [Path(p) for p in table.column("path").to_pylist()]
    elif path.is_file() and not (is_image_name(path) or is_video_name(path)):
        found = [Path(line.strip()) for line in path.read_text().splitlines() if line.strip()]
    elif globbing.has_magic(spec):
        found = [Path(p) for p in sorted(globbing.glob(str(path), recursive=True)) if Path(p).is_file()]
    elif path.is_file():
        found = [path]
    else:
        raise MissingInput(f"--input {spec} is neither a folder, a glob, a list of paths nor a file.")
    if not found:
        raise MissingInput(f"--input {spec} names no image or video.")
    return [str(p.expanduser().resolve()) for p in found]


# ---- the stages ----------------------------------------------------------------------------------------


def model_input_size(checkpoint: str) -> int | None:
    """The picture size a single detector takes, so the CPU stage can apply the eval geometry; None for a
    frequency detector or an ensemble, which take decoded pictures as they are."""
    record = read_checkpoint(checkpoint)
    return record.image_size if isinstance(record, DetectorCheckpoint) else None


def prepare(batch: dict[str, np.ndarray], *, choices: ScoringChoices, image_size: int | None) -> dict[str, np.ndarray]:
    """CPU stage (a Ray Data task): decode each file, crop its faces; for a single detector also the eval
    preset's geometry, so model-sized uint8 pictures travel to the model stage."""
    from deepfake_platform.data.images import load_image
    from deepfake_platform.data.transforms import build_transform
    from deepfake_platform.data.video import SampledVideo, sample_video
    from deepfake_platform.media import MediaScorer

    scorer = MediaScorer(None, choices)
    transform = build_transform("eval", image_size) if image_size else None
    rows: dict[str, list] = {"path": [], "kind": [], "pictures": [], "plan": [], "error": []}
    for path in batch["path"]:
        path = str(path)
        kind = "video" if is_video_name(path) else "image"
        try:
            video = (sample_video(path, num_frames=choices.num_frames, every=choices.every) if kind == "video"
                     else SampledVideo([(None, load_image(path))], 0.0))
            plan = scorer.plan([image for _, image in video.frames], [index for index, _ in video.frames], video.fps)
            pictures = [_pack(np.asarray(transform.geometry(p) if transform else p.convert("RGB")))
                        for p in plan.inputs]
            error = ""
        except (ValueError, OSError) as err:  # unreadable: listed in the output with why
            plan, pictures, error = None, [], str(err)
        rows["path"].append(path)
        rows["kind"].append(kind)
        rows["pictures"].append(pictures)
        rows["plan"].append(_plan_json(plan))
        rows["error"].append(error)
    return {key: _object_array(values) for key, values in rows.items()}


class Score:
    """Model stage: one predictor per actor; every picture of the batch in one forward pass, then verdicts."""

    def __init__(self, checkpoint: str, choices: ScoringChoices, device: str, threads: int):
        import torch

        from deepfake_platform.ensemble import load_predictor
        from deepfake_platform.media import MediaScorer

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.predictor = load_predictor(checkpoint, choices.precision, device)
        self.scorer = MediaScorer(self.predictor, choices)
        self.model, self.sha256 = self.predictor.info.name, self.predictor.info.sha256

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        pictures = [_unpack(picture) for pictures in batch["pictures"] for picture in pictures]
        if hasattr(self.predictor, "predict_prepared"):
            probabilities = self.predictor.predict_prepared(pictures) if pictures else np.zeros(0)
        else:
            probabilities = self.predictor.predict_images([Image.fromarray(p) for p in pictures])
        out: dict[str, list] = {column: [] for column in COLUMNS}
        start = 0
        for path, kind, plan_text, error, count in zip(batch["path"], batch["kind"], batch["plan"], batch["error"],
                                                        (len(p) for p in batch["pictures"]), strict=True):
            verdict = None
            if not error:
                plan = _plan_from_json(plan_text, count)
                pictures_verdicts = self.scorer.assemble(plan, probabilities[start:start + count])
                start += count
                verdict = (self.scorer.video_verdict(pictures_verdicts) if kind == "video"
                           else self.scorer.image_verdict(pictures_verdicts[0]))
            out["path"].append(str(path))
            out["kind"].append(str(kind))
            out["verdict"].append(verdict.verdict if verdict else None)
            out["reason"].append(verdict.reason if verdict else None)
            out["fake_probability"].append(verdict.fake_probability if verdict else None)
            out["label"].append(verdict.label if verdict else None)
            out["threshold"].append(verdict.threshold if verdict else None)
            out["no_face"].append(bool(verdict.no_face) if verdict else None)
            out["faces"].append(json.dumps([f.__dict__ for f in verdict.faces]) if verdict else "[]")
            out["error"].append(str(error) or None)
            out["model"].append(self.model)
            out["model_sha256"].append(self.sha256)
        return {key: _object_array(values) for key, values in out.items()}


def _pack(picture: np.ndarray) -> bytes:
    """A uint8 HWC picture as bytes that Arrow carries as they are (height and width first)."""
    height, width = picture.shape[:2]
    return height.to_bytes(4, "little") + width.to_bytes(4, "little") + picture.astype(np.uint8).tobytes()


def _unpack(packed: bytes) -> np.ndarray:
    height, width = int.from_bytes(packed[:4], "little"), int.from_bytes(packed[4:8], "little")
    return np.frombuffer(packed[8:], dtype=np.uint8).reshape(height, width, 3)


def _plan_json(plan: Any) -> str:
    if plan is None:
        return ""
    return json.dumps({"boxes": [[[b.x, b.y, b.width, b.height, b.score] for b in boxes] for boxes in plan.boxes],
                       "frames": plan.frames, "fps": plan.fps, "too_small": plan.too_small})


def _plan_from_json(text: str, count: int):
    from deepfake_platform.data.faces import FaceBox
    from deepfake_platform.media import Plan

    data = json.loads(text)
    boxes = [[FaceBox(int(x), int(y), int(w), int(h), float(s)) for x, y, w, h, s in group] for group in data["boxes"]]
    return Plan([None] * count, boxes, data["frames"], data["fps"], data["too_small"])


def _object_array(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


# ---- the run -------------------------------------------------------------------------------------------


@dataclass
class ScoringSummary:
    """What a scoring run did."""

    out: Path
    listed: int
    already_scored: int
    scored: int
    unreadable: int
    fake: int
    not_applicable: int
    seconds: float
    actors: int

    def render(self) -> str:
        """The closing lines of score.py."""
        rate = self.scored / max(self.seconds, 1e-9)
        return (f"{self.listed} file(s): {self.scored} scored now ({rate:.1f} files/s with {self.actors} model "
                f"actor(s)), {self.already_scored} scored before, {self.unreadable} unreadable (listed with their "
                f"error), {self.fake} labelled fake, {self.not_applicable} not applicable. Output: {self.out}")


def pool_size(cpus_per_node: list[float], use_gpu: bool, gpus: float) -> tuple[int, float]:
    """Model actors and CPUs per actor, from the cluster: one actor per node (per GPU with --use-gpu), each
    leaving half of its node's CPUs to the decoding tasks, so neither stage waits forever on the other."""
    if use_gpu:
        return max(1, int(gpus)), 1.0
    nodes = [cpus for cpus in cpus_per_node if cpus > 0]
    if not nodes:
        raise InvalidInput("the Ray cluster has no CPUs; start a node with CPUs or join another cluster.")
    per_actor = max(0.5, math.floor(min(nodes) / 2 * 2) / 2)
    return len(nodes), per_actor


def run_scoring(inputs: list[str], out: str | Path, checkpoint: str | Path, *, batch_size: int = 16,
                use_gpu: bool = False, precision: str | None = None, faces: str | None = None,
                num_frames: int | None = None, every: int | None = None, small_face_factor: float | None = None,
                operating_point: str | None = None, verbose: bool = False) -> ScoringSummary:
    """Score every file of `inputs` not yet in `out` (a Parquet file) and write them all there, with the
    model's scoring choices (`media.scoring_choices`, at `operating_point`'s thresholds, default balanced);
    precision, faces, num_frames, every and small_face_factor override single ones when not None."""
    import logging

    import ray  # ray:
    from ray.data import DataContext  # ray:

    if not verbose:  # Ray Data's INFO lines (plans, per-operator progress in logs) go to its log files
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    started = time.perf_counter()
    out = Path(out).expanduser().resolve()
    checkpoint = str(Path(checkpoint).expanduser().resolve())
    # Read once in the driver: a missing or unsafe model is a sentence before anything starts.
    choices = file_choices(checkpoint, precision=precision, faces=faces, num_frames=num_frames, every=every,
                           small_face_factor=small_face_factor, operating_point=operating_point)
    previous = pq.read_table(out).to_pylist() if out.is_file() else []
    done = {row["path"] for row in previous}
    todo = [path for path in inputs if path not in done]
    nodes = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]]  # ray:
    actors, cpus = pool_size(nodes, use_gpu, ray.cluster_resources().get("GPU", 0.0))  # ray:
    rows: list[dict[str, Any]] = []
    if todo:
        context = DataContext.get_current()  # ray:
        context.print_on_execution_start = False
        dataset = ray.data.from_items([{"path": path} for path in todo], override_num_blocks=max(1, len(todo) // batch_size))  # ray:
        prepared = dataset.map_batches(  # ray: decoding and cropping in CPU tasks
            prepare, fn_kwargs={"choices": choices, "image_size": model_input_size(checkpoint)},
            batch_size=batch_size, num_cpus=0.5, batch_format="numpy")
        with warnings.catch_warnings():
            # SPREAD has no named parameter yet; ray_remote_args_fn goes in Ray 2.64 (pinned below 2.61 here).
            warnings.simplefilter("ignore", DeprecationWarning)
            # Model threads: every core of the smallest node. The actor reserves half of them so decoding
            # tasks always get CPUs, but those tasks take a small share of the time; one torch thread per
            # reserved CPU would leave the model at half the predict path's speed on a 2-core node.
            threads = max(1, int(min(cpus_per_node for cpus_per_node in nodes if cpus_per_node > 0)))
            scored = _model_stage(prepared, checkpoint, choices, use_gpu, cpus, actors, batch_size, threads)
        rows = [{column: _plain(row[column]) for column in COLUMNS} for row in scored.iter_rows()]
    table = pa.Table.from_pylist(previous + rows, schema=SCHEMA)
    write_to_path_atomic(out, lambda tmp: pq.write_table(table, tmp))
    return ScoringSummary(out=out, listed=len(inputs), already_scored=len(inputs) - len(todo), scored=len(rows),
                          unreadable=sum(1 for row in rows if row["error"]),
                          fake=sum(1 for row in rows if row["label"] == "fake"),
                          not_applicable=sum(1 for row in rows if row["verdict"] == "not_applicable"),
                          seconds=time.perf_counter() - started, actors=actors)


def _model_stage(prepared: Any, checkpoint: str, choices: ScoringChoices, use_gpu: bool, cpus: float, actors: int,
                 batch_size: int, threads: int) -> Any:
    from ray.data import ActorPoolStrategy  # ray:

    return prepared.map_batches(  # ray: the model in an actor pool, one actor per node (or GPU)
        Score, fn_constructor_kwargs={"checkpoint": checkpoint, "choices": choices,
                                      "device": "cuda" if use_gpu else "cpu", "threads": threads},
        batch_size=batch_size, num_cpus=cpus, num_gpus=1 if use_gpu else 0,
        compute=ActorPoolStrategy(size=actors), batch_format="numpy", ray_remote_args_fn=_spread,
        # Ray starts an actor with OMP_NUM_THREADS set to its CPU reservation; raising torch's threads later
        # (Score.__init__) is not enough: the model ran 10-15 % slower than the same threads in a process
        # started with the variable set to match (measured on 2 cores).
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}})


def _spread() -> dict[str, str]:
    # One model actor per node: SPREAD places the pool's actors on different nodes first.
    return {"scheduling_strategy": "SPREAD"}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value

