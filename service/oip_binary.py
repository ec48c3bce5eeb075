"""The binary tensor data extension of the Open Inference Protocol over HTTP (Triton's ``binary_tensor_data``,
also spoken by KServe's client since 2024), and the content negotiation of the inference route.

A binary request is a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensor bytes; every
input that names ``parameters.binary_data_size`` takes that many of them, in input order, and together they must
use up the body exactly. A response carries outputs as raw bytes when the request asks for it (an output's
``parameters.binary_data``, else the request's ``parameters.binary_data_output``): such an output's JSON names
its ``binary_data_size`` and drops ``data``, its bytes follow the JSON header, and the response carries the
header's length in ``Inference-Header-Content-Length``.

A request without that header is a JSON document whatever its ``Content-Type`` says (tritonclient sends none,
KServe's client sends ``application/octet-stream`` with binary inputs): stock clients work unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.errors import APIError
from service.oip import OutputTensor
from service.oip_schemas import binary_data_size
from service.state import _is_json, content_type

HEADER = "Inference-Header-Content-Length"


def split_body(body: bytes, header_length: str) -> tuple[bytes, bytes]:
    """(JSON header, the bytes after it); 400 when the length is not a number or runs past the body."""
    try:
        n = int(header_length)
    except ValueError:
        raise APIError(400, f"{HEADER} must be a byte count, got {header_length[:40]!r}") from None
    if n < 0 or n > len(body):
        raise APIError(400, f"{HEADER} is {n} but the body has {len(body)} bytes")
    return body[:n], body[n:]


def parse_header(model: type[BaseModel], raw: bytes) -> Any:
    """Validate a JSON document against ``model``; problems become the same one-line 422s as any JSON body."""
    if not raw.strip():
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        doc = json.loads(raw)
    except UnicodeDecodeError:
        raise APIError(422, "malformed JSON: not UTF-8 text") from None
    except RecursionError:
        raise APIError(422, "malformed JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise APIError(422, f"malformed JSON: {exc.msg} at position {exc.pos}") from None
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        errs = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errs) from None


def raw_inputs(inputs: list[Any], rest: bytes) -> list[bytes | None]:
    """The bytes of each input that names ``binary_data_size`` (None for one with JSON ``data``), in order."""
    out: list[bytes | None] = []
    at = 0
    for i, t in enumerate(inputs):
        size = binary_data_size(t.parameters)
        if size is None:
            out.append(None)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise APIError(422, f"inputs[{i}].parameters.binary_data_size must be a byte count, got {size!r}")
        if at + size > len(rest):
            raise APIError(
                400,
                f"inputs[{i}] has binary_data_size {size} but only {len(rest) - at} bytes follow the header",
            )
        out.append(rest[at : at + size])
        at += size
    if at != len(rest):
        raise APIError(400, f"{len(rest) - at} bytes after the header belong to no input (binary_data_size)")
    return out


def binary_flags(body: Any, names: list[str]) -> list[bool]:
    """Which outputs go as raw bytes: an output's ``binary_data``, else the request's ``binary_data_output``."""
    default = bool(getattr(body.parameters, "binary_data_output", None))
    asked = {o.name: getattr(o.parameters, "binary_data", None) for o in body.outputs or ()}
    return [default if asked.get(nm) is None else bool(asked[nm]) for nm in names]


def response(header: dict[str, Any], tensors: list[OutputTensor], binary: list[bool]) -> Response:
    """The inference response: plain JSON, or a JSON header followed by the binary outputs' bytes."""
    items, raws = [], []
    for t, b in zip(tensors, binary, strict=True):
        item: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if b:
            raw = t.raw()
            item["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            item["data"] = t.array.tolist()
        items.append(item)
    header = {**header, "outputs": items}
    if not raws:
        return JSONResponse(header)
    head = json.dumps(header, separators=(",", ":")).encode()
    return Response(
        b"".join([head, *raws]),
        media_type="application/octet-stream",
        headers={HEADER: str(len(head))},
    )


def json_or_binary(binary_endpoint: Callable[..., Any]) -> type[APIRoute]:
    """A route class for the inference route: a request with ``Inference-Header-Content-Length`` goes to
    ``binary_endpoint`` (same path, guards and responses; it reads the body itself); any other is validated as
    JSON by FastAPI against the endpoint's body model, whatever its ``Content-Type``."""

    class JSONOrBinaryRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Any]:
            json_handler = super().get_route_handler()
            binary_route = APIRoute(
                self.path,
                binary_endpoint,
                methods=list(self.methods),
                dependencies=self.dependencies,
                response_class=self.response_class,
                dependency_overrides_provider=self.dependency_overrides_provider,
            )
            binary_handler = binary_route.get_route_handler()

            async def handler(request: Request) -> Response:
                if HEADER.lower() in request.headers:
                    return await binary_handler(request)
                if not _is_json(content_type(request)):  # tritonclient sends none; parse the body as JSON
                    scope = dict(request.scope)
                    scope["headers"] = [
                        (k, v) for k, v in request.scope["headers"] if k != b"content-type"
                    ] + [(b"content-type", b"application/json")]
                    request = Request(scope, request.receive)
                return await json_handler(request)

            return handler

    return JSONOrBinaryRoute
