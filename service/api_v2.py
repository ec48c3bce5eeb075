"""KServe Open Inference Protocol v2 over REST (kserve/open-inference-protocol, ``required_api.md``), so KServe and
Triton clients work unchanged.

Health answers 200 when true and 400 when false (the spec's "4xx means false"); errors are ``{"error": "..."}``.
One FP32 input of shape [N, C, H, W] in [0, 1]; outputs ``class`` (INT64 [N]), ``probabilities`` (FP32 [N, K]),
``log_likelihood``, ``abnormality_score``, ``threshold`` (FP32 [N]) and ``is_adversarial`` (BOOL [N]).
Metadata and inference need X-API-Key when keys are configured; health routes never do.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name per-app models.
from typing import Any

from fastapi import Depends, FastAPI, Request
from starlette.responses import JSONResponse

from service import schemas
from service.errors import APIError
from service.payloads import oip_outputs, oip_tensor
from service.schemas import OIP_OUTPUTS
from service.state import INLINE_DECODE_BYTES, ServiceState, add_route, get_state, get_state_of, ready_engine
from service.stateful.setup import reveal_outputs, round_outputs, screen

SERVER_NAME = "lgm-detect"
TAGS = ["v2 (Open Inference Protocol)"]


def _check_model(st: ServiceState, name: str, version: str | None = None) -> None:
    if name != st.settings.model_name:
        raise APIError(404, f"unknown model {name!r}; this server serves {st.settings.model_name!r}")
    if version is not None and version != st.model_version:
        raise APIError(
            404, f"unknown version {version!r} of {name!r}; the loaded version is {st.model_version!r}"
        )


def _version(request: Request) -> str | None:
    """The ``{version}`` of the ``/versions/{version}`` twin of a route (undocumented: same answers)."""
    return request.path_params.get("version")


def register(app: FastAPI) -> None:
    st = get_state_of(app)
    InferRequest = st.models.infer  # noqa: N806 - a pydantic model, named as a class
    not_ready = {400: {"model": schemas.OIPReady, "description": "not ready"}}

    async def known_model(request: Request, name: str) -> None:
        """404 for another model's name or version, before the body is looked at."""
        _check_model(st, name, _version(request))

    known = [Depends(known_model)]

    async def live() -> dict[str, bool]:
        return {"live": True}

    add_route(
        app,
        "get",
        "/v2/health/live",
        live,
        guarded=False,
        tags=TAGS,
        response_model=schemas.OIPLive,
        summary="Server live",
    )

    async def ready(request: Request) -> JSONResponse:
        ok = get_state(request).ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 400)

    add_route(
        app,
        "get",
        "/v2/health/ready",
        ready,
        guarded=False,
        tags=TAGS,
        response_model=schemas.OIPReady,
        responses=not_ready,
        summary="Server ready",
    )

    async def model_ready(request: Request, name: str) -> JSONResponse:
        _check_model(st, name, _version(request) if st.ready else None)
        return JSONResponse({"name": name, "ready": st.ready}, status_code=200 if st.ready else 400)

    kw: dict[str, Any] = dict(guarded=False, tags=TAGS, response_model=schemas.OIPModelReady)
    add_route(
        app,
        "get",
        "/v2/models/{name}/ready",
        model_ready,
        summary="Model ready",
        responses={400: {"model": schemas.OIPModelReady, "description": "not ready"}, **schemas.errors(404)},
        **kw,
    )
    add_route(
        app, "get", "/v2/models/{name}/versions/{version}/ready", model_ready, include_in_schema=False, **kw
    )

    async def server_metadata() -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("lgm-detect")
        except PackageNotFoundError:
            v = "unknown"
        return {"name": SERVER_NAME, "version": v, "extensions": []}

    add_route(
        app,
        "get",
        "/v2",
        server_metadata,
        tags=TAGS,
        response_model=schemas.OIPServerMetadata,
        responses=schemas.errors(401),
        summary="Server metadata",
    )

    async def model_metadata(request: Request, name: str) -> dict[str, Any]:
        _, engine, _ = ready_engine(request)
        c, h, w = engine.input_shape
        out_shapes = {"probabilities": [-1, len(engine.class_names)]}
        return {
            "name": name,
            "versions": [st.model_version],
            "platform": "pytorch",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}],
            "outputs": [
                {"name": nm, "datatype": dt, "shape": out_shapes.get(nm, [-1])}
                for nm, dt in OIP_OUTPUTS.items()
            ],
        }

    kw = dict(
        tags=TAGS,
        checks=known,
        response_model=schemas.OIPModelMetadata,
        responses=schemas.errors(401, 404, 503),
    )
    add_route(app, "get", "/v2/models/{name}", model_metadata, summary="Model metadata", **kw)
    add_route(
        app, "get", "/v2/models/{name}/versions/{version}", model_metadata, include_in_schema=False, **kw
    )

    async def infer(request: Request, name: str, body: InferRequest) -> JSONResponse:  # type: ignore[valid-type]
        """One FP32 tensor [N, C, H, W] in [0, 1], flat or nested ``data``; optional ``outputs`` picks outputs."""
        _, _, batcher = ready_engine(request)
        tensor = body.inputs[0]  # type: ignore[attr-defined]
        n = tensor.shape[0]
        if n * st.models.shape[0] * st.models.shape[1] * st.models.shape[2] * 4 > INLINE_DECODE_BYTES:
            from starlette.concurrency import run_in_threadpool

            x = await run_in_threadpool(oip_tensor, tensor)
        else:
            x = oip_tensor(tensor)
        verdict = await screen(request, st.guard, st.settings, x)  # 429 when refused (query_policy=block)
        res = await batcher.submit(x)
        st.metrics.count_scored(res.is_adversarial)
        out: dict[str, Any] = {"model_name": name, "model_version": st.model_version}
        if body.id is not None:  # type: ignore[attr-defined]
            out["id"] = body.id  # type: ignore[attr-defined]
        out["parameters"] = {"client_flagged": verdict.flagged}
        names = [o.name for o in body.outputs] if body.outputs is not None else list(OIP_OUTPUTS)  # type: ignore[attr-defined]
        reveal, digits = st.settings.query_reveal, st.settings.query_round_digits
        out["outputs"] = round_outputs(oip_outputs(res, reveal_outputs(names, reveal)), reveal, digits)
        return JSONResponse(out)

    infer.body_hint = (
        '{"inputs": [{"name": "input", "shape": [N, C, H, W], "datatype": "FP32", "data": [...]}]}'  # type: ignore[attr-defined]
    )
    kw = dict(
        tags=TAGS,
        checks=known,
        response_model=None,
        responses={
            200: {"model": schemas.OIPInferResponse},
            **schemas.errors(401, 404, 413, 415, 422, 429, 503),
        },
    )
    add_route(app, "post", "/v2/models/{name}/infer", infer, summary="Inference", **kw)
    add_route(app, "post", "/v2/models/{name}/versions/{version}/infer", infer, include_in_schema=False, **kw)
