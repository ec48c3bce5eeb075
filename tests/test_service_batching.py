"""Micro-batching really coalesces (forwards counted), over a real uvicorn server on loopback too, and SIGTERM
lets in-flight requests finish."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_service_common import (  # noqa: F401
    ServerThread,
    detector_fixture,
    digit_images,
    free_port,
    served_artifact_fixture,
    settings_for,
)

from service.app import create_app
from service.batcher import MicroBatcher

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Rows:
    x: torch.Tensor

    def slice(self, a: int, b: int) -> Rows:
        return Rows(self.x[a:b])


class SlowDouble:
    """fn(x) = 2x after a pause, recording every batch size."""

    def __init__(self, pause: float = 0.02) -> None:
        self.pause = pause
        self.sizes: list[int] = []

    def __call__(self, x: torch.Tensor) -> Rows:
        self.sizes.append(int(x.shape[0]))
        time.sleep(self.pause)
        return Rows(2 * x)


async def _submit_all(b: MicroBatcher, xs: list[torch.Tensor]) -> list[Rows]:
    b.start()
    try:
        return await asyncio.gather(*(b.submit(x) for x in xs))
    finally:
        await b.stop()


@pytest.mark.parametrize("max_wait_ms", [0.0, 5.0])
def test_batcher_coalesces_and_returns_each_its_rows(max_wait_ms: float) -> None:
    fn = SlowDouble()
    xs = [torch.full((1 + i % 3, 1, 2, 2), float(i)) for i in range(24)]  # requests of 1..3 images
    with ThreadPoolExecutor(1) as ex:
        out = asyncio.run(_submit_all(MicroBatcher(fn, ex, max_batch_size=16, max_wait_ms=max_wait_ms), xs))
    for x, r in zip(xs, out, strict=True):
        torch.testing.assert_close(r.x, 2 * x)
    assert sum(fn.sizes) == sum(len(x) for x in xs)
    assert len(fn.sizes) < len(xs) / 2, fn.sizes  # far fewer forwards than requests
    assert max(fn.sizes) <= 16


def test_batcher_off_runs_each_request_alone() -> None:
    fn = SlowDouble(0.0)
    xs = [torch.rand(1, 1, 2, 2) for _ in range(10)]
    with ThreadPoolExecutor(1) as ex:
        b = MicroBatcher(fn, ex, enabled=False)
        out = asyncio.run(_submit_all(b, xs))
    assert fn.sizes == [1] * 10
    for x, r in zip(xs, out, strict=True):
        torch.testing.assert_close(r.x, 2 * x)


def test_batcher_single_large_request_runs_alone() -> None:
    fn = SlowDouble(0.0)
    with ThreadPoolExecutor(1) as ex:
        out = asyncio.run(_submit_all(MicroBatcher(fn, ex, max_batch_size=4), [torch.rand(9, 1, 2, 2)]))
    assert fn.sizes == [9] and out[0].x.shape[0] == 9


def test_batcher_error_reaches_every_waiter_and_batcher_survives() -> None:
    calls = {"n": 0}

    def flaky(x: torch.Tensor) -> Rows:
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(0.02)
            raise RuntimeError("boom")
        return Rows(x)

    async def run() -> tuple[list, Rows]:
        with ThreadPoolExecutor(1) as ex:
            b = MicroBatcher(flaky, ex, max_wait_ms=5)
            b.start()
            first = await asyncio.gather(
                *(b.submit(torch.rand(1, 1)) for _ in range(3)), return_exceptions=True
            )
            later = await b.submit(torch.ones(2, 1))
            await b.stop()
            return first, later

    first, later = asyncio.run(run())
    assert all(isinstance(e, RuntimeError) for e in first)
    torch.testing.assert_close(later.x, torch.ones(2, 1))


# -- a real uvicorn server ---------------------------------------------------------------------------------------
def _post(port: int, path: str, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_real_server_coalesces_concurrent_requests(served_artifact: Path, detector) -> None:
    app = create_app(settings_for(served_artifact, max_wait_ms=20.0, max_batch_size=64), detector=detector)
    x = digit_images(detector, 24)
    with ServerThread(app) as srv:
        port = srv.port
        engine = app.state.lgm.engine
        assert engine.forwards == 0
        with ThreadPoolExecutor(24) as pool:
            results = list(
                pool.map(lambda v: _post(port, "/v1/predict", {"instances": [{"array": v.tolist()}]}), x)
            )
        assert all(code == 200 for code, _ in results)
        assert sum(engine.batch_sizes) == 24
        assert engine.forwards < 12, list(engine.batch_sizes)  # coalesced: far fewer forwards than requests
        preds = [body["predictions"][0]["class_index"] for _, body in results]
        assert preds == detector.score(x).pred.tolist()  # each request got its own rows back
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        count = next(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("lgm_batch_size_count")
        )
        assert count == engine.forwards


def test_real_server_without_coalescing(served_artifact: Path, detector) -> None:
    app = create_app(settings_for(served_artifact, batching=False), detector=detector)
    x = digit_images(detector, 8)
    with ServerThread(app) as srv, ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda v: _post(srv.port, "/v1/predict", {"instances": [{"array": v.tolist()}]}), x)
        )
        assert all(code == 200 for code, _ in results)
        assert list(app.state.lgm.engine.batch_sizes) == [1] * 8


def test_sigterm_lets_in_flight_requests_finish(served_artifact: Path) -> None:
    """`lgm serve` in a subprocess; a request whose body is still arriving when SIGTERM comes gets its 200, then
    the lifespan shutdown runs and the process exits."""
    port = free_port()
    cmd = [sys.executable, "-m", "service", "serve", str(served_artifact), "--port", str(port)]
    cmd += ["--threads", "1", "--device", "cpu", "--log-level", "info"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "server did not become ready"
            time.sleep(0.2)
        # A request in flight at SIGTERM: headers and half of the body sent before the signal, the rest after.
        body = json.dumps({"instances": [{"array": [[0.5] * 8] * 8}]}).encode()
        head = f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(head.encode() + body[: len(body) // 2])
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # still draining: our request is not finished
        sock.sendall(body[len(body) // 2 :])
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        sock.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert len(json.loads(reply.split(b"\r\n\r\n", 1)[1])["predictions"]) == 1
        # uvicorn re-raises the captured SIGTERM once shut down, so the exit status is the signal's (143 in a shell)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        log = proc.stdout.read().decode() if proc.stdout else ""
        assert "Application shutdown complete" in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_lone_request_is_not_held_back_by_max_wait() -> None:
    """Adaptive wait: with nobody else around, a request runs at once even with a long max_wait_ms."""
    fn = SlowDouble(0.0)

    async def run() -> float:
        with ThreadPoolExecutor(1) as ex:
            b = MicroBatcher(fn, ex, max_wait_ms=500.0)
            b.start()
            t0 = time.perf_counter()
            for _ in range(3):
                await b.submit(torch.rand(1, 1))
            dt = time.perf_counter() - t0
            await b.stop()
            return dt

    assert asyncio.run(run()) < 0.4  # three sequential requests; a fixed 500 ms wait would take 1.5 s
    assert fn.sizes == [1, 1, 1]
