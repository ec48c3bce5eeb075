"""Stateful detection of query attacks through the API (Blacklight, Li et al., USENIX Security 2022): per-client
fingerprint histories in a store shared by every worker and replica, and the policy for flagged clients.

``QueryGuard`` (``guard.py``) is the hook the request path calls; ``fingerprint.py`` makes the fingerprints,
``store.py`` (SQLite) and ``redis_store.py`` keep the history, ``identity.py`` names the client. See
docs/query-attacks.md.
"""

from service.stateful.fingerprint import FingerprintConfig, Fingerprinter
from service.stateful.guard import QueryGuard, Verdict
from service.stateful.identity import client_id
from service.stateful.store import Limits, StoreUnavailable, open_store

__all__ = [
    "FingerprintConfig",
    "Fingerprinter",
    "Limits",
    "QueryGuard",
    "StoreUnavailable",
    "Verdict",
    "client_id",
    "open_store",
]
