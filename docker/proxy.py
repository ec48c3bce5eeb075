#!/usr/bin/env python3
"""A small round-robin HTTP reverse proxy that puts several ``lgm serve`` replicas behind one port.

Standard library only (asyncio), so it runs in the project's own image: no proxy image has to be pulled.
Each request goes whole to the next *ready* upstream; the proxy keeps an upstream ready while its
``GET /readyz`` answers 200, probed every ``--probe-interval`` seconds. Every name in ``--upstreams`` is
resolved again on each probe to all its addresses, so on a Docker network ``api:8000`` reaches every replica
of ``docker compose up --scale api=N`` (Docker's DNS answers with one address per replica); on a host network
list the replicas' ports instead (``127.0.0.1:8001,127.0.0.1:8002``).

Deliberately simple: one request per client connection (answers carry ``Connection: close``), request bodies
need a Content-Length (chunked uploads get 411), bodies above ``--max-body`` get 413. With no ready upstream
it answers 503 with a JSON body, so ``GET /readyz`` through the proxy tells whether any replica serves.
``GET /proxy/upstreams`` lists the upstreams and their state; answers carry ``X-LGM-Upstream``.

Settings come from flags or from the environment: LGM_PROXY_UPSTREAMS, LGM_HOST, LGM_PORT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

HEAD_LIMIT = 64 * 1024  # bytes of request or response head
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}


@dataclass
class Upstream:
    """One replica address (host, port) and what its last readiness probe said."""

    host: str
    port: int
    ready: bool = False
    detail: str = "not probed yet"
    served: int = 0

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Pool:
    """The upstream specs (``name:port``), their resolved addresses and a round-robin cursor."""

    specs: list[tuple[str, int]]
    probe_timeout: float = 2.0
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    _cursor: int = 0

    def ready(self) -> list[Upstream]:
        return [u for u in self.upstreams.values() if u.ready]

    def pick(self) -> list[Upstream]:
        """Ready upstreams in the order to try them: the next in turn first, the rest as fall-backs."""
        ready = self.ready()
        if not ready:
            return []
        start = self._cursor % len(ready)
        self._cursor += 1
        return ready[start:] + ready[:start]

    async def resolve(self) -> None:
        """Re-resolve every spec to all its IPv4 addresses; keep the state of addresses seen before."""
        loop = asyncio.get_running_loop()
        seen: dict[str, Upstream] = {}
        for host, port in self.specs:
            try:
                infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
                addrs = sorted({info[4][0] for info in infos})
            except OSError:
                addrs = []
            for addr in addrs:
                key = f"{addr}:{port}"
                seen[key] = self.upstreams.get(key) or Upstream(addr, port)
        self.upstreams = seen

    async def probe(self, up: Upstream) -> None:
        """GET /readyz on one upstream; ready only on a 200."""
        try:
            status, _ = await asyncio.wait_for(
                http_get(up.host, up.port, "/readyz"), timeout=self.probe_timeout
            )
            up.ready, up.detail = status == 200, f"/readyz {status}"
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            up.ready, up.detail = False, f"/readyz failed: {type(exc).__name__}"

    async def probe_all(self) -> None:
        await self.resolve()
        await asyncio.gather(*(self.probe(u) for u in self.upstreams.values()))


async def close(writer: asyncio.StreamWriter) -> None:
    """Close a stream, ignoring a peer that is gone already."""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET: returns (status, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read(-1)
    finally:
        await close(writer)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError("malformed HTTP answer")
    return int(status_line[1]), body


def parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Split an HTTP head into its first line and (name, value) header pairs."""
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise ValueError("malformed header line")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def json_response(status: int, reason: str, payload: object) -> bytes:
    body = json.dumps(payload).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n\r\n"
    ).encode() + body


class Proxy:
    """Accepts client connections and relays each request to one ready upstream."""

    def __init__(self, pool: Pool, max_body: int, upstream_timeout: float) -> None:
        self.pool = pool
        self.max_body = max_body
        self.upstream_timeout = upstream_timeout

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass
        finally:
            await close(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
            first, headers = parse_head(head[:-4])
            method, target, _version = first.split(b" ", 2)
        except (ValueError, asyncio.LimitOverrunError):
            writer.write(json_response(400, "Bad Request", {"detail": "malformed HTTP request"}))
            return
        names = {n.lower(): v for n, v in headers}
        if b"chunked" in names.get(b"transfer-encoding", b"").lower():
            writer.write(json_response(411, "Length Required", {"detail": "send a Content-Length body"}))
            return
        try:
            length = int(names.get(b"content-length", b"0"))
        except ValueError:
            writer.write(json_response(400, "Bad Request", {"detail": "bad Content-Length"}))
            return
        if length > self.max_body:
            writer.write(
                json_response(413, "Payload Too Large", {"detail": f"body over {self.max_body} bytes"})
            )
            return
        body = await reader.readexactly(length) if length else b""

        if method == b"GET" and target == b"/proxy/upstreams":
            state = [{"upstream": u.name, "ready": u.ready, "detail": u.detail, "served": u.served}
                     for u in self.pool.upstreams.values()]  # fmt: skip
            writer.write(json_response(200, "OK", {"upstreams": state}))
            return

        peer = writer.get_extra_info("peername")
        forwarded = [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP]
        if peer:
            forwarded.append((b"X-Forwarded-For", str(peer[0]).encode()))
        forwarded.append((b"Connection", b"close"))
        request = first + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in forwarded) + b"\r\n" + body

        for up in self.pool.pick():
            try:
                await self._relay(up, request, writer)
                return
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                up.ready, up.detail = False, "connection failed"  # the next probe decides again
                continue
        writer.write(json_response(503, "Service Unavailable", {"detail": "no ready upstream"}))

    async def _relay(self, up: Upstream, request: bytes, writer: asyncio.StreamWriter) -> None:
        """Send the request to ``up`` and stream its answer back, adding an X-LGM-Upstream header."""
        ureader, uwriter = await asyncio.wait_for(asyncio.open_connection(up.host, up.port), timeout=5)
        try:
            uwriter.write(request)
            await uwriter.drain()
            head = await asyncio.wait_for(ureader.readuntil(b"\r\n\r\n"), timeout=self.upstream_timeout)
            up.served += 1
            writer.write(head[:-2] + f"X-LGM-Upstream: {up.name}\r\n\r\n".encode())
            while chunk := await asyncio.wait_for(ureader.read(65536), timeout=self.upstream_timeout):
                writer.write(chunk)
                await writer.drain()
        finally:
            await close(uwriter)


def parse_upstreams(text: str) -> list[tuple[str, int]]:
    """``"api:8000,127.0.0.1:8001"`` -> ``[("api", 8000), ("127.0.0.1", 8001)]``."""
    specs = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"upstream {item!r} is not HOST:PORT")
        specs.append((host, int(port)))
    if not specs:
        raise ValueError("no upstreams given (--upstreams or LGM_PROXY_UPSTREAMS)")
    return specs


async def serve(args: argparse.Namespace) -> None:
    """Listen, probe the upstreams every ``probe_interval`` seconds, stop on SIGTERM or SIGINT."""
    pool = Pool(parse_upstreams(args.upstreams), probe_timeout=args.probe_timeout)
    proxy = Proxy(pool, max_body=args.max_body, upstream_timeout=args.upstream_timeout)
    server = await asyncio.start_server(proxy.handle, args.host, args.port, limit=HEAD_LIMIT)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"lgm-proxy: listening on {args.host}:{args.port}, upstreams {args.upstreams}", flush=True)
    last: list[str] = []
    async with server:
        while not stop.is_set():
            await pool.probe_all()
            now = sorted(u.name for u in pool.ready())
            if now != last:
                print(f"lgm-proxy: {time.strftime('%H:%M:%S')} ready upstreams: {now or 'none'}", flush=True)
                last = now
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=args.probe_interval)
    print("lgm-proxy: stopped", flush=True)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="lgm-proxy", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--upstreams", default=env("LGM_PROXY_UPSTREAMS", "api:8000"), help="HOST:PORT,...")
    p.add_argument("--host", default=env("LGM_HOST", "0.0.0.0"), help="interface to listen on")
    p.add_argument("--port", type=int, default=int(env("LGM_PORT", "8000")), help="port to listen on")
    p.add_argument("--probe-interval", type=float, default=2.0, help="seconds between readiness probes")
    p.add_argument("--probe-timeout", type=float, default=2.0, help="seconds a probe may take")
    p.add_argument("--upstream-timeout", type=float, default=120.0, help="seconds an upstream may go silent")
    p.add_argument("--max-body", type=int, default=16 * 1024 * 1024, help="largest request body in bytes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        parse_upstreams(args.upstreams)
        asyncio.run(serve(args))
    except ValueError as exc:
        print(f"lgm-proxy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
