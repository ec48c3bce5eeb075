"""Every error leaves the service as ``{"error": "one line"}`` with a 4xx status (5xx only for our own bugs).

The same body serves the v1 API and the Open Inference Protocol v2, whose REST spec asks for exactly
``{"error": <string>}``. FastAPI's request validation (against the models in ``service/schemas.py``) is turned
into one line naming the first problem and where it is, e.g. ``instances[0].array[3]: 7 values, expected 8``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from service.schemas import OIP_OUTPUTS, TAGS

log = logging.getLogger("lgm.service")


class APIError(Exception):
    """A request the service refuses: ``status`` (4xx) and a one-line ``message`` naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PayloadTooLarge(HTTPException):
    """Raised while a body is read past the cap; an HTTPException, so FastAPI's body reading passes it on."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the {limit}-byte cap (max_request_bytes)")
        self.message = str(self.detail)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# -- validation errors -> one line ---------------------------------------------------------------------------------
_JSON_TYPES = {
    "dict": "an object",
    "list": "a list",
    "str": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "NoneType": "null",
}
_PIXEL_FIELDS = ("array", "data")


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value).__name__, type(value).__name__)


def _where(loc: Sequence[Any]) -> str:
    """('body', 'instances', 0, 'array instance', 'array', 3) -> 'instances[0].array[3]'."""
    out = ""
    for part in loc:
        if part == "body" and not out or part in TAGS:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(error: dict[str, Any], body_hint: str | None = None) -> str:
    """One pydantic/FastAPI validation error -> the one-line message the client gets."""
    kind = error.get("type", "")
    loc = [p for p in error.get("loc", ()) if p not in TAGS]
    where = _where(loc)
    ctx = error.get("ctx") or {}
    value = error.get("input")
    names = [p for p in loc if isinstance(p, str) and p != "body"]
    field = names[-1] if names else ""
    in_pixels = any(n in _PIXEL_FIELDS for n in names)
    if kind == "json_invalid":
        return f"malformed JSON: {ctx.get('error', 'invalid')} at position {loc[-1] if len(loc) > 1 else 0}"
    if kind == "missing" and not names:
        return "empty request body; send JSON" + (f" like {body_hint}" if body_hint else "")
    if kind in ("model_attributes_type", "dict_type", "model_type") and not names:
        return (
            f"JSON body must be an object{f' like {body_hint}' if body_hint else ''}, got {_json_type(value)}"
        )
    if kind == "missing":
        parent = _where(loc[:-1])
        return f"{parent} lacks {field!r}" if parent else f"missing field {field!r}"
    if kind == "extra_forbidden":
        if field != "files" and loc[:1] != ["body"] or len(names) > 1:
            return f"{_where(loc[:-1])}: unexpected field {field!r}"
        return f"unexpected field {field!r}" + (
            "; send images in the repeatable field 'files'" if _is_form(error) else ""
        )
    if kind == "too_short" and field in ("instances", "files", "inputs") and ctx.get("actual_length") == 0:
        return (
            "empty batch: send at least one image"
            if field != "inputs"
            else "inputs must hold exactly one tensor"
        )
    if kind == "too_long" and field in ("instances", "files"):
        n = ctx.get("actual_length") or len(value) if isinstance(value, list) else "more"
        return f"too many images: {n} in one request, the cap is {ctx.get('max_length')} (max_images)"
    if kind == "too_long" and field == "inputs":
        return '"inputs" must be a list holding exactly one tensor'
    if kind in ("too_short", "too_long") and in_pixels:
        n = ctx.get("actual_length", len(value) if isinstance(value, list) else "?")
        want = ctx.get("min_length", ctx.get("max_length"))
        return f"{where}: {n} values, expected {want} (the array's shape must be the model's input shape)"
    if kind in ("too_short", "too_long") and field == "shape":
        return f"{where} must be [N, C, H, W]"
    if kind == "finite_number":
        return f"{where}: values must be finite (found NaN or infinity)"
    if kind in ("greater_than_equal", "less_than_equal") and in_pixels:
        span = "0..255" if "UINT8" in error.get("loc", ()) else "[0, 1]"
        return f"{where}: values must lie in {span} (found {value!r})"
    if kind in ("greater_than_equal", "less_than_equal") and field == "shape":
        if ctx.get("ge") == 1:
            return "empty batch: send at least one image"
        return f"too many images: {value} in one request, the cap is {ctx.get('le')} (max_images)"
    if kind in ("float_type", "float_parsing") and in_pixels:
        return f"{where}: values must be numbers, got {_json_type(value)}{'s' if isinstance(value, bool) else ''}"
    if kind == "literal_error" and field == "datatype":
        return f"{where} is {value!r}; this model takes FP32"
    if kind == "literal_error" and "outputs" in names:
        return f"unknown output {value!r}; outputs are {', '.join(OIP_OUTPUTS)}"
    if kind == "literal_error" and "shape" in names:
        return f"{_where(loc[:-1])}: {value!r} at {where}; expected [N, C, H, W] with {ctx.get('expected')} there"
    if kind == "none_required" and field == "binary_data_size":
        return f"{where} needs the binary extension: send the Inference-Header-Content-Length header"
    if kind == "list_type":
        return f"{where} must be a list, got {_json_type(value)}"
    if kind == "string_type":
        return f"{where} must be a string, got {_json_type(value)}"
    if kind == "value_error" and field == "files":
        return f"{where} is a text field, not a file; send images in the repeatable field 'files'"
    if kind == "value_error":
        err = ctx.get("error")
        return str(err) if err is not None else str(error.get("msg"))
    msg = str(error.get("msg", "invalid"))
    return f"{where}: {msg}" if where else msg


def _is_form(error: dict[str, Any]) -> bool:
    return not isinstance(error.get("input"), (dict, list, str, int, float, bool, type(None)))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, getattr(exc, "headers", None))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, (UnicodeDecodeError, RecursionError)):
            # FastAPI's JSON parsing failed before validation: undecodable text or nesting past the parser
            what = "not UTF-8 text" if isinstance(cause, UnicodeDecodeError) else "nested too deeply"
            return error_response(422, f"malformed JSON: {what}")
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        hint = getattr(request.scope.get("endpoint"), "body_hint", None)
        return error_response(422, describe(errs[0], hint) if errs else "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # our bug, never the user's input
        log.exception("unhandled error")
        return error_response(500, f"internal error ({type(exc).__name__})")
