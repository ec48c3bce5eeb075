"""A worker's in-memory index of one client's retained queries, mirrored from the shared SQLite store.

Blacklight's test (Li et al., USENIX Security 2022) asks, for each new query, how many fingerprint hashes it
shares with the most similar retained query of the same client. Kept in SQLite as one row per hash, that costs
about fifty randomly placed B-tree inserts per query, and writing those pages out at commit was most of the
defence's cost per request (docs/query-attacks.md, "Serving cost"). So the shared store keeps one row per query
(its fingerprint as a blob) and each worker answers the question from this index, which it brings up to date
inside the store's write transaction (it reads the rows other workers added since it last looked). The shared
file stays the one source of truth: a worker that restarts, or evicts a client, rebuilds the index from it.

The index: every retained hash with its query number, sorted by hash (``numpy.searchsorted`` finds the queries
that share each of a new query's hashes), plus a short tail of the latest queries, merged into the sorted
part every ``TAIL`` queries (an insert into sorted arrays, not a re-sort). Lookups ignore queries at or below the caller's lower bound, so rows the
store has trimmed or expired need not be removed at once; they go at the next fold.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

import numpy as np

TAIL = 64  # queries kept unsorted before a fold


class ClientWindow:
    """One client's retained queries: their numbers, exact-content digests, near-duplicate marks and hashes."""

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.last_qid = 0  # the highest query number this index has seen
        self.digests: dict[bytes, int] = {}  # digest -> latest query number with it
        self._dups: list[int] = []  # numbers of the near-duplicate queries, ascending
        self._h = np.empty(0, np.int64)  # sorted hashes
        self._q = np.empty(0, np.int64)  # their query numbers
        self._tail_h: list[np.ndarray] = []  # the latest queries' hashes, not yet merged
        self._tail_q: list[np.ndarray] = []
        self._floor = 0  # queries at or below this are gone from the store
        self._compacted = 0  # the floor when stale entries were last dropped from the sorted part
        self._pruned = 0  # the floor when stale digests and marks were last dropped

    def add(self, qid: int, digest: bytes, dup: bool, hashes: np.ndarray) -> None:
        h = np.asarray(hashes, np.int64)
        self.last_qid = max(self.last_qid, qid)
        self.digests[digest] = qid
        if dup:
            self._dups.append(qid)
        self._tail_h.append(h)
        self._tail_q.append(np.full(len(h), qid, np.int64))
        if len(self._tail_h) >= TAIL:
            self._fold()

    def _fold(self) -> None:
        """Merge the tail into the sorted part (an O(n) insert, not a re-sort); drop stale entries now and then."""
        th, tq = np.concatenate(self._tail_h), np.concatenate(self._tail_q)
        order = np.argsort(th, kind="stable")
        th, tq = th[order], tq[order]
        at = np.searchsorted(self._h, th)
        self._h, self._q = np.insert(self._h, at, th), np.insert(self._q, at, tq)
        self._tail_h, self._tail_q = [], []
        if self._floor - self._compacted >= TAIL:
            keep = self._q > self._floor
            self._h, self._q, self._compacted = self._h[keep], self._q[keep], self._floor

    @property
    def size(self) -> int:
        """Hashes held (sorted part and tail)."""
        return len(self._h) + sum(len(h) for h in self._tail_h)

    def forget_through(self, qid: int) -> None:
        """Queries numbered ``qid`` or below are gone from the store (trimmed or expired). Lookups take a lower
        bound at or above this one, so stale entries are harmless; they are dropped in steps, not per query."""
        if qid <= self._floor:
            return
        self._floor = qid
        if self._floor - self._pruned >= TAIL:
            self.digests = {d: q for d, q in self.digests.items() if q > qid}
            del self._dups[: bisect.bisect_right(self._dups, qid)]
            self._pruned = qid

    def repeat(self, digest: bytes, above: int) -> bool:
        """Whether a query numbered above ``above`` had exactly this content."""
        return self.digests.get(digest, 0) > above

    def near_duplicates(self, above: int) -> int:
        """Near-duplicate queries numbered above ``above``."""
        return len(self._dups) - bisect.bisect_right(self._dups, above)

    def best_match(self, hashes: np.ndarray, above: int) -> int:
        """Most hashes ``hashes`` (distinct) shares with one query numbered above ``above``."""
        fp = np.sort(np.asarray(hashes, np.int64))  # the fingerprinter sorts them as unsigned
        if not len(fp):
            return 0
        found = []
        if len(self._h):
            lo = np.searchsorted(self._h, fp, "left")
            hi = np.searchsorted(self._h, fp, "right")
            hit = hi > lo
            found = [self._q[a:b] for a, b in zip(lo[hit].tolist(), hi[hit].tolist(), strict=True)]
        if self._tail_h:
            th, tq = np.concatenate(self._tail_h), np.concatenate(self._tail_q)
            pos = np.minimum(np.searchsorted(fp, th), len(fp) - 1)
            found.append(tq[fp[pos] == th])
        if not found:
            return 0
        qids = np.concatenate(found)
        qids = qids[qids > above]
        if not len(qids):
            return 0
        return int(np.bincount(qids - qids.min()).max())


class WindowCache:
    """Clients' windows in one process, bounded by the hashes they hold together (``max_hashes``; 16 bytes each),
    least recently used out first. A client evicted here is rebuilt from the store at its next query: the bound
    is on memory, not on what the defence remembers."""

    def __init__(self, max_hashes: int = 4_000_000) -> None:
        self.max_hashes = max_hashes
        self._windows: OrderedDict[str, ClientWindow] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.total = 0

    def get(self, client: str, cid: int, next_qid: int) -> ClientWindow | None:
        """The client's window if it is cached and consistent with the store's row (same id, no query from the
        future: a swept and re-created client gets a new, empty window)."""
        w = self._windows.get(client)
        if w is None or w.cid != cid or w.last_qid >= next_qid:
            self._drop(client)
            return None
        self._windows.move_to_end(client)
        return w

    def put(self, client: str, window: ClientWindow) -> None:
        """Cache (or re-measure) ``client``'s window, then evict the least recently used others over the bound."""
        self._drop(client)
        self._windows[client] = window
        self._sizes[client] = window.size
        self.total += window.size
        while self.total > self.max_hashes and len(self._windows) > 1:
            self._drop(next(iter(self._windows)))

    def _drop(self, client: str) -> None:
        if self._windows.pop(client, None) is not None:
            self.total -= self._sizes.pop(client)

    def clear(self) -> None:
        self._windows.clear()
        self._sizes.clear()
        self.total = 0
