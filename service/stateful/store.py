"""Where each client's query history lives: what every worker and replica serving the same clients must share.

``HistoryStore.record(client, fingerprints, digests, now, limits)`` does one request's bookkeeping atomically:
for each image in turn, an exact repeat of an earlier query (same digest) is noted and not stored again;
any other image is compared with the client's retained queries (those within ``limits.ttl_s`` seconds and the
last ``limits.history`` queries), and is a *near-duplicate* when it shares at least ``limits.match_hashes``
fingerprint hashes with one of them (Blacklight's rule, Li et al. 2022); then it joins the history. When the
client's near-duplicates within the history reach ``limits.flag_after``, the client is flagged until
``now + limits.flag_s`` (every further near-duplicate extends that).

Two implementations of ``HistoryStore`` (``service/stateful/history.py``, with the types both share):
``SQLiteStore`` (embedded, one file shared by the worker processes of a machine, WAL mode so readers never wait
for the writer) and ``service.stateful.redis_store.RedisStore`` (replicas). ``open_store(url)`` picks one from a
URL: ``sqlite:///path/file.sqlite3`` or ``redis://host:6379/0``. Memory is bounded by time
(``ttl_s``) and by count (``history`` per client); expired rows go in a periodic sweep.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

from service.stateful.history import HistoryStore, Limits, Record, Request, StoreUnavailable
from service.stateful.redis_store import RedisStore
from service.stateful.window import ClientWindow, WindowCache

log = logging.getLogger("lgm.query_guard")


SCHEMA_VERSION = 2  # PRAGMA user_version of the layout below; a file with another layout is started afresh
_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    cid INTEGER PRIMARY KEY AUTOINCREMENT, client TEXT NOT NULL UNIQUE, next_qid INTEGER NOT NULL,
    flagged_until REAL NOT NULL, last_seen REAL NOT NULL, trimmed_to INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS queries (
    cid INTEGER NOT NULL, qid INTEGER NOT NULL, ts REAL NOT NULL, digest BLOB NOT NULL, dup INTEGER NOT NULL,
    fp BLOB NOT NULL, PRIMARY KEY (cid, qid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queries_ts ON queries (ts);
"""


class SQLiteStore:
    """The embedded store: one SQLite file in WAL mode, shared by every process that opens the same path.

    One row per query (its fingerprint as a blob of int64 hashes), numbered in time order per client, so that a
    query's write touches one or two pages; the comparison with the client's retained queries runs on each
    process's in-memory index of them (``service/stateful/window.py``), which ``record`` brings up to date from
    the file inside its transaction. One connection per thread (sqlite3 connections must not cross threads);
    each ``record`` is one ``BEGIN IMMEDIATE`` transaction, so two workers recording the same client serialise
    on SQLite's write lock (``busy_timeout`` waits for it) and each sees the other's queries. ``synchronous=
    NORMAL``: in WAL mode a crash may lose the last transactions, never corrupt the file; the history is a
    defence's memory, not a ledger. A file written by an older layout is emptied and re-created (logged)."""

    SWEEP_EVERY_S = 5.0
    # The write-ahead log is copied back into the file (a checkpoint, with an fsync) by a thread of each process
    # every CHECKPOINT_EVERY_S, never by a request's commit: SQLite's automatic checkpoint runs inside whichever
    # commit crosses 1,000 pages and stalls that request (and every request queued behind the guard) for the
    # fsync. WAL_LIMIT_BYTES: the log file is cut back to this size after a checkpoint.
    CHECKPOINT_EVERY_S = 1.0
    WAL_LIMIT_BYTES = 16 << 20

    def __init__(self, path: str | Path, busy_timeout_ms: int = 2000, max_hashes: int = 4_000_000) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._last_sweep = 0.0
        self._sweep_lock = threading.Lock()
        self._windows = WindowCache(max_hashes)  # about 64 MB per process at the default
        self._windows_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create()
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="lgm-query-store-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        while not self._stop.wait(self.CHECKPOINT_EVERY_S):
            # busy or unreachable: the next round, or another process, does it
            with contextlib.suppress(sqlite3.Error, StoreUnavailable):
                self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.close()

    def _create(self) -> None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version != SCHEMA_VERSION and tables & {"clients", "queries", "hashes"}:
                log.warning("query-history store %s has an older layout: starting it afresh", self.path)
                for name in ("hashes", "queries", "clients"):
                    db.execute(f"DROP TABLE IF EXISTS {name}")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
                conn.execute(f"PRAGMA journal_size_limit={self.WAL_LIMIT_BYTES}")
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
            self._local.conn = conn
        return conn

    def record(
        self, client: str, fingerprints: list[np.ndarray], digests: list[bytes], now: float, limits: Limits
    ) -> Record:
        return self.record_many([(client, fingerprints, digests)], now, limits)[0]

    def record_many(self, requests: list[Request], now: float, limits: Limits) -> list[Record]:
        """Several requests' bookkeeping, in order, in one transaction (one lock, one commit for the lot)."""
        try:
            # one index per process, its threads in turn; the processes in turn on the lock file
            with self._windows_lock, self._writer_turn():
                db = self._conn()
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = [self._record(db, c, fps, dgs, now, limits) for c, fps, dgs in requests]
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            self._windows.clear()  # a rolled-back transaction may have left an index ahead of the file
            raise StoreUnavailable(f"{self.path}: {exc}") from exc
        except BaseException:
            self._windows.clear()
            raise
        self._maybe_sweep(now, limits)
        return out

    @contextlib.contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Wait for the other processes' writes on an advisory lock beside the file (``fcntl.flock``), which wakes
        the waiter as soon as the holder is done. SQLite's own busy handler polls instead, sleeping 1, 2, 5, 10 ms
        and more between tries: under load two workers contending for the write lock spent most of each
        request asleep there. Where ``fcntl`` is missing, SQLite's handler alone serialises the writers."""
        if fcntl is None:
            yield
            return
        fd = getattr(self._local, "lock_fd", None)
        if fd is None:
            try:
                fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreUnavailable(f"cannot open {self.path}.lock: {exc}") from exc
            self._local.lock_fd = fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _window(self, db: sqlite3.Connection, client: str, cid: int, next_qid: int) -> ClientWindow:
        """The client's index, with every query other processes recorded since this one last looked."""
        w = self._windows.get(client, cid, next_qid)
        if w is None:
            w = ClientWindow(cid)
        if w.last_qid < next_qid - 1:
            for qid, digest, dup, fp in db.execute(
                "SELECT qid, digest, dup, fp FROM queries WHERE cid = ? AND qid > ? ORDER BY qid",
                (cid, w.last_qid),
            ):
                w.add(qid, digest, bool(dup), np.frombuffer(fp, np.int64))
        return w

    def _record(
        self,
        db: sqlite3.Connection,
        client: str,
        fingerprints: list[np.ndarray],
        digests: list[bytes],
        now: float,
        limits: Limits,
    ) -> Record:
        """One request's bookkeeping inside the caller's transaction."""
        row = db.execute(
            "SELECT cid, next_qid, flagged_until, trimmed_to FROM clients WHERE client = ?", (client,)
        ).fetchone()
        if row is None:
            cur = db.execute(
                "INSERT INTO clients (client, next_qid, flagged_until, last_seen) VALUES (?, 1, 0, ?)",
                (client, now),
            )
            row = (cur.lastrowid, 1, 0.0, 0)
        cid, next_qid, flagged_until, trimmed_to = row
        was_flagged = flagged_until > now
        # the oldest query still within the time bound (queries are numbered in time order per client)
        first = db.execute(
            "SELECT qid FROM queries WHERE cid = ? AND ts >= ? ORDER BY qid LIMIT 1",
            (cid, now - limits.ttl_s),
        ).fetchone()
        first_live = first[0] if first else next_qid
        w = self._window(db, client, cid, next_qid)
        w.forget_through(max(trimmed_to, first_live - 1))
        matches, repeats = [], []
        for fp, dg in zip(fingerprints, digests, strict=True):
            min_qid = max(next_qid - limits.history, first_live - 1)  # compare with qid > min_qid only
            if w.repeat(dg, min_qid):
                matches.append(0)
                repeats.append(True)
                continue
            if was_flagged:  # exact repeats over the whole history, near-duplicates over the last few
                min_qid = max(min_qid, next_qid - 1 - limits.flagged_window)
            hs = np.asarray(fp, np.int64)
            m = w.best_match(hs, min_qid)
            dup = m >= limits.match_hashes
            db.execute(
                "INSERT INTO queries (cid, qid, ts, digest, dup, fp) VALUES (?, ?, ?, ?, ?, ?)",
                (cid, next_qid, now, dg, int(dup), hs.tobytes()),
            )
            w.add(next_qid, dg, dup, hs)
            matches.append(m)
            repeats.append(False)
            next_qid += 1
        min_qid = max(next_qid - 1 - limits.history, first_live - 1)
        dups = w.near_duplicates(min_qid)
        if any(m >= limits.match_hashes for m in matches) and dups >= limits.flag_after:
            flagged_until = max(flagged_until, now + limits.flag_s)
        if min_qid > trimmed_to + max(1, limits.history // 4):  # the bounds, applied in occasional steps
            db.execute("DELETE FROM queries WHERE cid = ? AND qid <= ?", (cid, min_qid))
            trimmed_to = min_qid
            w.forget_through(min_qid)
        db.execute(
            "UPDATE clients SET next_qid = ?, flagged_until = ?, last_seen = ?, trimmed_to = ? WHERE cid = ?",
            (next_qid, flagged_until, now, trimmed_to, cid),
        )
        self._windows.put(client, w)  # a later request of the same batch finds it
        return Record(matches, repeats, int(dups), float(flagged_until), flagged_until > now, was_flagged)

    def _maybe_sweep(self, now: float, limits: Limits) -> None:
        """Delete what the time bound has expired (at most every few seconds per process)."""
        if now - self._last_sweep < self.SWEEP_EVERY_S or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._last_sweep = now
            db = self._conn()
            cutoff = now - limits.ttl_s
            with self._writer_turn():
                db.execute("BEGIN IMMEDIATE")
                try:
                    expired = db.execute(
                        "SELECT cid, MAX(qid) FROM queries WHERE ts < ? GROUP BY cid", (cutoff,)
                    ).fetchall()
                    for cid, qid in expired:
                        db.execute("DELETE FROM queries WHERE cid = ? AND qid <= ?", (cid, qid))
                    db.execute("DELETE FROM clients WHERE last_seen < ? AND flagged_until < ?", (cutoff, now))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except sqlite3.Error:
            pass  # a busy database: the next sweep will do it
        finally:
            self._sweep_lock.release()

    def flagged_until(self, client: str) -> float:
        try:
            row = (
                self._conn()
                .execute("SELECT flagged_until FROM clients WHERE client = ?", (client,))
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc
        return float(row[0]) if row else 0.0

    def size(self) -> dict[str, int]:
        """Clients, queries and the fingerprint hashes they hold, and the file's bytes (database + write-ahead log)."""
        db = self._conn()
        out = {t: int(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in ("clients", "queries")}
        out["hashes"] = int(db.execute("SELECT COALESCE(SUM(LENGTH(fp)), 0) / 8 FROM queries").fetchone()[0])
        out["bytes"] = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return out

    def ping(self) -> None:
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        """Close this thread's connection; from the thread that opened the store, stop the checkpointer too."""
        if threading.current_thread() is not getattr(self, "_checkpointer", None):
            self._stop.set()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        fd = getattr(self._local, "lock_fd", None)
        if fd is not None:
            os.close(fd)
            self._local.lock_fd = None


def open_store(url: str, timeout_s: float = 0.25) -> HistoryStore:
    """``sqlite:///path`` (or a bare path) -> SQLiteStore; ``redis://`` / ``rediss://`` / ``unix://`` ->
    RedisStore (``timeout_s``: its socket timeouts, short so that a dead Redis costs little before failing open)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, timeout_s=timeout_s)
    if url.startswith(
        "sqlite:///"
    ):  # SQLAlchemy's spelling: sqlite:///relative/path, sqlite:////absolute/path
        return SQLiteStore(url[len("sqlite:///") :])
    if "://" in url:
        raise ValueError(f"query store URL {url!r}: use sqlite:///path or redis://host:port/db")
    return SQLiteStore(url)
