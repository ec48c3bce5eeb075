"""What the routes share: the settings, the engine and batcher once loaded, the metrics; and the route guards."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from service.batcher import MicroBatcher
from service.engine import BatchResult, Engine
from service.errors import APIError
from service.metrics import Metrics
from service.settings import ServeSettings


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
