"""KServe Open Inference Protocol v2 over REST (kserve/open-inference-protocol, ``required_api.md``), so KServe and
Triton clients work unchanged.

Health answers 200 when true and 400 when false (the spec's "4xx means false"); errors are ``{"error": "..."}``.
One FP32 input ``input`` of shape [N, C, H, W] in [0, 1]; outputs ``class`` (INT64 [N]), ``probabilities``
(FP32 [N, K]), ``log_likelihood``, ``abnormality_score``, ``threshold`` (FP32 [N]) and ``is_adversarial``
(BOOL [N]).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse

from service import schemas
from service.errors import APIError
from service.payloads import OIP_OUTPUTS, load_json, oip_input, oip_outputs
from service.state import RouteTable, ServiceState, get_state, parse_off_loop_if_large, ready_engine

SERVER_NAME = "lgm-detect"
# Metadata and inference need X-API-Key when keys are configured; health routes (guarded=False) never do.
ROUTES = RouteTable(tags=["v2 (Open Inference Protocol)"])
register = ROUTES.register


def _check_model(st: ServiceState, name: str, version: str | None = None) -> None:
    if name != st.settings.model_name:
        raise APIError(404, f"unknown model {name!r}; this server serves {st.settings.model_name!r}")
    if version is not None and version != st.model_version:
        raise APIError(
            404, f"unknown version {version!r} of {name!r}; the loaded version is {st.model_version!r}"
        )


@ROUTES.route("get", "/v2/health/live", guarded=False, summary="Server live")
async def live() -> dict[str, bool]:
    return {"live": True}


@ROUTES.route(
    "get",
    "/v2/health/ready",
    guarded=False,
    summary="Server ready",
    responses={400: {"description": "not ready"}},
)
async def ready(request: Request) -> JSONResponse:
    ok = get_state(request).ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 400)


@ROUTES.route(
    "get",
    "/v2/models/{name}/ready",
    guarded=False,
    summary="Model ready",
    responses={400: {"description": "not ready"}, 404: {"model": schemas.ErrorBody}},
)
@ROUTES.route("get", "/v2/models/{name}/versions/{version}/ready", guarded=False, include_in_schema=False)
async def model_ready(request: Request, name: str, version: str | None = None) -> JSONResponse:
    st = get_state(request)
    _check_model(st, name, version if st.ready else None)
    return JSONResponse({"name": name, "ready": st.ready}, status_code=200 if st.ready else 400)


@ROUTES.route("get", "/v2", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("lgm-detect")
    except PackageNotFoundError:
        v = "unknown"
    return {"name": SERVER_NAME, "version": v, "extensions": []}


@ROUTES.route(
    "get",
    "/v2/models/{name}",
    response_model=schemas.OIPModelMetadata,
    responses=schemas.ERRORS,
    summary="Model metadata",
)
@ROUTES.route(
    "get",
    "/v2/models/{name}/versions/{version}",
    response_model=schemas.OIPModelMetadata,
    include_in_schema=False,
)
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    st, engine, _ = ready_engine(request)
    _check_model(st, name, version)
    c, h, w = engine.input_shape
    k = len(engine.class_names)
    out_shapes = {"probabilities": [-1, k]}
    return {
        "name": name,
        "versions": [st.model_version],
        "platform": "pytorch",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [
            {"name": nm, "datatype": dt, "shape": out_shapes.get(nm, [-1])} for nm, dt in OIP_OUTPUTS.items()
        ],
    }


@ROUTES.route(
    "post",
    "/v2/models/{name}/infer",
    response_model=None,
    responses={200: {"model": schemas.OIPInferResponse}, **schemas.ERRORS},
    openapi_extra=schemas.INFER_BODY,
    summary="Inference",
)
@ROUTES.route(
    "post", "/v2/models/{name}/versions/{version}/infer", response_model=None, include_in_schema=False
)
async def infer(request: Request, name: str, version: str | None = None) -> JSONResponse:
    """One FP32 tensor [N, C, H, W] in [0, 1], flat or nested ``data``; optional ``outputs`` picks outputs."""
    st, engine, batcher = ready_engine(request)
    _check_model(st, name, version)
    body = await request.body()
    x, names, req_id = await parse_off_loop_if_large(
        lambda: oip_input(load_json(body), engine.input_shape, st.settings.max_images), len(body)
    )
    res = await batcher.submit(x)
    st.metrics.count_scored(res.is_adversarial)
    out: dict[str, Any] = {"model_name": name, "model_version": st.model_version}
    if req_id is not None:
        out["id"] = req_id
    out["outputs"] = oip_outputs(res, names)
    return JSONResponse(out)
