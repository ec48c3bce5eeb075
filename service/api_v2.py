"""KServe Open Inference Protocol v2 over REST (kserve/open-inference-protocol, ``required_api.md``), so KServe and
Triton clients work unchanged.

Health answers 200 when true and 400 when false (the spec's "4xx means false"); errors are ``{"error": "..."}``.
One input of shape [N, C, H, W], FP32 in [0, 1] or UINT8 in 0..255; outputs ``class`` (INT64 [N]),
``probabilities`` (FP32 [N, K]), ``log_likelihood``, ``abnormality_score``, ``threshold`` (FP32 [N]) and
``is_adversarial`` (BOOL [N]). The binary tensor data extension (``service/oip_binary.py``) is spoken both ways.
Metadata and inference need X-API-Key when keys are configured; health routes never do. The request path past
parsing (``service/oip.py``) is the one gRPC uses too.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name per-app models.
import math
from typing import Any

from fastapi import Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from service import oip, oip_binary, schemas
from service.schemas import OIP_OUTPUTS
from service.state import INLINE_DECODE_BYTES, ServiceState, add_route, get_state, get_state_of
from service.stateful.setup import request_client, reveal_outputs, round_tensors, screened

TAGS = ["v2 (Open Inference Protocol)"]
# The inference response: JSON, or (binary tensor data extension) a JSON header followed by raw output bytes.
BINARY_RESPONSE: dict[str, Any] = {
    "model": schemas.OIPInferResponse,
    "description": "the outputs; with binary outputs asked for, a JSON header followed by their bytes",
    "headers": {
        "Inference-Header-Content-Length": {
            "description": "length of the JSON header (binary tensor data extension; only with binary outputs)",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


def _check_model(st: ServiceState, name: str, version: str | None = None) -> None:
    oip.check_model(st, name, version)


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
        return {"name": oip.SERVER_NAME, "version": oip.server_version(), "extensions": oip.EXTENSIONS}

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
        return oip.model_metadata(st, name)

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

    async def run(request: Request, name: str, body: Any, raws: list[bytes | None]) -> Response:
        """Tensor -> batcher -> the outputs asked for, JSON or binary as asked."""
        oip.ready(st)
        oip.check_model(st, name, body.model_version)
        tensor, raw = body.inputs[0], raws[0]
        shape = list(tensor.shape)
        if raw is not None:
            x = oip.from_raw(raw, tensor.datatype, shape)
        elif math.prod(shape) * 4 > INLINE_DECODE_BYTES:  # large: convert on a thread, off the event loop
            x = await run_in_threadpool(oip.from_values, tensor.data, tensor.datatype, shape)
        else:
            x = oip.from_values(tensor.data, tensor.datatype, shape)
        reveal, digits = st.settings.query_reveal, st.settings.query_round_digits
        asked = [o.name for o in body.outputs] if body.outputs is not None else list(OIP_OUTPUTS)
        names = reveal_outputs(asked, reveal)
        binary = oip_binary.binary_flags(body, names)
        verdict, res = await screened(  # 429 when refused (query_policy=block)
            st.guard,
            lambda: request_client(request, st.settings, st.guard.trusted_proxies),
            x,
            oip.score(st, x),
        )
        header: dict[str, Any] = {"model_name": name, "model_version": st.model_version}
        if body.id is not None:
            header["id"] = body.id
        header["parameters"] = {"client_flagged": verdict.flagged}
        return oip_binary.response(header, round_tensors(oip.outputs(res, names), reveal, digits), binary)

    async def infer(request: Request, name: str, body: InferRequest) -> Response:  # type: ignore[valid-type]
        """One tensor [N, C, H, W]: FP32 in [0, 1] or UINT8 in 0..255, ``data`` flat or nested; ``outputs``
        picks outputs. Any ``Content-Type`` is read as JSON.

        **Binary tensor data extension**: send the JSON header's byte length in the
        `Inference-Header-Content-Length` header, then the raw little-endian tensor bytes; the input names their
        length in `parameters.binary_data_size` and leaves out `data`. Outputs come back as raw bytes after a
        JSON header (whose length is the response's `Inference-Header-Content-Length`) when an output asks with
        `parameters.binary_data: true` or the request with `parameters.binary_data_output: true`.
        """
        return await run(request, name, body, [None])

    async def infer_binary(request: Request, name: str) -> Response:
        """The same, for a body under the binary extension (routed here by ``oip_binary.json_or_binary``)."""
        oip.ready(st)
        head, rest = oip_binary.split_body(await request.body(), request.headers[oip_binary.HEADER])
        body = oip_binary.parse_header(st.models.infer_binary, head)
        return await run(request, name, body, oip_binary.raw_inputs(body.inputs, rest))

    kw = dict(
        tags=TAGS,
        checks=known,
        response_model=None,
        responses={200: BINARY_RESPONSE, **schemas.errors(400, 401, 404, 413, 422, 429, 503)},
        route_class_override=oip_binary.json_or_binary(infer_binary),
    )
    add_route(app, "post", "/v2/models/{name}/infer", infer, summary="Inference", **kw)
    add_route(app, "post", "/v2/models/{name}/versions/{version}/infer", infer, include_in_schema=False, **kw)
