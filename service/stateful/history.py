"""What every query-history store shares: the rule's parameters (``Limits``), what one request did to a client's
state (``Record``), the ``HistoryStore`` protocol and the failure the guard fails open on (``StoreUnavailable``).

The rules themselves are stated in ``service/stateful/store.py``. These types live apart from both stores
(``SQLiteStore`` there, ``RedisStore`` in ``service/stateful/redis_store.py``) so that imports go one way:
``store -> redis_store -> history``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Limits:
    """The detection rule's parameters (``service/stateful/store.py`` states the rule)."""

    match_hashes: int = 15  # shared hashes that make two queries near-duplicates (Blacklight's threshold)
    flag_after: int = 3  # near-duplicate queries in the history that flag the client
    history: int = 1000  # queries kept per client
    ttl_s: float = 3600.0  # seconds a query is kept
    flag_s: float = 600.0  # seconds a flag lasts after the latest near-duplicate
    # a flagged client's queries are compared with its last few only: enough to extend the flag, and a flagged
    # attacker's stream of near-duplicates cannot make each query cost a scan of its whole history
    flagged_window: int = 32


@dataclass
class Record:
    """What one request's images did to the client's state."""

    matches: list[int]  # per image: most hashes shared with one earlier query (0 for an exact repeat)
    repeats: list[bool]  # per image: an exact repeat of an earlier query
    near_duplicates: int  # the client's near-duplicate queries in its history, after this request
    flagged_until: float  # epoch seconds (0: never flagged)
    flagged: bool  # the flag is up after this request
    was_flagged: bool  # the flag was already up before it


class StoreUnavailable(Exception):
    """The store cannot be reached or written; the guard fails open."""


Request = tuple[str, list[np.ndarray], list[bytes]]  # client, fingerprints and digests of its images


class HistoryStore(Protocol):
    """A query history every worker and replica serving the same clients shares; ``open_store`` opens one."""

    url: str

    def record(
        self, client: str, fingerprints: list[np.ndarray], digests: list[bytes], now: float, limits: Limits
    ) -> Record: ...

    def record_many(self, requests: list[Request], now: float, limits: Limits) -> list[Record]: ...

    def flagged_until(self, client: str) -> float: ...

    def size(self) -> dict[str, int]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...
