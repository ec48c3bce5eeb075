"""Prometheus metrics, one registry per app (so several apps in one process, as in the tests, never collide).

- ``lgm_requests_total{route,method,status}``: requests by route template (never the raw path) and status.
- ``lgm_request_duration_seconds{route}``: latency histogram.
- ``lgm_requests_in_flight``: requests being handled now.
- ``lgm_batch_size``: images per forward pass (shows the micro-batcher coalescing).
- ``lgm_forward_duration_seconds``: time of one forward pass on the worker thread.
- ``lgm_images_total`` and ``lgm_flagged_inputs_total``: images scored, and those flagged as adversarial.
- ``lgm_engine_info{engine}``: the engine that scores the answers (``torch`` or ``onnxruntime``), once loaded.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.routing import Match

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "lgm_requests", "HTTP requests by route and status", ("route", "method", "status"), registry=r
        )
        self.latency = Histogram(
            "lgm_request_duration_seconds",
            "HTTP request latency",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("lgm_requests_in_flight", "HTTP requests being handled", registry=r)
        self.batch_size = Histogram(
            "lgm_batch_size", "images per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.forward_seconds = Histogram(
            "lgm_forward_duration_seconds", "time of one forward pass", buckets=LATENCY_BUCKETS, registry=r
        )
        self.images = Counter("lgm_images", "images scored", registry=r)
        self.flagged = Counter("lgm_flagged_inputs", "images flagged as adversarial", registry=r)
        self.engine = Info("lgm_engine", "the engine that scores the answers", registry=r)

    def count_scored(self, is_adversarial: Any) -> None:
        """Count the images a request had scored, and those flagged (``is_adversarial``: (N,) bools)."""
        self.images.inc(len(is_adversarial))
        n_flagged = int(is_adversarial.sum())
        if n_flagged:
            self.flagged.inc(n_flagged)

    def set_engine(self, name: str) -> None:
        """Name the engine that scores (``lgm_engine_info{engine="..."} 1``)."""
        self.engine.info({"engine": name})

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.forward_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _route_label(scope: dict) -> str:
    """The route template (``/v2/models/{name}/infer``), also for requests answered before routing (413)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    app = scope.get("app")
    for r in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = r.matches(scope)
        if match == Match.FULL:
            return getattr(r, "path", "unmatched")
    return "unmatched"


class MetricsMiddleware:
    """Pure ASGI middleware: counts, times and tracks in-flight HTTP requests by route template."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m.in_flight.dec()
            label = _route_label(scope)
            m.requests.labels(label, scope.get("method", ""), str(status)).inc()
            m.latency.labels(label).observe(time.perf_counter() - t0)
