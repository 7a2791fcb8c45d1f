"""Batch scoring: score.py's Ray Data pipeline against the single-process predict path on the same files."""

from __future__ import annotations

import contextlib
import gc
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.process_cpu import CpuWindow
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

    # The small run is one batch or a fifth of the large one: its time is mostly start-up, and the large run's
    # extra files (4/5 of it) are what the steady rate is taken over, in --quick as in the full run.
    small = archive("archive-small", max(batch_size, s.score_images // 5))
    large = archive("archive-large", s.score_images)
    predictor = Predictor(checkpoint)
    predictor.predict_images([load_image(str(large[0]))])  # warm-up
    start = time.perf_counter()
    for first in range(0, len(large), batch_size):
        predictor.predict_images([load_image(str(path)) for path in large[first:first + batch_size]])
    bare = len(large) / (time.perf_counter() - start)
    del predictor
    gc.collect()
    walls = []
    window = CpuWindow()  # who used the cores during the large run
    for files in (small, large):
        start = time.perf_counter()
        with window if files is large else contextlib.nullcontext():
            summary = run_scoring([str(path) for path in files], workdir / f"{files[0].parent.name}.parquet",
                                  checkpoint, batch_size=batch_size, faces="off")
        walls.append(time.perf_counter() - start)
        if summary.scored != len(files) or summary.unreadable:
            raise RuntimeError(f"batch scoring scored {summary.scored} of {len(files)} files "
                               f"({summary.unreadable} unreadable)")
    steady, start_s = steady_and_startup(walls[0], len(small), walls[1], len(large))
    return {"score_bare": {"images_per_s": bare},
            "score_ray_data": {"images_per_s": steady, "images": float(len(large)),
                               "steady_images": float(len(large) - len(small)),
                               "end_to_end_images_per_s": len(large) / walls[1], "start_s": start_s,
                               "small_run_s": walls[0], "large_run_s": walls[1]},
            "cpu_score": window.cores}


def steady_and_startup(small_s: float, small: int, large_s: float, large: int) -> tuple[float, float]:
    """From two scoring runs (seconds, files): the steady rate, images/s of the large run's files beyond the
    small run's over its extra time, and the start-up, the small run's time less its files at that rate.
    When the extra time is under a tenth of the large run (a model so fast that start-up is all there is),
    the large run's end-to-end rate, a lower bound, and no start-up (NaN)."""
    if large_s - small_s < 0.1 * large_s:
        return large / large_s, math.nan
    steady = (large - small) / (large_s - small_s)
    return steady, small_s - small / steady
