"""What the ingress records about each answer: Prometheus metrics, drift against validation, the prediction
log, and the recent requests that feedback may refer to.

Metrics go through `ray.serve.metrics`, so Ray exports them with its own on every node's metrics port
(names get Ray's `ray_` prefix; counters a `_total` suffix). docs/serving.md lists them and Grafana queries.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from deepfake_platform.monitoring import DriftWindow, PredictionLog

PROBABILITY_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
FACE_BUCKETS = [0.5, 1.5, 2.5, 3.5, 5.5, 10.5]
# Drift is recomputed every this many answers (and on GET /monitoring): PSI and KS on 500 scores cost ~1 ms.
DRIFT_EVERY = 10
# Request ids remembered (without their image) per image kept: feedback on an older request must resend it.
KNOWN_PER_CACHED = 20


class ServeMetrics:
    """The app's metrics; created inside the replica (Serve tags them with deployment, replica, app)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram  # ray:

        self.requests = Counter("deepfake_requests", description="Answers by route, kind and verdict.",
                                tag_keys=("route", "kind", "verdict"))
        self.errors = Counter("deepfake_errors", description="Requests answered with an error, by HTTP status.",
                              tag_keys=("route", "status"))
        self.probability = Histogram("deepfake_fake_probability", description="Fake probability of each answer.",
                                     boundaries=PROBABILITY_BUCKETS, tag_keys=("kind",))
        self.detector_latency = Histogram("deepfake_detector_latency_seconds",
                                          description="Seconds one detector took for one picture, retries included.",
                                          boundaries=LATENCY_BUCKETS, tag_keys=("detector",))
        self.faces = Histogram("deepfake_faces_per_image", description="Faces found per image or video frame.",
                               boundaries=FACE_BUCKETS)
        self.no_face = Counter("deepfake_no_face", description="Pictures in which no face was found.")
        self.psi = Gauge("deepfake_drift_psi", description="Population stability index of the recent scores "
                                                           "against the validation scores.")
        self.ks_p = Gauge("deepfake_drift_ks_pvalue", description="Kolmogorov-Smirnov p-value, recent scores "
                                                                  "against the validation scores.")
        self.fake_rate = Gauge("deepfake_fake_rate", description="Share of recent answers labelled fake.")
        self.no_face_rate = Gauge("deepfake_no_face_rate", description="Share of recent answers without a face.")


@dataclass
class Recent:
    """A recent answer feedback may refer to: its summary, and the upload while the cache holds it."""

    answer: dict[str, Any]
    data: bytes | None
    name: str | None
    content_type: str


class Observer:
    """Metrics, drift window, prediction log and recent requests of one ingress replica."""

    def __init__(self, reference: list[float], *, window: int, log_dir: str, cache_items: int,
                 cache_bytes: int, model: dict[str, str] | None = None) -> None:
        self.metrics = ServeMetrics()
        self.drift = DriftWindow(reference, size=window)
        self.log = PredictionLog(log_dir) if log_dir else None
        self.cache_items, self.cache_bytes = cache_items, cache_bytes
        self.recent: OrderedDict[str, Recent] = OrderedDict()
        self.cached_bytes = 0
        self.images = 0
        self.lock = threading.Lock()
        self.answers = 0
        self.model = model

    def record(self, route: str, answer: dict[str, Any], data: bytes, name: str | None, content_type: str) -> str:
        """Count, log and remember one answer; its request id."""
        request_id = uuid.uuid4().hex
        kind, probability, label = answer["kind"], answer["fake_probability"], answer["label"]
        verdict = answer.get("verdict") or label or "not_applicable"
        self.metrics.requests.inc(tags={"route": route, "kind": kind, "verdict": verdict})
        if probability is not None:
            self.metrics.probability.observe(probability, tags={"kind": kind})
        pictures = answer["frames"] if kind == "video" else [answer]
        for picture in pictures:
            self.metrics.faces.observe(len(picture["faces"]))
            if picture["no_face"]:
                self.metrics.no_face.inc()
        self.drift.add(probability, label == "fake", bool(answer["no_face"]))
        summary = {"request_id": request_id, "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                   "route": route, "kind": kind, "verdict": verdict, "reason": answer.get("reason"),
                   "fake_probability": probability, "label": label, "threshold": answer["threshold"],
                   "operating_point": answer.get("operating_point"), "no_face": answer["no_face"],
                   "faces": [face["box"] for face in answer["faces"]], "model": answer.get("model") or self.model,
                   "latency_ms": answer.get("latency_ms")}
        if self.log is not None:
            self.log.write(summary)  # the decision only: never the image
        with self.lock:
            self.recent[request_id] = Recent(summary, data, name, content_type)
            self.cached_bytes += len(data)
            self.images += 1
            self._evict()
            self.answers += 1
            refresh = self.answers % DRIFT_EVERY == 0
        if refresh:
            self.drift_snapshot()
        return request_id

    def _evict(self) -> None:
        # The summaries of many requests stay known; their images, oldest first, go past either limit.
        while len(self.recent) > self.cache_items * KNOWN_PER_CACHED:
            _, oldest = self.recent.popitem(last=False)
            self._drop_image(oldest)
        for recent in self.recent.values():
            if self.images <= self.cache_items and self.cached_bytes <= self.cache_bytes:
                break
            self._drop_image(recent)

    def _drop_image(self, recent: Recent) -> None:
        if recent.data is not None:
            self.cached_bytes -= len(recent.data)
            self.images -= 1
            recent.data = None

    def side_record(self, request_id: str | None, line: dict[str, Any]) -> None:
        """Log an event about an answer already given (a challenger's comparison, a withdrawal); a comparison is
        also kept with the request, so a correction of it scores both models."""
        if self.log is not None:
            self.log.write(line)
        if request_id is not None:
            with self.lock:
                recent = self.recent.get(request_id)
                if recent is not None:  # a new dict: /feedback may be writing the old one in a thread
                    recent.answer = {**recent.answer, "shadow": line}

    def lookup(self, request_id: str) -> Recent | None:
        """The recent answer to `request_id`, or None when this replica never gave it (or forgot it)."""
        with self.lock:
            return self.recent.get(request_id)

    def error(self, route: str, status: int) -> None:
        """Count a request answered with an error."""
        self.metrics.errors.inc(tags={"route": route, "status": str(status)})

    def detector_latency(self, detector: str, seconds: float) -> None:
        """Record how long one detector took for one picture."""
        self.metrics.detector_latency.observe(seconds, tags={"detector": detector})

    def drift_snapshot(self) -> dict[str, Any]:
        """The drift figures now, also set on the gauges."""
        snapshot = self.drift.snapshot()
        for gauge, key in ((self.metrics.psi, "psi"), (self.metrics.ks_p, "ks_p"),
                           (self.metrics.fake_rate, "fake_rate"), (self.metrics.no_face_rate, "no_face_rate")):
            if snapshot[key] is not None:
                gauge.set(snapshot[key])
        return {**snapshot, "computed_at": time.time()}


# The ingress replica's observer (one per process), for the app's exception handlers to count errors.
_ACTIVE: list[Observer] = []


def activate(observer: Observer) -> None:
    """Make `observer` the one this process's error handlers report to."""
    _ACTIVE[:] = [observer]


def count_error(route: str, status: int) -> None:
    """Count a request answered with an error, when an observer is active in this process."""
    if _ACTIVE:
        _ACTIVE[0].error(route, status)
