"""What the routes share: the settings, the engine and batcher once loaded, the metrics; and how routes are added
(the API-key guard, the content-type guard, one operation taking JSON or multipart)."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from starlette.responses import Response

from service.batcher import MicroBatcher
from service.engine import BatchResult, Engine
from service.errors import APIError
from service.metrics import Metrics
from service.schemas import APIModels
from service.settings import ServeSettings
from service.stateful.guard import QueryGuard

# Decode inline below this many bytes of images (a few small images decode in microseconds); above it, on a
# thread, so a large JPEG never stalls the event loop.
INLINE_DECODE_BYTES = 64 * 1024


@dataclass
class ServiceState:
    settings: ServeSettings
    models: APIModels
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    batcher: MicroBatcher[BatchResult] | None = None
    ready: bool = False
    model_version: str = "unknown"
    guard: QueryGuard | None = None  # the stateful query-attack defence (service/stateful/)


def get_state(request: Request) -> ServiceState:
    return request.app.state.lgm


def ready_engine(request: Request) -> tuple[ServiceState, Engine, MicroBatcher[BatchResult]]:
    st = get_state(request)
    if not st.ready or st.engine is None or st.batcher is None:
        raise APIError(503, "model not loaded yet; retry when /readyz says ready")
    return st, st.engine, st.batcher


# -- guards --------------------------------------------------------------------------------------------------------
# The security scheme of the OpenAPI document (and the /docs "Authorize" button); declared only on apps with keys.
api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="one of the configured API keys"
)


async def require_key(request: Request, api_key: str | None = Security(api_key_header)) -> None:
    """401 unless X-API-Key matches one configured key (constant-time compare). Async on purpose: a sync
    dependency would cost a thread-pool hop on every request."""
    if not valid_key(get_state(request).settings.api_keys, api_key or ""):
        raise APIError(401, "missing or wrong X-API-Key header")


def valid_key(keys: Sequence[str], given: str) -> bool:
    """Whether ``given`` is one of ``keys``, compared in constant time (no early exit: the time does not depend
    on which key matched). HTTP's X-API-Key and gRPC's x-api-key metadata both go through here."""
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given.encode(), k.encode())
    return ok


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _is_json(ctype: str) -> bool:
    return ctype == "application/json" or ctype.endswith("+json")


async def require_json(request: Request) -> None:
    """415 for a body that is not JSON (FastAPI would otherwise validate its raw bytes and answer 422)."""
    ctype = content_type(request)
    if not _is_json(ctype):
        raise APIError(415, f"unsupported content type {ctype!r}; send application/json")


def add_route(
    app: FastAPI,
    method: str,
    path: str,
    endpoint: Callable[..., Any],
    guarded: bool = True,
    checks: Sequence[Any] = (),
    **kw: Any,
) -> None:
    """Add a route straight onto the app (an included APIRouter would cost a route resolution per request).
    Guarded routes need X-API-Key when keys are configured; routes with a JSON body refuse other types (415);
    then ``checks`` (more dependencies) run, all before the body is validated."""
    deps = [Security(require_key)] if guarded and get_state_of(app).settings.api_keys else []
    if method == "post" and kw.get("route_class_override") is None:
        deps.append(Security(require_json))
    deps += list(checks)
    app.router.add_api_route(path, endpoint, methods=[method.upper()], dependencies=deps, **kw)


def get_state_of(app: FastAPI) -> ServiceState:
    return app.state.lgm


def json_or_form(form_endpoint: Callable[..., Any], form_limits: dict[str, int]) -> type[APIRoute]:
    """A route class for one operation with two bodies. The endpoint's own JSON body is validated by FastAPI as
    usual; a multipart/form-data request goes to ``form_endpoint`` (same path, guards and responses), whose form
    model FastAPI validates likewise; anything else is a 415. The OpenAPI document lists both bodies under one
    operation (the form's schema comes from its model, through ``openapi_extra``)."""

    class JSONOrFormRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Any]:
            json_handler = super().get_route_handler()
            form_route = APIRoute(
                self.path,
                form_endpoint,
                methods=list(self.methods),
                dependencies=self.dependencies,
                response_class=self.response_class,
                dependency_overrides_provider=self.dependency_overrides_provider,
                form_limits=form_limits,
            )
            form_handler = form_route.get_route_handler()
            guards = [d.dependency for d in self.dependencies]

            async def handler(request: Request) -> Response:
                ctype = content_type(request)
                if ctype == "multipart/form-data":
                    return await form_handler(request)
                if _is_json(ctype):
                    return await json_handler(request)
                for guard in guards:  # the key comes first, as on the other paths
                    await guard(request, request.headers.get("x-api-key"))
                raise APIError(
                    415, f"unsupported content type {ctype!r}; send multipart/form-data or application/json"
                )

            return handler

    return JSONOrFormRoute
