"""Batch scoring: score.py's Ray Data pipeline against the single-process predict path on the same files."""

from __future__ import annotations

import gc
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.settings import Settings
from deepfake_platform.files import copy_atomic


def measure_scoring(checkpoint: Path, data_root: Path, s: Settings, workdir: Path,
                    batch_size: int = 16) -> dict[str, dict[str, Any]]:
    """score.py's Ray Data pipeline on image files against the single-process predict path on the same files
    at the same batch size (decode, preprocess, predict). Two scoring runs, a small and a large one, give
    the pipeline's steady rate (the extra files over the extra time: what an archive of thousands of
    files sees) and its start-up cost (Ray Data's start, the model actor's load, fill and drain)."""
    from deepfake_platform.data import load_image, load_split
    from deepfake_platform.orchestration.scoring import run_scoring
    from deepfake_platform.predict import Predictor

    sources = [Path(path) for path, _ in load_split(data_root, "train")]

    def archive(name: str, count: int) -> list[Path]:  # distinct files: scoring skips paths it has seen
        folder = workdir / name
        folder.mkdir()
        files = [folder / f"{i:05d}{sources[i % len(sources)].suffix}" for i in range(count)]
        for i, path in enumerate(files):
            copy_atomic(sources[i % len(sources)], path)
        return files

    small, large = archive("archive-small", s.score_images // 5), archive("archive-large", s.score_images)
    predictor = Predictor(checkpoint)
    predictor.predict_images([load_image(str(large[0]))])  # warm-up
    start = time.perf_counter()
    for first in range(0, len(large), batch_size):
        predictor.predict_images([load_image(str(path)) for path in large[first:first + batch_size]])
    bare = len(large) / (time.perf_counter() - start)
    del predictor
    gc.collect()
    walls = []
    for files in (small, large):
        start = time.perf_counter()
        summary = run_scoring([str(path) for path in files], workdir / f"{files[0].parent.name}.parquet", checkpoint,
                              batch_size=batch_size, faces="off")
        walls.append(time.perf_counter() - start)
        if summary.scored != len(files) or summary.unreadable:
            raise RuntimeError(f"batch scoring scored {summary.scored} of {len(files)} files "
                               f"({summary.unreadable} unreadable)")
    end_to_end = len(large) / walls[1]
    if walls[1] - walls[0] >= 0.1 * walls[1]:
        steady = steady_rate(walls, small, large)
        start_s = walls[0] - len(small) / steady
    else:  # a model so fast that start-up is all there is (the tiny test model): the end-to-end rate, a lower bound
        steady, start_s = end_to_end, math.nan
    return {"score_bare": {"images_per_s": bare},
            "score_ray_data": {"images_per_s": steady, "images": float(len(large)),
                               "end_to_end_images_per_s": end_to_end, "start_s": start_s}}


def steady_rate(walls: list[float], small: list[Path], large: list[Path]) -> float:
    """Images/s of the files the large run scored beyond the small one, over its extra time."""
    return (len(large) - len(small)) / (walls[1] - walls[0])
