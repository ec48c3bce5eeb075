"""The in-memory index of a client's queries (service/stateful/window.py) and the SQLite store built on it: the
same answers as a brute-force reading of Blacklight's rule, whichever process recorded which query."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from service.stateful.fingerprint import Fingerprinter, digest, shared
from service.stateful.store import Limits, SQLiteStore
from service.stateful.window import TAIL, ClientWindow


def _stream(n: int, seed: int = 0) -> list[np.ndarray]:
    """n 12x12 images: runs of near-copies (a query attack's steps) between unrelated images."""
    rng = np.random.default_rng(seed)
    out, base = [], rng.random((1, 12, 12))
    for i in range(n):
        if i % 7 == 0:
            base = rng.random((1, 12, 12))
        step = base.copy()
        step[0, rng.integers(12), rng.integers(12)] = rng.random()
        out.append(step.astype(np.float32))
    return out


def test_best_match_is_the_brute_force_maximum_across_folds_and_forgetting() -> None:
    fp = Fingerprinter()
    prints = [fp(x[None])[0] for x in _stream(3 * TAIL + 5)]
    w = ClientWindow(cid=1)
    for qid, h in enumerate(prints, start=1):
        for above in (0, qid // 2, qid - 3):
            want = max((shared(h, prints[q - 1]) for q in range(above + 1, qid)), default=0)
            assert w.best_match(h, above) == want, (qid, above)
        w.add(qid, bytes([qid % 256, qid // 256]), qid % 3 == 0, h)
        if qid % 50 == 0:
            w.forget_through(qid - 40)
    assert w.near_duplicates(len(prints) - 10) == sum(
        q % 3 == 0 for q in range(len(prints) - 9, len(prints) + 1)
    )


def test_two_stores_on_one_file_answer_as_one_store(tmp_path: Path) -> None:
    fp = Fingerprinter()
    limits = Limits(match_hashes=15, flag_after=3, history=40, flagged_window=8)
    xs = _stream(150, seed=1)
    xs[20] = xs[19].copy()  # an exact repeat
    one = SQLiteStore(tmp_path / "one.sqlite3")
    a, b = SQLiteStore(tmp_path / "two.sqlite3"), SQLiteStore(tmp_path / "two.sqlite3")
    for i in range(0, len(xs), 2):  # two-image requests
        x = np.stack(xs[i : i + 2])
        args = (fp(x), digest(x), 1000.0 + i, limits)
        want, got = one.record("c", *args), (a if i % 4 == 0 else b).record("c", *args)
        assert got == want, i
    assert a.size()["queries"] == one.size()["queries"] < 150  # trimmed to the history bound
    assert one.size()["hashes"] == sum(len(r) for r in _fps_of(one))


def _fps_of(store: SQLiteStore) -> list[np.ndarray]:
    rows = store._conn().execute("SELECT fp FROM queries").fetchall()
    return [np.frombuffer(r[0], np.int64) for r in rows]


def test_a_file_of_the_older_layout_is_started_afresh(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE hashes (cid INTEGER, h INTEGER, qid INTEGER);"
        "CREATE TABLE queries (cid INTEGER, qid INTEGER, ts REAL, digest BLOB, dup INTEGER);"
        "INSERT INTO queries VALUES (1, 1, 0, x'00', 0);"
    )
    db.close()
    store = SQLiteStore(path)
    assert store.size()["queries"] == 0
    x = _stream(1)[0][None]
    rec = store.record("c", Fingerprinter()(x), digest(x), 1.0, Limits())
    assert rec.matches == [0] and store.size()["queries"] == 1


# -- screened: the guard's place on the request path ----------------------------------------------------------------
def _guard(tmp_path: Path, policy: str):
    from service.stateful.guard import QueryGuard

    return QueryGuard(f"sqlite:///{tmp_path / 'g.sqlite3'}", policy=policy, limits=Limits(flag_after=1))


def test_screened_under_block_refuses_before_any_forward_pass(tmp_path: Path) -> None:
    import asyncio

    from service.stateful.setup import Blocked, screened

    g = _guard(tmp_path, "block")
    ran = []

    async def work() -> str:
        ran.append(1)
        return "scored"

    xs = [x[None] for x in _stream(3)]

    async def go() -> list:
        out = []
        for x in xs:
            try:
                out.append(await screened(g, lambda: "k", x, work()))
            except Blocked:
                out.append("refused")
        return out

    out = asyncio.run(go())
    assert out[0][1] == "scored" and out[-1] == "refused"
    assert len(ran) == sum(o != "refused" for o in out)  # a refused query never reached the model
    g.close()


def test_screened_under_flag_scores_while_the_guard_records(tmp_path: Path) -> None:
    import asyncio

    from service.stateful.setup import screened

    g = _guard(tmp_path, "flag")
    order: list[str] = []
    real = g.check_many

    def slow_check(*a, **k):
        import time

        time.sleep(0.2)
        order.append("guard")
        return real(*a, **k)

    g.check_many = slow_check  # type: ignore[method-assign]

    async def work() -> str:
        order.append("model")
        return "scored"

    x = _stream(1)[0][None]
    verdict, res = asyncio.run(screened(g, lambda: "k", x, work()))
    assert res == "scored" and order == ["model", "guard"] and verdict.client == "k"
    g.close()


def test_concurrent_checks_go_as_one_batch_with_the_verdicts_of_one_by_one(tmp_path: Path) -> None:
    import asyncio

    from service.stateful.guard import QueryGuard

    xs = [x[None] for x in _stream(12, seed=2)]
    one = QueryGuard(f"sqlite:///{tmp_path / 'one.sqlite3'}", limits=Limits(flag_after=2))
    want = [one.check(f"c{i % 3}", x, now=50.0) for i, x in enumerate(xs)]
    g = QueryGuard(f"sqlite:///{tmp_path / 'many.sqlite3'}", limits=Limits(flag_after=2))
    store = g._get_store()
    calls = []
    real = store.record_many

    def counting(requests, now, limits):
        calls.append(len(requests))
        return real(requests, 50.0, limits)

    store.record_many = counting  # type: ignore[method-assign]

    async def go():
        return await asyncio.gather(*(g.acheck(f"c{i % 3}", x) for i, x in enumerate(xs)))

    got = asyncio.run(go())
    assert [v.flagged for v in got] == [v.flagged for v in want] and any(v.flagged for v in want)
    assert [v.matches for v in got] == [v.matches for v in want]
    assert sum(calls) == len(xs) and len(calls) < len(xs)  # coalesced
    one.close()
    g.close()
