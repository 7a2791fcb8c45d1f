"""The Serve application builder that serve.config names (`import_path: serve.app:build_app`).

    serve run serve.config                  # artifacts/best.pth on http://127.0.0.1:8000
    serve run serve.ensemble.config         # the ensemble written by experiments/build_ensemble.py
    curl -F file=@face.jpg http://127.0.0.1:8000/predict
    curl -H 'Content-Type: image/jpeg' --data-binary @face.jpg http://127.0.0.1:8000/predict
    curl -F files=@a.jpg -F files=@b.png http://127.0.0.1:8000/predict/batch

`build_app(args)` reads the settings once (serve/settings.py) and the model file: a platform checkpoint,
a saved frequency detector, or an ensemble spec. Each detector gets its own `Detector` deployment
(serve/detector.py) with fractional CPUs and `@serve.batch` dynamic batching; the `DeepfakeAPI` ingress
(serve/ingress.py) applies the ensemble's combiner to their probabilities. With the env var named by
`token_env` set, /predict* and /models need `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.exceptions import RayServeException

from deepfake_platform.calibration import Calibration
from deepfake_platform.checkpoints import (
    CheckpointError,
    DetectorCheckpoint,
    EnsembleCheckpoint,
    file_sha256,
    read_checkpoint,
)
from deepfake_platform.ensemble import Combiner, load_ensemble, member_records, safe_name
from deepfake_platform.media import scoring_choices
from deepfake_platform.monitoring import reference_scores
from serve.detector import Detector
from serve.ingress import DeepfakeAPI
from serve.lifecycle import model_scoring
from serve.serve_run import end_serve_run
from serve.settings import app_args

# The challenger's replica: like serve.config's Detector (which cannot name it: it exists only with a registry).
CHALLENGER_ACTOR = {"num_cpus": 0.5, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "2"}}}


class ModelUnavailable(RayServeException):
    """The app cannot start with this model file; a RayServeException, so Serve does not retry the build."""


def missing_model_message(path: Path) -> str:
    """The sentence shown when the model file is missing."""
    return (
        f"no model at {path}. Train and promote one with `make run` or `python experiments/reproduce_baseline.py` "
        "(it writes artifacts/best.pth), build an ensemble with `python experiments/build_ensemble.py`, or set "
        "`args.model` in the Serve config to an existing .pth file."
    )


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve's application builder: checks the settings and the model, binds the deployments.

    A missing or unreadable model ends `serve run` at once with the sentence (see serve/serve_run.py),
    instead of Serve retrying the build and waiting forever.
    """
    settings = app_args(args).with_absolute_paths()
    path = Path(settings.model).expanduser().resolve()
    try:
        if not path.is_file():
            raise CheckpointError(missing_model_message(path))
        record = read_checkpoint(path)
    except CheckpointError as err:
        end_serve_run(f"error: {err}")
        raise ModelUnavailable(str(err)) from None
    batching = {"precision": settings.precision, "max_batch_size": settings.max_batch_size,
                "batch_wait_timeout_s": settings.batch_wait_timeout_s}
    if isinstance(record, EnsembleCheckpoint):
        spec = load_ensemble(path)
        detectors = {m.name: Detector.options(name=f"Detector_{m.name}").bind(m.path, **batching) for m in spec.members}
        combiner = spec.combiner.to_dict()
        model = {"name": spec.name, "checkpoint": path.name, "sha256": file_sha256(path)}
        challengers = None
    else:
        name = safe_name(record.detector if isinstance(record, DetectorCheckpoint) else record.kind)
        # The champion follows the registry's serving state (promote, rollback: no restart); with the state
        # file present at start, a second deployment holds the challenger on trial (shadow or canary).
        following = {"state": settings.serving_state, "poll_s": settings.state_poll_s}
        detectors = {name: Detector.bind(str(path), **batching, role="champion", **following)}
        challengers = ({name: Detector.options(name="Detector_challenger", ray_actor_options=CHALLENGER_ACTOR).bind(
                            str(path), **batching, role="challenger", **following)}
                       if settings.serving_state and Path(settings.serving_state).is_file() else None)
        combiner, model = Combiner("mean").to_dict(), None  # a single detector names itself once loaded
    records = member_records(path, record)  # the detectors' own, in the order of `detectors`
    # Faces cropped and thresholds as the model's records say (as predict.py and score.py do); args.faces
    # overrides the face mode.
    try:
        choices = scoring_choices(record, records, faces=settings.faces or None, num_frames=settings.video_frames,
                                  operating_point=settings.operating_point,
                                  small_face_factor=settings.small_face_factor)
    except CheckpointError as err:  # an operating point the model does not record
        end_serve_run(f"error: {err}")
        raise ModelUnavailable(str(err)) from None
    neural = [name for name, member in zip(detectors, records, strict=True) if isinstance(member, DetectorCheckpoint)]
    return DeepfakeAPI.bind(
        detectors, settings=settings, choices=choices, combiner=combiner, model=model,
        explainer=neural[0] if neural else None,
        # Drift is measured against the validation scores the deployed model (or ensemble) recorded.
        reference=reference_scores(record.val_scores),
        auth_required=bool(os.environ.get(settings.token_env)),
        challengers=challengers,
        # An ensemble's thresholds are its spec's; a single detector's come with its probabilities (these, from
        # the file at start, read an answer with nothing to score until the first probability comes back).
        scoring=model_scoring(record, Calibration.from_dict(getattr(record, "calibration", None))
                              if isinstance(record, DetectorCheckpoint) else None),
    )
