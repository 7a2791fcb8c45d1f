"""The HTTP front door: one `POST /predict` read top to bottom.

`predict` checks the token, reads the upload (serve/uploads.py), then `_predict` -> `_predict_one`: the
picture or the video's sampled frames (`_pictures`), the face crops to score (`MediaScorer.plan`), every
detector's probability for every crop in parallel (`_scores`, retried while a replica restarts), the
combiner, the verdicts (`MediaScorer.assemble`), and the answer recorded by the observer. The other routes
(/predict/batch, /explain, /feedback, /monitoring, /models, /healthz, the page) reuse those steps.
"""

# No `from __future__ import annotations` here: FastAPI must see the real `Request` annotations on the
# methods Serve's ingress wraps, or it reads `request` as a query parameter.
import asyncio
import hmac
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from deepfake_platform.ensemble import Combiner
from deepfake_platform.feedback import LABELS as FEEDBACK_LABELS
from deepfake_platform.feedback import FeedbackStore
from deepfake_platform.media import MediaScorer, ScoringChoices
from serve import observability
from serve.errors import APIError, add_error_handlers
from serve.observability import Observer
from serve.schemas import BATCH_BODY, ERRORS, FEEDBACK_BODY, IMAGE_BODY, Prediction
from serve.settings import AppArgs
from serve.uploads import Upload, decode_image, decode_video, read_form, read_uploads

HEALTH_TIMEOUT_S = 2.0
PAGE = Path(__file__).resolve().parent / "static" / "index.html"
# Serve's replica logger: lines go to the replica's log file under Ray's session logs.
logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="Deepfake image detector",
    description="Fake probability of an image from the platform's best checkpoint or ensemble.",
)
add_error_handlers(api)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(api)
class DeepfakeAPI:
    """HTTP front door: validates uploads, fans each image out to every detector, applies the combiner."""

    def __init__(self, detectors: dict[str, DeploymentHandle], *, settings: AppArgs, choices: ScoringChoices,
                 combiner: dict[str, Any], model: dict[str, str] | None, explainer: str | None,
                 reference: list[float], auth_required: bool):
        self.token = os.environ.get(settings.token_env, "")
        if auth_required and not self.token:
            raise RuntimeError(
                f"{settings.token_env} was set where the app was built but is empty in this replica's environment; "
                f"set {settings.token_env} on every Ray node (or in the app's runtime_env) before starting Serve."
            )
        self.detectors = detectors
        self.settings = settings
        self.combiner = Combiner.from_dict(combiner)
        # Faces cropped, thresholds and frames as the model's record says, unless args override them.
        self.scorer = MediaScorer(choices=choices, max_pixels=settings.max_pixels)
        self.threshold = choices.threshold
        # None for a single detector: its identity, read once its replica has loaded it.
        self.model = model
        self.members: list[dict[str, Any]] | None = None
        self.explainer = explainer
        self.observer = Observer(reference, window=settings.drift_window, log_dir=settings.log_dir,
                                 cache_items=settings.feedback_cache_items, cache_bytes=settings.feedback_cache_bytes,
                                 model=model)
        observability.activate(self.observer)
        self.feedback = (FeedbackStore(settings.feedback_dir, settings.keep_feedback_images)
                         if settings.feedback_dir else None)

    # ---- POST /predict, top to bottom ----

    @api.post("/predict", response_model=Prediction, responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY})
    async def predict(self, request: Request) -> dict[str, Any]:
        """Verdict for one image or short video (mp4, webm, avi, mov): a raw body with its content type, or the
        multipart field `file`. Faces are cropped as the model was trained; each face gets its box and fake
        probability, the image its most suspicious face, a video the mean of its sampled frames."""
        started = time.perf_counter()
        self._authorize(request)
        uploads = await read_uploads(request, self.settings)
        if len(uploads) != 1:
            raise APIError(400, f"/predict takes one file, got {len(uploads)}; send several to /predict/batch.")
        return (await self._predict(uploads, started, "/predict"))[0]

    def _authorize(self, request: Request) -> None:
        if not self.token:
            return
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(), self.token.encode()):
            raise APIError(401, "missing or wrong API token: send the header `Authorization: Bearer <token>`.",
                           headers={"WWW-Authenticate": "Bearer"})

    async def _predict(self, uploads: list[Upload], started: float, route: str) -> list[dict[str, Any]]:
        """The answers to `uploads`, scored concurrently, each recorded with its request id."""
        await self._load_members()
        answers = await asyncio.gather(*(self._predict_one(upload) for upload in uploads))
        latency_ms = (time.perf_counter() - started) * 1000.0
        results = []
        for upload, answer in zip(uploads, answers, strict=True):
            answer = {**answer, "latency_ms": latency_ms}
            answer["request_id"] = self.observer.record(route, answer, upload.data, upload.name, upload.content_type)
            results.append(answer)
        return results

    async def _load_members(self) -> list[dict[str, Any]]:
        """Each detector's info; waits until every Detector replica has loaded its model."""
        if self.members is None:
            infos = [await handle.info.remote() for handle in self.detectors.values()]
            if self.model is None:
                self.model = {key: infos[0][key] for key in ("name", "checkpoint", "sha256")}
            self.members = [{**info, "name": name, "detector": info["name"]}
                            for name, info in zip(self.detectors, infos, strict=True)]
        return self.members

    async def _predict_one(self, upload: Upload) -> dict[str, Any]:
        """One upload's answer: its pictures, their crops, every detector's scores, the combined verdict."""
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

    async def _pictures(self, upload: Upload) -> tuple[str, list[Image.Image], list[int | None]]:
        """The pictures of an upload: one image, or a video's sampled frames (a 4xx sentence when bad)."""
        if upload.is_video:
            frames = await asyncio.to_thread(decode_video, upload, self.settings, num_frames=self.scorer.num_frames,
                                             every=self.scorer.every)
            return "video", [image for _, image in frames], [index for index, _ in frames]
        image = await asyncio.to_thread(decode_image, upload.name, upload.data, self.settings.max_pixels)
        return "image", [image], [None]

    async def _scores(self, inputs: list[Image.Image]) -> np.ndarray:
        """(inputs x detectors) fake probabilities; every call sent before any is awaited, so the detectors
        work in parallel and batch the crops."""
        deadline = time.monotonic() + self.settings.retry_timeout_s
        calls = [[asyncio.ensure_future(self._score(name, handle, crop, deadline))
                  for name, handle in self.detectors.items()] for crop in inputs]
        try:
            return np.array([[await call for call in row] for row in calls], dtype=np.float64).reshape(
                len(inputs), len(self.detectors))
        finally:
            for call in (call for row in calls for call in row):
                call.cancel()

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
        return APIError(503, f"the detector {name} did not answer within {self.settings.retry_timeout_s:g} s (its replica "
                             "is restarting or overloaded); retry the request in a few seconds.",
                        headers={"Retry-After": "5"})

    # ---- the other routes ----

    @api.post("/predict/batch", response_model=list[Prediction], responses=ERRORS,
              openapi_extra={"requestBody": BATCH_BODY})
    async def predict_batch(self, request: Request) -> list[dict[str, Any]]:
        """Fake probabilities of several images sent as multipart `files` (or `file`) fields."""
        started = time.perf_counter()
        self._authorize(request)
        uploads = await read_uploads(request, self.settings)
        if len(uploads) > self.settings.max_batch_files:
            raise APIError(413, f"{len(uploads)} images is more than the limit of {self.settings.max_batch_files} "
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
        uploads = await read_uploads(request, self.settings)
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
        fields = await read_form(request, self.settings)
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

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 while every detector has its model loaded and answers, else 503 (open without a token)."""
        try:
            members = await asyncio.wait_for(self._ready_members(), timeout=HEALTH_TIMEOUT_S)
        except Exception as err:  # a timeout or a dead replica: either way, not ready
            return JSONResponse({"status": "loading", "error": f"the detectors are not ready yet ({err!r})."},
                                status_code=503)
        return JSONResponse({"status": "ok", "detectors": [m["name"] for m in members]})

    async def _ready_members(self) -> list[dict[str, Any]]:
        """The members, after every detector has answered again: a replica that died since loading shows here."""
        members = await self._load_members()
        # Asked on every probe: the cached members would report a dead or restarting detector as ready.
        await asyncio.gather(*(handle.info.remote() for handle in self.detectors.values()))
        return members

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
                "limits": {**self.settings.limits(), "video_frames": self.scorer.num_frames}}
