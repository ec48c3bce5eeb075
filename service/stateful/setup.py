"""The guard and the HTTP glue: build a ``QueryGuard`` from ``ServeSettings``, name a request's client, screen a
request's images, and trim answers to what ``query_reveal`` allows."""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from fastapi import Request

from service.errors import APIError
from service.settings import ServeSettings
from service.stateful.fingerprint import FingerprintConfig
from service.stateful.guard import QueryGuard, Verdict
from service.stateful.identity import Network, client_id, networks
from service.stateful.store import Limits

T = TypeVar("T")


def store_url(settings: ServeSettings) -> str:
    """The configured store, or SQLite in the temp folder, one file per port (so the workers of one server share
    it, and two servers on one machine do not)."""
    if settings.query_store:
        return settings.query_store
    return "sqlite:///" + str(Path(tempfile.gettempdir()) / f"lgm-query-history-{settings.port}.sqlite3")


def build_guard(settings: ServeSettings, registry: Any = None) -> QueryGuard:
    limits = Limits(
        match_hashes=settings.query_match_hashes,
        flag_after=settings.query_flag_after,
        history=settings.query_history,
        ttl_s=settings.query_ttl_s,
        flag_s=settings.query_flag_s,
    )
    fp = FingerprintConfig(
        levels=settings.query_levels,
        patch=settings.query_patch,
        top_k=settings.query_fingerprint_hashes,
        key=settings.query_hash_key,
    )
    guard = QueryGuard(store_url(settings), settings.query_policy, limits, fp, registry=registry)
    guard.trusted_proxies = networks(settings.trusted_proxies)
    return guard


class Blocked(APIError):
    """429 with Retry-After: the client is flagged and the policy is ``block``."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(
            429,
            "too many near-duplicate queries from this client (a query attack?); "
            f"refused for {math.ceil(retry_after_s)} s more",
        )
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


def request_client(request: Request, settings: ServeSettings, trusted: list[Network]) -> str:
    peer = request.client.host if request.client else None
    return client_id(
        request.headers.get("x-api-key"),
        bool(settings.api_keys),
        peer,
        request.headers.get("x-forwarded-for"),
        trusted,
    )


def grpc_client(metadata: dict[str, Any], peer: str, settings: ServeSettings, trusted: list[Network]) -> str:
    """A gRPC call's client: its ``x-api-key`` metadata where keys are configured, else the peer address
    (``ipv4:HOST:PORT`` / ``ipv6:[HOST]:PORT``) or the ``x-forwarded-for`` metadata a trusted proxy adds."""
    host = peer.split(":", 1)[1] if ":" in peer else peer
    host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]

    def text(key: str) -> str | None:
        v = metadata.get(key)
        return v.decode(errors="replace") if isinstance(v, bytes) else v

    return client_id(
        text("x-api-key"), bool(settings.api_keys), host or None, text("x-forwarded-for"), trusted
    )


async def screen_client(guard: QueryGuard, client: str, x: Any) -> Verdict:
    """Record a request's images (a (N, C, H, W) tensor or array) for ``client``; raises ``Blocked`` (429). The
    one entry point of every protocol (HTTP /v1 and /v2, gRPC)."""
    if guard.policy == "off":
        return Verdict("")
    arr = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    verdict = await guard.acheck(client, arr)
    if verdict.blocked:
        raise Blocked(verdict.retry_after_s)
    return verdict


async def screened(
    guard: QueryGuard, client: Callable[[], str], x: Any, work: Awaitable[T]
) -> tuple[Verdict, T]:
    """Screen a request's images and run ``work`` (its scoring). Under ``block`` the verdict comes first, so a
    refused query costs no forward pass (``Blocked`` propagates and ``work`` never starts); under ``flag`` the two
    run at once, so the guard's bookkeeping, on its own thread, adds nothing to the answer's latency."""
    if guard.policy != "flag":
        try:
            verdict = await screen_client(guard, client() if guard.policy != "off" else "", x)
        except BaseException:
            _close(work)
            raise
        return verdict, await work
    task = asyncio.ensure_future(screen_client(guard, client(), x))
    try:
        res = await work
    except BaseException:
        task.cancel()
        raise
    return await task, res


def _close(work: Awaitable[Any]) -> None:
    """Close a coroutine that will not be awaited (no 'never awaited' warning)."""
    close = getattr(work, "close", None)
    if close is not None:
        close()


# -- query_reveal ------------------------------------------------------------------------------------------------
_SCORES = ("confidence", "log_likelihood", "abnormality_score", "threshold")


def reveal_predictions(preds: list[dict[str, Any]], mode: str, digits: int) -> list[dict[str, Any]]:
    """/v1 predictions as ``query_reveal`` allows: full; rounded scores; or label (and is_adversarial) only."""
    if mode == "full":
        return preds
    for p in preds:
        if mode == "label":
            for k in _SCORES:
                p[k] = None
            p["top_k"] = [{"label": p["label"], "probability": None}]
        else:
            for k in _SCORES:
                p[k] = round(p[k], digits)
            for t in p["top_k"]:
                t["probability"] = round(t["probability"], digits)
    return preds


def reveal_outputs(names: list[str], mode: str) -> list[str]:
    """OIP outputs ``query_reveal=label`` still returns (class and is_adversarial)."""
    return [n for n in names if n in ("class", "is_adversarial")] if mode == "label" else names


def round_tensors(tensors: list[Any], mode: str, digits: int) -> list[Any]:
    """OIP output tensors (``service.oip.OutputTensor``) as ``query_reveal=rounded`` allows: FP32 values rounded."""
    if mode == "rounded":
        for t in tensors:
            if t.datatype == "FP32":
                t.array = np.round(t.array.astype(np.float64), digits)  # JSON shows the rounded value
    return tensors
