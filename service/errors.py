"""Every error leaves the service as ``{"error": "one line"}`` with a 4xx status (5xx only for our own bugs).

The same body serves the v1 API and the Open Inference Protocol v2, whose REST spec asks for exactly
``{"error": <string>}``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger("lgm.service")


class APIError(Exception):
    """A request the service refuses: ``status`` (4xx) and a one-line ``message`` naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PayloadTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the {limit}-byte cap (max_request_bytes)")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if errs:
            e = errs[0]
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            msg = f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid request"))
        else:
            msg = "invalid request"
        return error_response(422, msg)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # our bug, never the user's input
        log.exception("unhandled error")
        return error_response(500, f"internal error ({type(exc).__name__})")
