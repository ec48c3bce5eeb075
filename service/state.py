"""What the routes share: the settings, the engine and batcher once loaded, the metrics; and the route guards."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from service.batcher import MicroBatcher
from service.engine import BatchResult, Engine
from service.errors import APIError
from service.metrics import Metrics
from service.settings import ServeSettings

T = TypeVar("T")

# Parse inline below this many body bytes (a few small images decode in microseconds); above it, on a thread,
# so a large JPEG or JSON tensor never stalls the event loop.
INLINE_PARSE_BYTES = 64 * 1024


@dataclass
class ServiceState:
    settings: ServeSettings
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    batcher: MicroBatcher[BatchResult] | None = None
    ready: bool = False
    model_version: str = "unknown"


def get_state(request: Request) -> ServiceState:
    return request.app.state.lgm


# Declared as a security scheme so /docs shows an "Authorize" button; checked by ``require_key``.
api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="needed only when keys are configured"
)


async def require_key(request: Request, api_key: str | None = Security(api_key_header)) -> None:
    """401 unless X-API-Key matches one configured key (constant-time compare); open when none are set.
    Async on purpose: a sync dependency would cost a thread-pool hop on every request."""
    keys = get_state(request).settings.api_keys
    if not keys:
        return
    given = api_key or ""
    ok = False
    for k in keys:  # no early exit: the time does not depend on which key matched
        ok |= hmac.compare_digest(given.encode(), k.encode())
    if not ok:
        raise APIError(401, "missing or wrong X-API-Key header")


def ready_engine(request: Request) -> tuple[ServiceState, Engine, MicroBatcher[BatchResult]]:
    st = get_state(request)
    if not st.ready or st.engine is None or st.batcher is None:
        raise APIError(503, "model not loaded yet; retry when /readyz says ready")
    return st, st.engine, st.batcher


async def parse_off_loop_if_large(parse: Callable[[], T], body_bytes: int) -> T:
    """``parse()`` inline for a small body, on the thread pool for one over ``INLINE_PARSE_BYTES``."""
    return await run_in_threadpool(parse) if body_bytes > INLINE_PARSE_BYTES else parse()


class RouteTable:
    """Routes declared with ``@table.route(...)`` at import time, then added straight onto the app by
    ``register`` (an included APIRouter would cost a route resolution per request). Guarded routes need
    X-API-Key when keys are configured."""

    def __init__(self, tags: list[str]) -> None:
        self.tags = tags
        self._routes: list[tuple[str, str, Callable[..., Any], bool, dict[str, Any]]] = []

    def route(
        self, method: str, path: str, guarded: bool = True, **kw: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._routes.append((method, path, fn, guarded, kw))
            return fn

        return deco

    def register(self, app: FastAPI) -> None:
        for method, path, fn, guarded, kw in self._routes:
            deps = [Depends(require_key)] if guarded else []
            app.add_api_route(path, fn, methods=[method.upper()], dependencies=deps, tags=self.tags, **kw)
