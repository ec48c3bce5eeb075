"""The FastAPI application: ``create_app(settings)``.

Start-up (the lifespan): load the detector once (unless one is handed in, as ``lgm serve`` does after checking
the artifact), make the engine that scores (``--engine``: ``torch``, or ``onnxruntime`` over the detector exported
in memory, ``service/onnx_engine.py``), set its thread count, warm up on the worker thread, start the
micro-batcher, then report ready. Shutdown (uvicorn's SIGTERM handling): stop accepting, let in-flight requests finish (up to
``graceful_timeout``), drain the batcher, stop the worker thread.

With ``grpc_port`` set (default 8001), the lifespan also starts this worker's gRPC server (OIP v2 and
``grpc.health.v1``) on the same engine and batcher.

Routes: ``/`` (web page), ``/static/*``, ``/healthz``, ``/readyz``, ``/metrics``, ``/docs``, ``/v1/*`` and the Open
Inference Protocol ``/v2/*``. With API keys configured, ``/v1/*`` and ``/v2`` metadata and inference need
``X-API-Key``; health, metrics, the page and the docs stay open.

Run it without the CLI: ``LGM_ARTIFACT=DIR uvicorn --factory service.app:create_app``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, JSONResponse, Response

from detector.scoring import Detector
from service import api_v1, api_v2, schemas
from service.batcher import MicroBatcher
from service.engine import model_version
from service.errors import install_error_handlers
from service.limits import BodySizeLimit
from service.metrics import MetricsMiddleware
from service.onnx_engine import create_engine, prepare
from service.schemas import APIModels
from service.settings import ServeSettings
from service.state import ServiceState, get_state
from service.stateful.setup import build_guard
from training.artifacts import load_meta

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("uvicorn.error")  # uvicorn configures this one

DESCRIPTION = """
Classifies images with an L-GM network (Wan et al., CVPR 2018) and scores how abnormal each input is. The
detector turns several statistics of the input (its feature's log-likelihood under the predicted class's
Gaussian, the boundary statistic, earlier layers' likelihoods) into one combined score: in clean mode the largest
surprise -log P_clean over them. An input is flagged as adversarial when that score is above the predicted
class's threshold, set at the target false-positive rate on clean calibration inputs; `abnormality_score` is the
share of clean calibration inputs of that class with a lower score. `GET /v1/model` shows the thresholds.

```
curl -F files=@digit.png http://localhost:8000/v1/predict
curl -H 'Content-Type: application/json' -d '{"instances": [{"b64": "'$(base64 -w0 digit.png)'"}]}' \\
     http://localhost:8000/v1/predict
curl http://localhost:8000/v1/model
curl -d '{"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0, ...]}]}' \\
     http://localhost:8000/v2/models/lgm/infer
```
Errors are `{"error": "..."}`. With API keys configured, send `X-API-Key`.
"""


async def start_grpc(state: ServiceState):  # noqa: ANN201 - grpc is imported only when it is wanted
    """This worker's gRPC server (``service/grpc_server.py``) on ``grpc_port``, started."""
    from service.grpc_server import GRPCServer

    server = GRPCServer(state)
    await server.start()
    return server


def create_app(
    settings: ServeSettings | None = None, detector: Detector | None = None, onnx_model: bytes | None = None
) -> FastAPI:
    """Build the app. ``detector``: an already loaded detector (else loaded from ``settings.artifact``);
    ``onnx_model``: its export for ``--engine onnxruntime`` (else exported in the lifespan)."""
    settings = settings or ServeSettings()
    if detector is not None:
        shape = detector.input_shape
    elif (
        settings.artifact is not None
    ):  # the request models need the input shape before the lifespan loads it
        shape = tuple(int(v) for v in load_meta(settings.artifact)["arch"]["input_shape"])
    else:
        raise ValueError("no artifact: pass `lgm serve DIR` or set LGM_ARTIFACT")
    state = ServiceState(settings=settings, models=APIModels.build(shape, settings.max_images))  # type: ignore[arg-type]
    state.guard = build_guard(settings, state.metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        det = detector
        if det is None:
            det = await run_in_threadpool(Detector.load, settings.artifact, settings.detector_device())
        name, model = await run_in_threadpool(
            prepare, settings.engine, settings.resolved_engine(), det, onnx_model
        )
        engine = create_engine(name, det, settings.torch_threads(), model)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(engine.executor, engine.warm_up, settings.max_batch_size)
        batcher = MicroBatcher(
            engine.score,
            engine.executor,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            enabled=settings.batching,
            on_batch=state.metrics.observe_batch,
        )
        batcher.start()
        state.engine, state.batcher, state.model_version = engine, batcher, model_version(det.meta)
        state.metrics.set_engine(engine.name)
        grpc_server = await start_grpc(state) if settings.grpc_port else None
        state.ready = True
        log.info(
            "lgm: model %s version %s on %s, engine %s with %d thread(s), batching %s (max %d images, %.1f ms)",
            settings.model_name,
            state.model_version,
            det.device,
            engine.name,
            engine.threads,
            "on" if settings.batching else "off",
            settings.max_batch_size,
            settings.max_wait_ms,
        )
        try:
            yield
        finally:
            state.ready = False
            if grpc_server is not None:
                await grpc_server.stop(settings.graceful_timeout)
            await batcher.stop()
            engine.shutdown()
            state.guard.close()

    app = FastAPI(
        title="L-GM adversarial-example detector",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.lgm = state
    install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", response_model=schemas.Health, tags=["health"], summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/readyz",
        response_model=schemas.Ready,
        tags=["health"],
        summary="Model loaded and warmed up",
        responses=schemas.errors(503),
    )
    async def readyz(request: Request) -> JSONResponse:
        st = get_state(request)
        if st.ready:
            detail = st.guard.health() if st.guard is not None else None  # degraded, still serving
            return JSONResponse({"status": "ready"} | ({"detail": detail} if detail else {}))
        return JSONResponse({"error": "model not loaded yet"}, status_code=503)

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        body, ctype = get_state(request).metrics.render()
        return Response(body, media_type=ctype)

    api_v1.register(app)
    api_v2.register(app)

    # Middleware: the last added runs first. Metrics see everything (413s included); the size cap runs before
    # any body is read.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
