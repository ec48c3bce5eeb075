"""Who sent a request, for the query history: the API key where keys are configured, else the address the
trusted proxy (HAProxy's ``option forwardfor``) forwards, else the peer address.

Keys are never stored: the client id is ``key:`` + the first 16 hex digits of the key's SHA-256. An address is
``ip:ADDR``. ``X-Forwarded-For`` is read right to left and the first address that is not a trusted proxy is the
client (the entries to its left were written by the client itself and prove nothing); it is ignored unless the
peer is a trusted proxy. Uvicorn already rewrites the peer this way for the proxies it trusts
(``--forwarded-allow-ips``, 127.0.0.1 by default), which gives the same answer.
"""

from __future__ import annotations

import hashlib
import ipaddress

from service.networks import Network as Network  # re-exported: setup.py and the tests import them from here
from service.networks import networks as networks


def _trusted(addr: str, trusted: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in n for n in trusted)


def client_id(
    api_key: str | None,
    keys_configured: bool,
    peer: str | None,
    forwarded_for: str | None,
    trusted: list[Network],
) -> str:
    """The client's id for the query history (see the module docstring)."""
    if keys_configured and api_key:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
    addr = peer or "unknown"
    if forwarded_for and _trusted(addr, trusted):
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            addr = hop
            if not _trusted(hop, trusted):
                break
    return "ip:" + addr
