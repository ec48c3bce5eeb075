"""The request path's hook: ``QueryGuard.check(client, images)`` fingerprints a request's images, records them in
the client's shared history and says whether the client is flagged (and, under the ``block`` policy, refused).

A plain object with a synchronous, thread-safe ``check`` (``check_many`` for several requests in one store
transaction, and ``acheck`` for an event loop, which batches the requests of one loop turn), so that any front end
calls it the same way: the HTTP routes (``service/api_v1.py``, ``service/api_v2.py``), gRPC
(``service/grpc_server.py``) and any other transport that has a client id and an (N, C, H, W) array.

Fail open: when the store cannot be reached the guard answers "not flagged", counts the error, logs one warning
per outage (and one line when the store is back), and leaves the store alone for ``retry_s`` seconds so that a
dead Redis costs nothing per request; ``health()`` says so for ``/readyz``. The detection method is Blacklight's
(Li et al., USENIX Security 2022): ``service/stateful/fingerprint.py`` and ``store.py``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from service.stateful.fingerprint import FingerprintConfig, Fingerprinter, digest
from service.stateful.store import HistoryStore, Limits, Record, StoreUnavailable, open_store

log = logging.getLogger("lgm.query_guard")
Policy = Literal["off", "flag", "block"]


@dataclass
class Verdict:
    client: str
    flagged: bool = False  # the client is flagged (after this request)
    blocked: bool = False  # refuse this request (policy "block" and the client is flagged)
    retry_after_s: float = 0.0  # seconds until the flag runs out
    near_duplicates: int = 0  # the client's near-duplicate queries in its history
    matches: list[int] = field(default_factory=list)  # per image: most hashes shared with one earlier query
    store_ok: bool = True  # False: the store was unavailable and the guard failed open


@dataclass
class _LoopBatch:
    """Requests of one event loop waiting for the guard's thread, and whether a batch is being recorded."""

    pending: list[tuple[str, np.ndarray, asyncio.Future[Verdict]]] = field(default_factory=list)
    running: bool = False


class QueryGuard:
    """Stateful detection of query attacks for one server process (all processes share ``store``)."""

    def __init__(
        self,
        store: HistoryStore | str,
        policy: Policy = "flag",
        limits: Limits | None = None,
        fingerprint: FingerprintConfig | None = None,
        registry: Any = None,
        retry_s: float = 5.0,
    ) -> None:
        self.policy = policy
        self.limits = limits or Limits()
        self.fingerprinter = Fingerprinter(fingerprint)
        self.retry_s = retry_s
        self.trusted_proxies: list[Any] = []  # networks whose X-Forwarded-For names the client (identity.py)
        self._store_arg = store
        self.store: HistoryStore | None = store if not isinstance(store, str) else None
        self.store_url = store if isinstance(store, str) else store.url
        # The embedded store's calls are local and short (one transaction of ~0.1 ms per request): they run on the
        # event loop, a batch per loop turn, because handing each batch to a thread and back cost the server
        # more CPU than the bookkeeping itself (measured with bench/serve.py, docs/query-attacks.md). Redis's
        # calls wait on the network (and on a timeout when it is down): those go to the guard's thread.
        self.inline = not self.store_url.startswith(("redis://", "rediss://", "unix://"))
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._last_error = ""
        self._lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lgm-query-guard")
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBatch] = (
            weakref.WeakKeyDictionary()
        )
        self._metrics(registry)

    def _metrics(self, registry: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        r = registry if registry is not None else CollectorRegistry()
        self.m_flagged_clients = Counter(
            "lgm_query_clients_flagged", "clients newly flagged for near-duplicate queries", registry=r
        )
        self.m_flagged_requests = Counter(
            "lgm_query_flagged_requests", "requests from flagged clients (answered or refused)", registry=r
        )
        self.m_blocked = Counter("lgm_query_blocked_requests", "requests refused (policy block)", registry=r)
        self.m_near_dups = Counter("lgm_query_near_duplicates", "near-duplicate images seen", registry=r)
        self.m_store_errors = Counter(
            "lgm_query_store_errors", "requests answered without the history store (failed open)", registry=r
        )
        self.m_store_up = Gauge("lgm_query_store_up", "1 while the query-history store answers", registry=r)
        self.m_store_up.set(1)

    # -- the store, opened lazily (a Redis that is down at start-up must not stop the server) ---------------------
    def _get_store(self) -> HistoryStore:
        if self.store is None:
            with self._lock:
                if self.store is None:
                    try:
                        self.store = open_store(str(self._store_arg))
                    except (OSError, ValueError, ImportError) as exc:
                        raise StoreUnavailable(str(exc)) from exc
        return self.store

    def _failed(self, exc: Exception, now: float) -> None:
        self.m_store_errors.inc()
        self.m_store_up.set(0)
        with self._lock:
            self._retry_at = now + self.retry_s
            self._last_error = str(exc)
            first = self._down_since is None
            if first:
                self._down_since = now
        if first:
            log.warning(
                "query-history store unavailable (%s); failing open: answering without the stateful defence, "
                "retrying every %.0f s",
                exc,
                self.retry_s,
            )

    def _recovered(self) -> None:
        with self._lock:
            was_down = self._down_since is not None
            self._down_since = None
        if was_down:
            self.m_store_up.set(1)
            log.warning(
                "query-history store %s reachable again; the stateful defence is back on", self.store_url
            )

    def health(self) -> str | None:
        """None while the store answers; else one line for /readyz."""
        if self.policy == "off":
            return None
        with self._lock:
            if self._down_since is None:
                return None
            return (
                f"query-history store unavailable since {time.strftime('%H:%M:%S', time.gmtime(self._down_since))}"
                f" UTC ({self._last_error}); failing open: answering without the stateful defence"
            )

    # -- the hook ---------------------------------------------------------------------------------------------------
    def check(self, client: str, images: np.ndarray, now: float | None = None) -> Verdict:
        """Record a request's images (N, C, H, W) for ``client`` and judge the client. Thread-safe."""
        return self.check_many([(client, images)], now)[0]

    def check_many(self, requests: list[tuple[str, np.ndarray]], now: float | None = None) -> list[Verdict]:
        """``check`` for several requests, in order: their images fingerprinted together and recorded in one
        store transaction (``HistoryStore.record_many``), the per-request costs paid once per batch."""
        if self.policy == "off":
            return [Verdict(c) for c, _ in requests]
        now = time.time() if now is None else now
        if now < self._retry_at:  # the store failed a moment ago: fail open at no cost
            self.m_store_errors.inc(len(requests))
            return [Verdict(c, store_ok=False) for c, _ in requests]
        out: list[Verdict | None] = [None] * len(requests)
        try:
            store = self._get_store()
            todo = []
            for i, (client, images) in enumerate(requests):
                if self.policy == "block":
                    until = store.flagged_until(client)
                    if (
                        until > now
                    ):  # refused without being recorded: a blocked client's queries change nothing
                        self.m_flagged_requests.inc()
                        self.m_blocked.inc()
                        out[i] = Verdict(client, flagged=True, blocked=True, retry_after_s=until - now)
                        continue
                todo.append((i, client, np.asarray(images, dtype=np.float32)))
            batch, where = [], []
            for (i, client, x), fps in zip(todo, self._fingerprints([x for _, _, x in todo]), strict=True):
                if fps is None:  # images smaller than one patch: nothing to compare
                    out[i] = Verdict(client)
                    continue
                batch.append((client, fps, digest(x)))
                where.append(i)
            records = store.record_many(batch, now, self.limits) if batch else []
        except StoreUnavailable as exc:
            self._failed(exc, now)
            return [
                v if v is not None else Verdict(c, store_ok=False)
                for v, (c, _) in zip(out, requests, strict=True)
            ]
        self._recovered()
        for i, rec in zip(where, records, strict=True):
            out[i] = self._verdict(requests[i][0], rec, now)
        return out  # type: ignore[return-value]

    def _fingerprints(self, xs: list[np.ndarray]) -> list[list[np.ndarray] | None]:
        """Per request, its images' fingerprints (None when they are smaller than one patch); images of one shape
        go through the fingerprinter in one call."""
        out: list[list[np.ndarray] | None] = [None] * len(xs)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(xs):
            by_shape.setdefault(x.shape[1:], []).append(i)
        for idx in by_shape.values():
            try:
                prints = self.fingerprinter(np.concatenate([xs[i] for i in idx]))
            except ValueError:
                continue
            at = 0
            for i in idx:
                out[i], at = prints[at : at + len(xs[i])], at + len(xs[i])
        return out

    def _verdict(self, client: str, rec: Record, now: float) -> Verdict:
        n_dups = sum(m >= self.limits.match_hashes for m in rec.matches)
        if n_dups:
            self.m_near_dups.inc(n_dups)
        if rec.flagged and not rec.was_flagged:
            self.m_flagged_clients.inc()
            log.info("client %s flagged: %d near-duplicate queries", client, rec.near_duplicates)
        blocked = rec.flagged and self.policy == "block"
        if rec.flagged:
            self.m_flagged_requests.inc()
        if blocked:
            self.m_blocked.inc()
        return Verdict(
            client,
            flagged=rec.flagged,
            blocked=blocked,
            retry_after_s=max(0.0, rec.flagged_until - now),
            near_duplicates=rec.near_duplicates,
            matches=rec.matches,
        )

    async def acheck(self, client: str, images: np.ndarray) -> Verdict:
        """``check`` for a request on an event loop, batched: the requests that reach the guard in one loop turn,
        or while the previous batch is being recorded, go together (as the model's micro-batcher coalesces
        forward passes): no added wait when the service is idle, one store transaction per batch under load.
        With Redis the batch runs on the guard's own thread (its calls wait on the network); with the embedded
        store, on the loop (``inline``)."""
        if self.policy == "off":
            return Verdict(client)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Verdict] = loop.create_future()
        state = self._loops.setdefault(loop, _LoopBatch())
        state.pending.append((client, images, fut))
        if not state.running:
            state.running = True
            loop.call_soon(self._next_batch, loop, state)  # the same loop turn's arrivals join this batch
        return await fut

    def _next_batch(self, loop: asyncio.AbstractEventLoop, state: _LoopBatch) -> None:
        batch, state.pending = state.pending, []
        if not batch:
            state.running = False
            return
        if self.inline:
            try:
                verdicts = self.check_many([(c, x) for c, x, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for (_, _, fut), v in zip(batch, verdicts, strict=True):
                    if not fut.done():
                        fut.set_result(v)
            state.running = False
            return
        job = loop.run_in_executor(self.executor, self.check_many, [(c, x) for c, x, _ in batch])

        def done(f: asyncio.Future[list[Verdict]]) -> None:
            exc = None if f.cancelled() else f.exception()
            for i, (_, _, fut) in enumerate(batch):
                if fut.done():
                    continue
                if f.cancelled():
                    fut.cancel()
                elif exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(f.result()[i])
            self._next_batch(loop, state)

        job.add_done_callback(done)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        if self.store is not None:
            self.store.close()
