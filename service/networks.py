"""Trusted-proxy entries (``--trusted-proxy``) as IP networks: what the settings check when they are read and
what the query history's client identity (``service/stateful/identity.py``) trusts.

Its own module so that both import it one way: ``service/settings.py`` validates the setting with it without
importing the stateful defence, which itself reads the settings (``service/stateful/setup.py``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(specs: Iterable[str]) -> list[Network]:
    """``["127.0.0.1", "10.0.0.0/8"]`` -> networks; a bad entry raises ValueError naming it."""
    out = []
    for s in specs:
        try:
            out.append(ipaddress.ip_network(s.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {s!r} is neither an IP address nor a network") from None
    return out
