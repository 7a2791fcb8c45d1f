"""The Ray Serve application: one `Detector` deployment per model, and an HTTP ingress that combines them.

    serve run serve.config                  # artifacts/best.pth on http://127.0.0.1:8000
    serve run serve.ensemble.config         # the ensemble written by experiments/build_ensemble.py
    curl -F file=@face.jpg http://127.0.0.1:8000/predict
    curl -H 'Content-Type: image/jpeg' --data-binary @face.jpg http://127.0.0.1:8000/predict
    curl -F files=@a.jpg -F files=@b.png http://127.0.0.1:8000/predict/batch

`build_app(args)` is the builder serve.config names. The `model` argument is a platform checkpoint,
a saved frequency detector, or an ensemble spec; each detector gets its own deployment with
fractional CPUs and `@serve.batch` dynamic batching, and the ingress applies the ensemble's combiner
to their probabilities. With the env var named by `token_env` set, /predict* and /models need
`Authorization: Bearer <token>`.
"""

# No `from __future__ import annotations` here: FastAPI must see the real `Request` annotations on the
# methods Serve's ingress wraps, or it reads `request` as a query parameter.
import asyncio
import hmac
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from deepfake_platform.checkpoints import (
    CheckpointError,
    DetectorCheckpoint,
    EnsembleCheckpoint,
    file_sha256,
    read_checkpoint,
)
from deepfake_platform.data.faces import FacePreset
from deepfake_platform.ensemble import Combiner, load_ensemble, safe_name
from deepfake_platform.feedback import LABELS as FEEDBACK_LABELS
from deepfake_platform.feedback import FeedbackStore
from deepfake_platform.media import MediaScorer
from deepfake_platform.monitoring import reference_scores
from serve import observability
from serve.detector import Detector
from serve.observability import Observer
from serve.settings import app_args
from serve.uploads import APIError, Limits, Upload, decode_image, decode_video, read_form, read_uploads

HEALTH_TIMEOUT_S = 2.0
PAGE = Path(__file__).resolve().parent / "static" / "index.html"
# Serve's replica logger: lines go to the replica's log file under Ray's session logs.
logger = logging.getLogger("ray.serve")


# ---- the HTTP ingress ----------------------------------------------------------------------------


class ModelIdentity(BaseModel):
    """Which model answered."""

    name: str
    checkpoint: str
    sha256: str


class Face(BaseModel):
    """One face: its box (x, y, width, height in the picture's pixels) and how fake it looks."""

    box: list[int]
    detector_score: float
    fake_probability: float
    label: str


class Frame(BaseModel):
    """One sampled frame of a video and its verdict (its most suspicious face)."""

    frame: int | None
    fake_probability: float | None
    label: str
    faces: list[Face]
    no_face: bool


class Prediction(BaseModel):
    """The verdict for one image (its most suspicious face) or video (the mean of its frames' verdicts)."""

    kind: str
    fake_probability: float | None
    label: str | None
    threshold: float
    faces: list[Face] = []
    no_face: bool = False
    frames: list[Frame] = []
    model: ModelIdentity
    detectors: dict[str, float | None]
    latency_ms: float
    filename: str | None = None
    request_id: str


IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "video/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
FEEDBACK_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["request_id", "label"],
        "properties": {"request_id": {"type": "string"}, "label": {"type": "string", "enum": ["real", "fake"]},
                       "file": {"type": "string", "format": "binary"}},
    }}},
}
BATCH_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
    }}},
}
ERRORS = {code: {"description": text, "content": {"application/json": {"example": {"error": "a sentence"}}}}
          for code, text in [(400, "unreadable, empty or truncated image or video"), (401, "missing or wrong token"),
                             (413, "body, image or video too large, or video too long"),
                             (415, "not an image or video content type")]}

api = FastAPI(
    title="Deepfake image detector",
    description="Fake probability of an image from the platform's best checkpoint or ensemble.",
)


def _count_error(request: Request, status: int) -> None:
    # Through the module, not a global of this one: Serve ships the ingress class by value, with its own
    # copies of this module's globals.
    from serve import observability

    observability.count_error(request.url.path, status)


@api.exception_handler(APIError)
async def _api_error(request: Request, err: APIError) -> JSONResponse:
    _count_error(request, err.status)
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    _count_error(request, err.status_code)
    return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    _count_error(request, 422)
    return JSONResponse({"error": f"the request is malformed: {err.errors()}"}, status_code=422)


@api.exception_handler(Exception)
async def _server_error(request: Request, err: Exception) -> JSONResponse:
    _count_error(request, 500)
    # Whatever went wrong, the client gets the API's JSON with a sentence, not Starlette's plain text.
    return JSONResponse({"error": f"the server could not answer ({type(err).__name__}); retry the request, and "
                                  "if it keeps failing, the server's log has the details."}, status_code=500)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(api)
class DeepfakeAPI:
    """HTTP front door: validates uploads, fans each image out to every detector, applies the combiner."""

    def __init__(self, detectors: dict[str, DeploymentHandle], combiner: dict[str, Any],
                 threshold: float | None, model: dict[str, str] | None, limits: Limits,
                 token_env: str, auth_required: bool, faces: dict[str, Any] | None = None,
                 video_threshold: float | None = None, explainer: str | None = None,
                 reference: list[float] | None = None, monitoring: dict[str, Any] | None = None):
        self.token = os.environ.get(token_env, "")
        if auth_required and not self.token:
            raise RuntimeError(
                f"{token_env} was set where the app was built but is empty in this replica's environment; "
                f"set {token_env} on every Ray node (or in the app's runtime_env) before starting Serve."
            )
        self.detectors = detectors
        self.combiner = Combiner.from_dict(combiner)
        self.limits = limits
        # None for a single detector: its own validation threshold and identity, read once it has loaded.
        self.threshold = threshold
        self.video_threshold = video_threshold
        self.model = model
        self.members: list[dict[str, Any]] | None = None
        # The face preset the model was trained with: the server crops faces the same way.
        self.faces = dict(faces or {})
        self.explainer = explainer
        self.scorer: MediaScorer | None = None
        monitoring = monitoring or {}
        self.observer = Observer(reference or [], window=monitoring.get("drift_window", 500),
                                 log_dir=monitoring.get("log_dir", ""),
                                 cache_items=monitoring.get("cache_items", 256),
                                 cache_bytes=monitoring.get("cache_bytes", 100 * 1024 * 1024), model=model)
        observability.activate(self.observer)
        self.feedback = (FeedbackStore(monitoring["feedback_dir"], monitoring.get("keep_images", True))
                         if monitoring.get("feedback_dir") else None)

    async def _load_members(self) -> list[dict[str, Any]]:
        """Each detector's info; waits until every Detector replica has loaded its model."""
        if self.members is None:
            infos = [await handle.info.remote() for handle in self.detectors.values()]
            members = [{**info, "name": name, "detector": info["name"]}
                       for name, info in zip(self.detectors, infos, strict=True)]
            if self.threshold is None:
                self.threshold = members[0]["threshold"]
                self.model = {"name": infos[0]["name"], "checkpoint": infos[0]["checkpoint"],
                              "sha256": infos[0]["sha256"]}
            self.scorer = MediaScorer(faces=FacePreset.from_dict(self.faces), threshold=self.threshold,
                                      video_threshold=self.video_threshold, num_frames=self.limits.video_frames,
                                      max_pixels=self.limits.max_pixels)
            self.members = members
        return self.members

    def _authorize(self, request: Request) -> None:
        if not self.token:
            return
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(), self.token.encode()):
            raise APIError(401, "missing or wrong API token: send the header `Authorization: Bearer <token>`.",
                           headers={"WWW-Authenticate": "Bearer"})

    async def _score(self, name: str, handle: DeploymentHandle, image: Any, deadline: float) -> float:
        """One detector's probability for one image. A prediction is idempotent: when the replica serving it
        dies, it is sent again (to a live or a replacement replica) until `retry_timeout_s` has passed."""
        attempt = 0
        started = time.perf_counter()
        while True:
            remaining = deadline - time.monotonic()
            try:
                # A call made while no replica is alive waits for the replacement: bounded here.
                probability = await asyncio.wait_for(handle.predict.remote(image), timeout=max(remaining, 0.001))
                self.observer.detector_latency(name, time.perf_counter() - started)
                return probability
            except RayActorError as err:
                attempt += 1
                if time.monotonic() + 0.5 >= deadline:
                    raise self._unavailable(name) from None
                logger.warning("retrying a prediction on detector %s (attempt %d): its replica died (%s)",
                               name, attempt + 1, type(err).__name__)
                await asyncio.sleep(min(0.25 * 2**attempt, 2.0))
            except asyncio.TimeoutError:
                raise self._unavailable(name) from None

    def _unavailable(self, name: str) -> APIError:
        return APIError(503, f"the detector {name} did not answer within {self.limits.retry_timeout_s:g} s (its replica "
                             "is restarting or overloaded); retry the request in a few seconds.",
                        headers={"Retry-After": "5"})

    async def _pictures(self, upload: Upload) -> tuple[str, list[Image.Image], list[int | None]]:
        """The pictures of an upload: one image, or a video's sampled frames (a 4xx sentence when bad)."""
        if upload.is_video:
            frames = await asyncio.to_thread(decode_video, upload, self.limits)
            return "video", [image for _, image in frames], [index for index, _ in frames]
        image = await asyncio.to_thread(decode_image, upload.name, upload.data, self.limits.max_pixels)
        return "image", [image], [None]

    async def _scores(self, inputs: list[Image.Image]) -> np.ndarray:
        """(inputs x detectors) fake probabilities; every call sent before any is awaited, so the detectors
        work in parallel and batch the crops."""
        deadline = time.monotonic() + self.limits.retry_timeout_s
        calls = [[asyncio.ensure_future(self._score(name, handle, crop, deadline))
                  for name, handle in self.detectors.items()] for crop in inputs]
        try:
            return np.array([[await call for call in row] for row in calls], dtype=np.float64).reshape(
                len(inputs), len(self.detectors))
        finally:
            for call in (call for row in calls for call in row):
                call.cancel()

    async def _predict_one(self, upload: Upload) -> dict[str, Any]:
        kind, pictures, frames = await self._pictures(upload)
        scorer = self.scorer
        plan = await asyncio.to_thread(scorer.plan, pictures, frames)
        probabilities = await self._scores(plan.inputs)
        verdicts = scorer.assemble(plan, self.combiner.apply(probabilities) if len(plan.inputs) else [])
        members = {name: scorer.assemble(plan, probabilities[:, j]) for j, name in enumerate(self.detectors)}
        if kind == "video":
            answer = scorer.video_verdict(verdicts, upload.name).to_dict()
            detectors = {name: scorer.video_verdict(member).fake_probability for name, member in members.items()}
        else:
            answer = scorer.image_verdict(verdicts[0], upload.name).to_dict()
            detectors = {name: member[0].fake_probability for name, member in members.items()}
        answer["filename"] = answer.pop("name")
        return {**answer, "detectors": detectors, "model": self.model}

    async def _predict(self, uploads: list[Upload], started: float, route: str) -> list[dict[str, Any]]:
        await self._load_members()
        answers = await asyncio.gather(*(self._predict_one(upload) for upload in uploads))
        latency_ms = (time.perf_counter() - started) * 1000.0
        results = []
        for upload, answer in zip(uploads, answers, strict=True):
            answer = {**answer, "latency_ms": latency_ms}
            answer["request_id"] = self.observer.record(route, answer, upload.data, upload.name, upload.content_type)
            results.append(answer)
        return results

    @api.post("/predict", response_model=Prediction, responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY})
    async def predict(self, request: Request) -> dict[str, Any]:
        """Verdict for one image or short video (mp4, webm, avi, mov): a raw body with its content type, or the
        multipart field `file`. Faces are cropped as the model was trained; each face gets its box and fake
        probability, the image its most suspicious face, a video the mean of its sampled frames."""
        started = time.perf_counter()
        self._authorize(request)
        uploads = await read_uploads(request, self.limits)
        if len(uploads) != 1:
            raise APIError(400, f"/predict takes one file, got {len(uploads)}; send several to /predict/batch.")
        return (await self._predict(uploads, started, "/predict"))[0]

    @api.post("/predict/batch", response_model=list[Prediction], responses=ERRORS,
              openapi_extra={"requestBody": BATCH_BODY})
    async def predict_batch(self, request: Request) -> list[dict[str, Any]]:
        """Fake probabilities of several images sent as multipart `files` (or `file`) fields."""
        started = time.perf_counter()
        self._authorize(request)
        uploads = await read_uploads(request, self.limits)
        if len(uploads) > self.limits.max_batch_files:
            raise APIError(413, f"{len(uploads)} images is more than the limit of {self.limits.max_batch_files} "
                                "per request; split the batch.")
        return await self._predict(uploads, started, "/predict/batch")

    @api.post("/explain", responses={**ERRORS, 200: {"content": {"image/png": {}},
                                                     "description": "the heatmap of the most suspicious face"}},
              openapi_extra={"requestBody": IMAGE_BODY})
    async def explain(self, request: Request) -> Response:
        """Grad-CAM of the CNN and ViT branches, fused, on the image's most suspicious face (or the whole image
        without one), as a PNG; its box and fake probability are in the X-Face-Box and X-Fake-Probability
        headers."""
        self._authorize(request)
        uploads = await read_uploads(request, self.limits)
        if len(uploads) != 1:
            raise APIError(400, f"/explain takes one image, got {len(uploads)}.")
        if self.explainer is None:
            raise APIError(422, "this model has no neural network to explain (a frequency detector); deploy a "
                                "detector checkpoint or an ensemble with one.")
        if uploads[0].is_video:
            raise APIError(415, "/explain takes an image; to explain a video, send one of its frames.")
        await self._load_members()
        _, pictures, frames = await self._pictures(uploads[0])
        plan = await asyncio.to_thread(self.scorer.plan, pictures, frames)
        probabilities = await self._scores(plan.inputs)
        fused = self.combiner.apply(probabilities) if len(plan.inputs) else np.zeros(0)
        top = int(np.argmax(fused)) if len(fused) else 0
        png, probability = await self.detectors[self.explainer].explain.remote(plan.inputs[top])
        boxes = plan.boxes[0]
        headers = {"X-Fake-Probability": f"{probability:.6f}",
                   "X-Face-Box": ",".join(map(str, boxes[top].as_list())) if boxes else "none"}
        return Response(png, media_type="image/png", headers=headers)

    @api.get("/monitoring")
    async def monitoring(self, request: Request) -> dict[str, Any]:
        """Drift of the recent answers against the validation scores: window size, PSI, KS p-value, fake rate,
        no-face rate."""
        self._authorize(request)
        return await asyncio.to_thread(self.observer.drift_snapshot)

    @api.post("/feedback", responses=ERRORS, openapi_extra={"requestBody": FEEDBACK_BODY})
    async def feedback(self, request: Request) -> dict[str, Any]:
        """Record the true label of an answered request: multipart `request_id`, `label` (real or fake) and
        `file` (the image again; optional while the server still holds the request's upload)."""
        self._authorize(request)
        if self.feedback is None:
            raise APIError(404, "feedback is switched off on this server (args.feedback_dir is empty).")
        fields = await read_form(request, self.limits)
        request_id, label = fields.get("request_id"), fields.get("label")
        if not isinstance(request_id, str) or not request_id.strip():
            raise APIError(400, "send the `request_id` of the answer you correct, as a multipart field.")
        if label not in FEEDBACK_LABELS:
            raise APIError(400, f"the `label` field must be real or fake, not {label!r}.")
        recent = self.observer.lookup(request_id.strip())
        if recent is None:
            raise APIError(404, f"request {request_id!r} is unknown to this server (it answered no such request, or "
                                "too long ago); send feedback with the request_id of a recent answer.")
        upload = fields.get("file")
        data = upload.data if isinstance(upload, Upload) else recent.data
        if data is None:
            raise APIError(400, f"the image of request {request_id} is no longer held here; attach it again as the "
                                "multipart field `file`.")
        suffix = Path(recent.name or (upload.name if isinstance(upload, Upload) else "") or "image.jpg").suffix or ".jpg"
        stored = await asyncio.to_thread(self.feedback.add, request_id.strip(), label, recent.answer, data,
                                         suffix.lower())
        return {"stored": True, "request_id": stored["request_id"], "label": label,
                "image_sha256": stored["image_sha256"], "image_kept": stored["image"] is not None}

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        """A page to check an image or a video by hand (open without a token; it asks for one when needed)."""
        return HTMLResponse(PAGE.read_text())

    async def _ready_members(self) -> list[dict[str, Any]]:
        """The members, after every detector has answered again: a replica that died since loading shows here."""
        members = await self._load_members()
        # Asked on every probe: the cached members would report a dead or restarting detector as ready.
        await asyncio.gather(*(handle.info.remote() for handle in self.detectors.values()))
        return members

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 while every detector has its model loaded and answers, else 503 (open without a token)."""
        try:
            members = await asyncio.wait_for(self._ready_members(), timeout=HEALTH_TIMEOUT_S)
        except Exception as err:  # a timeout or a dead replica: either way, not ready
            return JSONResponse({"status": "loading", "error": f"the detectors are not ready yet ({err!r})."},
                                status_code=503)
        return JSONResponse({"status": "ok", "detectors": [m["name"] for m in members]})

    @api.get("/models")
    async def models(self, request: Request) -> dict[str, Any]:
        """What is deployed: the model or ensemble, its threshold, the combiner and every member."""
        self._authorize(request)
        members = await self._load_members()
        combiner = self.combiner.to_dict()
        if self.combiner.kind == "weighted":
            combiner["weights"] = dict(zip(self.detectors, self.combiner.weights, strict=True))
        if self.combiner.kind == "stacking":
            combiner["coef"] = dict(zip(self.detectors, self.combiner.coef, strict=True))
        return {"model": self.model, "threshold": self.threshold, "combiner": combiner, "members": members,
                "limits": self.limits.to_dict()}


# ---- the builder ---------------------------------------------------------------------------------


def missing_model_message(path: Path) -> str:
    """The sentence shown when the model file is missing."""
    return (
        f"no model at {path}. Train and promote one with `make run` or `python experiments/reproduce_baseline.py` "
        "(it writes artifacts/best.pth), build an ensemble with `python experiments/build_ensemble.py`, or set "
        "`args.model` in the Serve config to an existing .pth file."
    )


class ModelUnavailable(RayServeException):
    """The app cannot start with this model file; a RayServeException, so Serve does not retry the build."""


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve's application builder (`import_path: serve.app:build_app`): checks the model, binds deployments.

    A missing or unreadable model ends `serve run` at once with the sentence (see `_end_serve_run`), instead
    of Serve retrying the build and waiting forever.
    """
    options = app_args(args)
    path = Path(options.model).expanduser().resolve()
    try:
        if not path.is_file():
            raise CheckpointError(missing_model_message(path))
        record = read_checkpoint(path)
    except CheckpointError as err:
        _end_serve_run(f"error: {err}")
        raise ModelUnavailable(str(err)) from None
    batching = {"precision": options.precision, "max_batch_size": options.max_batch_size,
                "batch_wait_timeout_s": options.batch_wait_timeout_s}
    if isinstance(record, EnsembleCheckpoint):
        spec = load_ensemble(path)
        detectors = {m.name: Detector.options(name=f"Detector_{m.name}").bind(m.path, **batching) for m in spec.members}
        combiner, threshold, video_threshold = spec.combiner.to_dict(), spec.threshold, None
        model = {"name": spec.name, "checkpoint": path.name, "sha256": file_sha256(path)}
        records = {m.name: read_checkpoint(m.path) for m in spec.members}
    else:
        name = safe_name(record.detector if isinstance(record, DetectorCheckpoint) else record.kind)
        detectors = {name: Detector.bind(str(path), **batching)}
        combiner, threshold, model = Combiner("mean").to_dict(), None, None
        video_threshold = record.video.get("threshold") if isinstance(record, DetectorCheckpoint) and record.video else None
        records = {name: record}
    torch_members = [name for name, member in records.items() if isinstance(member, DetectorCheckpoint)]
    # The face preset the detectors were trained with (an ensemble's members share one), unless args.faces
    # overrides the mode.
    faces = next((dict(member.faces) for member in records.values() if getattr(member, "faces", None)), {})
    if options.faces:
        faces["mode"] = options.faces
    limits = Limits(options.max_body_bytes, options.max_pixels, options.max_batch_files, options.retry_timeout_s,
                    options.max_video_bytes, options.max_video_seconds, options.video_frames)
    auth_required = bool(os.environ.get(options.token_env))
    # Drift is measured against the validation scores the deployed model (or ensemble) recorded.
    reference = reference_scores(getattr(record, "val_scores", {}) or {})
    monitoring = {"drift_window": options.drift_window,
                  "log_dir": str(Path(options.log_dir).expanduser().resolve()) if options.log_dir else "",
                  "feedback_dir": str(Path(options.feedback_dir).expanduser().resolve()) if options.feedback_dir else "",
                  "keep_images": options.keep_feedback_images, "cache_items": options.feedback_cache_items,
                  "cache_bytes": options.feedback_cache_bytes}
    return DeepfakeAPI.bind(detectors, combiner, threshold, model, limits, options.token_env, auth_required,
                            faces=faces, video_threshold=video_threshold,
                            explainer=torch_members[0] if torch_members else None, reference=reference,
                            monitoring=monitoring)


def _end_serve_run(message: str) -> None:
    """Inside Serve's build task started by `serve run CONFIG`: print `message` on that command's terminal
    and end it (exit status 129), so a missing model is one sentence and not a start that waits forever.

    `serve run` with a config file builds the app in a Ray task and then waits in a sleep loop that no
    failure ends; its job's driver is that command. Anywhere else (tests, `serve deploy`, the builder
    called in-process) this does nothing and the caller's exception speaks.
    """
    try:
        import ray  # ray:
        from ray.util.state import list_jobs  # ray:

        if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:  # ray:
            return
        job_id = ray.get_runtime_context().get_job_id()  # ray:
        jobs = [job for job in list_jobs(filters=[("job_id", "=", job_id)], raise_on_missing_output=False)]
        pid = jobs[0].driver_info.pid if jobs and jobs[0].driver_info else None
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid else []
        if not (command and any(part.endswith(b"serve") for part in command[:2]) and b"run" in command):
            return
        with open(f"/proc/{pid}/fd/2", "w") as terminal:  # the command's own stderr, without Ray's prefix
            terminal.write(message + "\n")
        # SIGHUP: no handler of Python or Ray catches it (SIGTERM would print a stack trace), and the local
        # Ray that `serve run` started shares its fate.
        os.kill(int(pid), signal.SIGHUP)
    except Exception as err:  # best effort: the exception raised by the caller still reports the problem
        print(f"could not end `serve run` early ({err!r})", file=sys.stderr)


def ensemble_serve_config(ensemble: str | Path, member_names: list[str], app_name: str = "deepfake") -> dict[str, Any]:
    """A multi-application Serve config deploying an ensemble spec, on 2 CPUs in all."""
    # The ingress takes 0.25 CPU; the detectors share 1.5 so the whole app fits a 2-CPU machine.
    member_cpus = math.floor(min(0.5, 1.5 / max(len(member_names), 1)) * 100) / 100
    deployments = [{"name": "DeepfakeAPI", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}}]
    deployments += [{"name": f"Detector_{name}", "num_replicas": 1,
                     "ray_actor_options": {"num_cpus": member_cpus}} for name in member_names]
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": [{
            "name": app_name,
            "route_prefix": "/",
            "import_path": "serve.app:build_app",
            "args": {"model": str(ensemble), "token_env": "DEEPFAKE_API_TOKEN"},
            "deployments": deployments,
        }],
    }
