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
import datetime as dt
import hmac
import logging
import mimetypes
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

from deepfake_platform.calibration import OPERATING_POINTS, Calibration
from deepfake_platform.credentials import read_credentials
from deepfake_platform.ensemble import Combiner
from deepfake_platform.feedback import LABELS as FEEDBACK_LABELS
from deepfake_platform.feedback import FeedbackStore
from deepfake_platform.media import MediaScorer, ScoringChoices
from serve import observability
from serve.errors import APIError, add_error_handlers
from serve.lifecycle import Arm, ChallengerTrial, ModelNotReady
from serve.observability import Observer
from serve.schemas import BATCH_BODY, ERRORS, FEEDBACK_BODY, IMAGE_BODY, Prediction
from serve.settings import AppArgs
from serve.uploads import Upload, decode_image, decode_video, read_form, read_uploads

HEALTH_TIMEOUT_S = 2.0
# Comparisons with the challenger still running after their answers; beyond this, requests go uncompared.
MAX_BACKGROUND = 128
PAGE = Path(__file__).resolve().parent / "static" / "index.html"
# Serve's replica logger: lines go to the replica's log file under Ray's session logs.
logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="Deepfake image detector",
    description="Fake probability of an image from the platform's best checkpoint or ensemble.",
)
add_error_handlers(api)


# Helpers above the class: Serve pickles the ingress class with the module globals defined before it.
def _summary(answer: dict[str, Any] | None) -> dict[str, Any] | None:
    """One model's side of a comparison, for the prediction log and the promotion gate."""
    if answer is None:
        return None
    return {"version": (answer.get("model") or {}).get("version"), "fake_probability": answer["fake_probability"],
            "label": answer["label"], "latency_ms": answer["latency_ms"]}


def _media_type(upload: Upload) -> str:
    """The upload's media type for reading content credentials: as sent, else guessed from its file name."""
    sent = (upload.content_type or "").split(";")[0].strip().lower()
    if sent.startswith(("image/", "video/")):
        return sent
    return mimetypes.guess_type(upload.name or "")[0] or sent


def _describe(err: BaseException) -> str:
    """An error in one line (a replica's error arrives wrapped in Ray's)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"[:300]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(api)
class DeepfakeAPI:
    """HTTP front door: validates uploads, fans each image out to every detector, applies the combiner."""

    def __init__(self, detectors: dict[str, DeploymentHandle], *, settings: AppArgs, choices: ScoringChoices,
                 combiner: dict[str, Any], model: dict[str, str] | None, explainer: str | None,
                 reference: list[float], auth_required: bool,
                 challengers: dict[str, DeploymentHandle] | None = None, scoring: dict[str, Any] | None = None):
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
        # How the deployed model's probabilities are read (thresholds per operating point, calibration): an
        # ensemble's from its spec; a single detector's come with each probability, from the version that gave it.
        self.scoring = scoring or {"thresholds": {choices.operating_point: [choices.threshold,
                                                                            choices.video_threshold]}}
        self.scorers: dict[tuple[Any, ...], MediaScorer] = {}
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
        # The registry's challenger, when the model is a registered single detector (serve/lifecycle.py).
        self.ensemble = model is not None
        self.challengers = challengers
        self.trial = ChallengerTrial(settings.serving_state, settings.challenger, enabled=challengers is not None,
                                     poll_s=settings.state_poll_s)
        self.background: set[asyncio.Task] = set()  # comparisons still running after their answer was sent
        # The champion whose validation scores drift is measured against (fetched once per version).
        self.reference_sha: str | None = None
        self.reference_pending = False

    # ---- POST /predict, top to bottom ----

    @api.post("/predict", response_model=Prediction, responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY})
    async def predict(self, request: Request) -> dict[str, Any]:
        """Verdict for one image or short video (mp4, webm, avi, mov): a raw body with its content type, or the
        multipart field `file`. Faces are cropped as the model was trained; each face gets its box and fake
        probability, the image its most suspicious face, a video the mean of its sampled frames."""
        started = time.perf_counter()
        self._authorize(request)
        point = self._operating_point(request)
        uploads = await read_uploads(request, self.settings)
        if len(uploads) != 1:
            raise APIError(400, f"/predict takes one file, got {len(uploads)}; send several to /predict/batch.")
        return (await self._predict(uploads, started, "/predict", point))[0]

    def _operating_point(self, request: Request) -> str:
        """The request's `?operating_point=` (balanced, high_precision, high_recall), else the config's."""
        point = request.query_params.get("operating_point") or self.settings.operating_point
        if point not in OPERATING_POINTS:
            raise APIError(400, f"unknown operating_point {point!r}; use one of {', '.join(OPERATING_POINTS)}.")
        return point

    def _authorize(self, request: Request) -> None:
        if not self.token:
            return
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(), self.token.encode()):
            raise APIError(401, "missing or wrong API token: send the header `Authorization: Bearer <token>`.",
                           headers={"WWW-Authenticate": "Bearer"})

    async def _predict(self, uploads: list[Upload], started: float, route: str, point: str) -> list[dict[str, Any]]:
        """The answers to `uploads`, scored concurrently, each recorded with its request id; a challenger's
        comparison runs after the answers are sent."""
        await self._load_members()
        answers = await asyncio.gather(*(self._predict_one(upload, point) for upload in uploads))
        latency_ms = (time.perf_counter() - started) * 1000.0
        results = []
        for upload, (answer, pending) in zip(uploads, answers, strict=True):
            answer = {**answer, "latency_ms": latency_ms}
            answer["request_id"] = self.observer.record(route, answer, upload.data, upload.name, upload.content_type)
            results.append(answer)
            if pending is not None and len(self.background) < MAX_BACKGROUND:
                self._in_background(self._compare(answer, **pending))
            elif pending is not None:
                self.trial.skipped += 1  # a slow challenger: compare fewer requests, never queue without end
        return results

    def _in_background(self, work: Any) -> None:
        """Run `work` after the answer is sent; kept referenced until done, and its failure logged."""
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a comparison with the challenger failed", exc_info=task.exception())

    async def _load_members(self) -> list[dict[str, Any]]:
        """Each detector's info; waits until every Detector replica has loaded its model."""
        if self.members is None:
            infos = [await handle.info.remote() for handle in self.detectors.values()]
            if self.model is None:
                self.model = infos[0]["identity"]
            self.members = [{**info, "name": name, "detector": info["name"]}
                            for name, info in zip(self.detectors, infos, strict=True)]
        return self.members

    async def _predict_one(self, upload: Upload, point: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """One upload's answer: its pictures, their crops, every detector's scores, the combined verdict; and
        what the challenger still has to be compared on, if one is on trial."""
        kind, pictures, frames, fps = await self._pictures(upload)
        plan, credentials = await asyncio.gather(asyncio.to_thread(self.scorer.plan, pictures, frames, fps),
                                                 asyncio.to_thread(read_credentials, upload.data, _media_type(upload)))
        answer, pending = await self._judged(upload, kind, plan, point)
        # The file's own statement (C2PA), beside the verdict and never blended into it.
        return {**answer, "credentials": credentials}, pending

    async def _judged(self, upload: Upload, kind: str, plan: Any, point: str
                      ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The verdict of the champion (or of a canary challenger, for its share) on a planned upload."""
        arm = self.trial.choose() if len(plan.inputs) else None
        if arm is not None and arm.canary:
            started = time.perf_counter()
            try:
                answer = await self._answer(kind, upload.name, plan, point, self.challengers, version=arm.version)
                challenger = {**answer, "latency_ms": (time.perf_counter() - started) * 1000.0}
                return answer, {"arm": arm, "kind": kind, "plan": plan, "point": point, "answered": challenger}
            except ModelNotReady:
                pass  # loading, or another version: the champion answers, nothing counted
            except APIError as err:
                if err.status != 422:  # unavailable (503): the challenger's failure, counted
                    reason = self.trial.record(arm, champion=None, challenger=None, error=f"{err.status}: {err.message}")
                    await self._withdraw_if(arm, reason)
                arm = None  # 422: it records no such operating point; the champion answers, nothing counted
            except Exception as err:  # noqa: BLE001 - the challenger failed: the champion answers instead
                reason = self.trial.record(arm, champion=None, challenger=None, error=_describe(err))
                await self._withdraw_if(arm, reason)
                arm = None
        started = time.perf_counter()
        answer = await self._answer(kind, upload.name, plan, point, self.detectors)
        if arm is None:
            return answer, None
        champion = {**answer, "latency_ms": (time.perf_counter() - started) * 1000.0}
        return answer, {"arm": arm, "kind": kind, "plan": plan, "point": point, "answered": champion}

    async def _answer(self, kind: str, name: str | None, plan: Any, point: str,
                      detectors: dict[str, DeploymentHandle], version: int | None = None) -> dict[str, Any]:
        """The verdict of `detectors` on a planned upload at operating point `point`, labelled at the
        thresholds of the model that gave the probabilities (`version`: only from that registered version)."""
        probabilities, identities, scorings = await self._scores(plan.inputs, detectors)
        if version is not None and any(identity.get("version") != version for identity in identities):
            raise ModelNotReady(f"a challenger replica does not hold version {version} yet.")
        if any(identity["sha256"] != identities[0]["sha256"] for identity in identities):
            # A switch landed between this upload's crops: score it again, all on one model.
            probabilities, identities, scorings = await self._scores(plan.inputs, detectors)
        scoring = scorings[0] if scorings and not self.ensemble else self.scoring
        if scorings and not self.ensemble and detectors is self.detectors:
            self.scoring = scoring  # the champion's now: what an answer with nothing to score is read at
        scorer = self._scorer(scoring, point)
        verdicts = scorer.assemble(plan, self.combiner.apply(probabilities) if len(plan.inputs) else [])
        members = {name: scorer.assemble(plan, probabilities[:, j]) for j, name in enumerate(detectors)}
        if kind == "video":
            answer = scorer.video_verdict(verdicts, name).to_dict()
            scores = {name: scorer.video_verdict(member).fake_probability for name, member in members.items()}
        else:
            answer = scorer.image_verdict(verdicts[0], name).to_dict()
            scores = {name: member[0].fake_probability for name, member in members.items()}
        answer["filename"] = answer.pop("name")
        answer["operating_point"] = point
        calibration = Calibration.from_dict(scoring.get("calibration"))
        answer["logit"] = calibration.raw_logit(answer["fake_probability"])  # the detector's, before calibration
        for face in answer["faces"]:
            face["logit"] = calibration.raw_logit(face["fake_probability"])
        model = self.model
        if not self.ensemble and identities:
            model = identities[0]  # the model that scored it: during a switch, the old or the new version
            if detectors is self.detectors:
                self._follow_champion(model)
        return {**answer, "detectors": scores, "model": model}

    def _scorer(self, scoring: dict[str, Any], point: str) -> MediaScorer:
        """The verdicts of a model at `point`: the face crops as deployed, its own thresholds."""
        thresholds = scoring["thresholds"].get(point)
        if thresholds is None:
            raise APIError(422, f"the model that answered records no {point} operating point (it predates them, "
                                f"or its validation split held one class); use one of "
                                f"{', '.join(scoring['thresholds'])}.")
        key = (point, *thresholds)
        scorer = self.scorers.get(key)
        if scorer is None:
            choices = self.scorer.choices.override(threshold=thresholds[0], video_threshold=thresholds[1],
                                                   operating_point=point)
            scorer = MediaScorer(choices=choices, max_pixels=self.settings.max_pixels)
            if len(self.scorers) >= 32:  # versions come and go: keep the recent ones
                self.scorers.pop(next(iter(self.scorers)))
            self.scorers[key] = scorer
        return scorer

    def _follow_champion(self, identity: dict[str, Any]) -> None:
        """After a promote or rollback: name the new champion in answers without a face, and measure drift
        against its validation scores."""
        self.model = identity
        self.observer.model = identity
        if identity["sha256"] == self.reference_sha or self.reference_pending:
            return
        self.reference_pending = True
        self._in_background(self._reference_of(self.detectors, identity))

    async def _reference_of(self, detectors: dict[str, DeploymentHandle], identity: dict[str, Any]) -> None:
        """Fetch the validation scores of the model `identity` names, for drift (champion) or the trial."""
        try:
            info = await next(iter(detectors.values())).info.remote(True)
        finally:
            if detectors is self.detectors:
                self.reference_pending = False
        if info["identity"]["sha256"] != identity["sha256"]:
            return  # a replica still on the previous model: the next answer asks again
        if detectors is self.detectors:
            self.observer.drift.reference = info["reference"]
            self.reference_sha = identity["sha256"]
            self.trial.champion_version = identity.get("version")
        self.trial.references[identity.get("version")] = info["reference"]

    async def _compare(self, answer: dict[str, Any], *, arm: Arm, kind: str, plan: Any, point: str,
                       answered: dict[str, Any]) -> None:
        """After the answer was sent: the other model's verdict on the same crops, logged beside it and
        counted in the trial; a challenger that crosses a limit is withdrawn."""
        by_challenger = arm.canary
        started = time.perf_counter()
        other, error = None, None
        try:
            other = await self._answer(kind, answer["filename"], plan, point,
                                       self.detectors if by_challenger else self.challengers,
                                       version=None if by_challenger else arm.version)
            other = {**other, "latency_ms": (time.perf_counter() - started) * 1000.0}
        except ModelNotReady:
            return  # the challenger is loading (or was just replaced): nothing to compare
        except Exception as err:  # noqa: BLE001 - logged and counted, never raised: the answer is gone
            if by_challenger:
                logger.warning("comparing a canary answer with the champion failed: %s", _describe(err))
                return
            error = _describe(err)
        champion, challenger = (other, answered) if by_challenger else (answered, other)
        if challenger is not None and arm.version not in self.trial.references:
            self._in_background(self._reference_of(self.challengers, challenger["model"]))
        line = {"event": "shadow", "request_id": answer["request_id"],
                "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                "answered_by": "challenger" if by_challenger else "champion",
                "champion": _summary(champion), "challenger": {**(_summary(challenger) or {"version": arm.version}),
                                                              "error": error}}
        self.observer.side_record(answer["request_id"], line)
        reason = self.trial.record(arm, champion=champion, challenger=challenger, error=error)
        await self._withdraw_if(arm, reason)

    async def _withdraw_if(self, arm: Arm, reason: str | None) -> None:
        """Withdraw the challenger for `reason` (None: it stays), once, logged and shown on /monitoring."""
        if reason and await asyncio.to_thread(self.trial.withdraw, arm.version, reason):
            self.observer.side_record(None, {"event": "withdrawn", "version": arm.version, "reason": reason,
                                             "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})

    async def _pictures(self, upload: Upload) -> tuple[str, list[Image.Image], list[int | None], float]:
        """The pictures of an upload: one image, or a video's sampled frames with its frame rate (0.0 unknown)
        (a 4xx sentence when bad)."""
        if upload.is_video:
            video = await asyncio.to_thread(decode_video, upload, self.settings, num_frames=self.scorer.num_frames,
                                            every=self.scorer.every)
            return "video", [image for _, image in video.frames], [index for index, _ in video.frames], video.fps
        image = await asyncio.to_thread(decode_image, upload.name, upload.data, self.settings.max_pixels)
        return "image", [image], [None], 0.0

    async def _scores(self, inputs: list[Image.Image], detectors: dict[str, DeploymentHandle] | None = None
                      ) -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]:
        """(inputs x detectors) fake probabilities, and the identity and scoring (thresholds, calibration) of
        the first detector's model for each input; every call sent before any is awaited, so the detectors
        work in parallel and batch the crops."""
        detectors = self.detectors if detectors is None else detectors
        deadline = time.monotonic() + self.settings.retry_timeout_s
        suffix = "" if detectors is self.detectors else " (challenger)"  # the latency metric's label
        calls = [[asyncio.ensure_future(self._score(name + suffix, handle, crop, deadline))
                  for name, handle in detectors.items()] for crop in inputs]
        try:
            results = [[await call for call in row] for row in calls]
        finally:
            for call in (call for row in calls for call in row):
                call.cancel()
        probabilities = np.array([[scored[0] for scored in row] for row in results], dtype=np.float64).reshape(
            len(inputs), len(detectors))
        return probabilities, [row[0][1] for row in results], [row[0][2] for row in results]

    async def _score(self, name: str, handle: DeploymentHandle, image: Any, deadline: float
                     ) -> tuple[float, dict[str, Any], dict[str, Any]]:
        """One detector's probability for one image. A prediction is idempotent: when the replica serving it
        dies, it is sent again (to a live or a replacement replica) until `retry_timeout_s` has passed."""
        attempt = 0
        started = time.perf_counter()
        while True:
            remaining = deadline - time.monotonic()
            try:
                # A call made while no replica is alive waits for the replacement: bounded here.
                scored = await asyncio.wait_for(handle.predict.remote(image), timeout=max(remaining, 0.001))
                self.observer.detector_latency(name, time.perf_counter() - started)
                return scored
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
        point = self._operating_point(request)
        if len(uploads) > self.settings.max_batch_files:
            raise APIError(413, f"{len(uploads)} images is more than the limit of {self.settings.max_batch_files} "
                                "per request; split the batch.")
        return await self._predict(uploads, started, "/predict/batch", point)

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
        _, pictures, frames, _ = await self._pictures(uploads[0])
        plan = await asyncio.to_thread(self.scorer.plan, pictures, frames)
        probabilities, _, _ = await self._scores(plan.inputs)
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
        snapshot = await asyncio.to_thread(self.observer.drift_snapshot)
        return {**snapshot, "model": self.model, "challenger_trial": await asyncio.to_thread(self.trial.snapshot)}

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
        self.trial.correction(recent.answer, label)  # both models' accuracy, when a challenger also answered
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
        model, operating_points = self.model, self.scoring["thresholds"]
        if not self.ensemble:  # the version answering now (after a promote or a rollback), not the first one
            info = await next(iter(self.detectors.values())).info.remote()
            model, operating_points = info["identity"], info["operating_points"]
            members = [{**members[0], **info, "name": members[0]["name"], "detector": info["name"]}]
        combiner = self.combiner.to_dict()
        if self.combiner.kind == "weighted":
            combiner["weights"] = dict(zip(self.detectors, self.combiner.weights, strict=True))
        if self.combiner.kind == "stacking":
            combiner["coef"] = dict(zip(self.detectors, self.combiner.coef, strict=True))
        return {"model": model, "threshold": operating_points.get(self.settings.operating_point, [self.threshold])[0],
                "operating_point": self.settings.operating_point, "operating_points": operating_points,
                "combiner": combiner, "members": members,
                "challenger": ((await asyncio.to_thread(self.trial.snapshot)) or {}).get("challenger"),
                "limits": {**self.settings.limits(), "video_frames": self.scorer.num_frames}}

