"""The query history in Redis, for replicas: the same bookkeeping as ``SQLiteStore`` (``service/stateful/store.py``
states the rules), done by one Lua script per request, so it is atomic (Redis runs a script alone) and costs one
round trip.

Keys of one client share the hash tag ``{client}`` (so a Redis Cluster keeps them in one slot):
- ``lgm:q:{c}:meta``   hash: ``next`` (the next query number) and ``flagged_until`` (epoch seconds);
- ``lgm:q:{c}:d``      sorted set: digests of retained queries, scored by time (exact repeats);
- ``lgm:q:{c}:dup``    sorted set: numbers of the near-duplicate queries, scored by time;
- ``lgm:q:{c}:h:<h>``  sorted set per fingerprint hash: the numbers of the queries that have it, scored by time.
Every key expires ``ttl_s`` after its last write (the meta key not before its flag runs out), and every sorted
set is trimmed to the newest ``history`` members: memory is bounded by time and by count, with no sweeper.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import numpy as np

from service.stateful.history import Limits, Record, Request, StoreUnavailable

_LUA = """
local p = ARGV[1]
local now, ttl, hist = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local T, M, fs, n = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local fw = tonumber(ARGV[9])
local meta, dkey, dupkey = KEYS[1], p .. 'd', p .. 'dup'
local nq = tonumber(redis.call('HGET', meta, 'next') or '1')
local fu = tonumber(redis.call('HGET', meta, 'flagged_until') or '0')
local was = 0
if fu > now then was = 1 end
local oldest = '(' .. (now - ttl)
local life = math.ceil(ttl)
redis.call('ZREMRANGEBYSCORE', dkey, '-inf', oldest)
redis.call('ZREMRANGEBYSCORE', dupkey, '-inf', oldest)
local out, i, newdup = {}, 10, false
for _ = 1, n do
  local dg, k = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  if redis.call('ZSCORE', dkey, dg) then
    out[#out + 1] = -1
  else
    local minq, counts, best = nq - hist, {}, 0
    if was == 1 and nq - 1 - fw > minq then minq = nq - 1 - fw end
    for j = i, i + k - 1 do
      local hk = p .. 'h:' .. ARGV[j]
      redis.call('ZREMRANGEBYSCORE', hk, '-inf', oldest)
      for _, q in ipairs(redis.call('ZRANGE', hk, 0, -1)) do
        local qn = tonumber(q)
        if qn > minq then
          local c = (counts[qn] or 0) + 1
          counts[qn] = c
          if c > best then best = c end
        end
      end
    end
    for j = i, i + k - 1 do
      local hk = p .. 'h:' .. ARGV[j]
      redis.call('ZADD', hk, now, nq)
      redis.call('ZREMRANGEBYRANK', hk, 0, -(hist + 1))
      redis.call('EXPIRE', hk, life)
    end
    redis.call('ZADD', dkey, now, dg)
    if best >= T then
      redis.call('ZADD', dupkey, now, nq)
      newdup = true
    end
    out[#out + 1] = best
    nq = nq + 1
  end
  i = i + k
end
redis.call('ZREMRANGEBYRANK', dkey, 0, -(hist + 1))
local dups = 0
for _, q in ipairs(redis.call('ZRANGE', dupkey, 0, -1)) do
  if tonumber(q) > nq - 1 - hist then dups = dups + 1 end
end
if newdup and dups >= M and now + fs > fu then fu = now + fs end
redis.call('HSET', meta, 'next', nq, 'flagged_until', tostring(fu))
redis.call('EXPIRE', meta, math.max(life, math.ceil(fu - now)))
redis.call('EXPIRE', dkey, life)
redis.call('EXPIRE', dupkey, life)
return {dups, tostring(fu), was, out}
"""

PREFIX = "lgm:q:"


def redact(url: str) -> str:
    """The URL without its password (for logs and /readyz)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _tag(client: str) -> str:
    return PREFIX + "{" + client.replace("{", "(").replace("}", ")") + "}:"


class RedisStore:
    """``HistoryStore`` on a Redis server. ``timeout_s`` bounds every connect and reply: a Redis that is down or
    unreachable costs at most that before ``StoreUnavailable`` (and the guard's fail-open) takes over."""

    def __init__(self, url: str, timeout_s: float = 0.25) -> None:
        import redis

        self.url = redact(url)
        self._errors = (redis.RedisError, OSError)
        self._r = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        self._script = self._r.register_script(_LUA)

    def record_many(self, requests: list[Request], now: float, limits: Limits) -> list[Record]:
        """One script call per request, in order (each is atomic; a batch needs no more: Redis has no file
        lock to amortise)."""
        return [self.record(client, fps, dgs, now, limits) for client, fps, dgs in requests]

    def record(
        self, client: str, fingerprints: list[np.ndarray], digests: list[bytes], now: float, limits: Limits
    ) -> Record:
        p = _tag(client)
        args: list[str | int | float] = [
            p,
            repr(now),
            repr(float(limits.ttl_s)),
            limits.history,
            limits.match_hashes,
            limits.flag_after,
            repr(float(limits.flag_s)),
            len(fingerprints),
            limits.flagged_window,
        ]
        for fp, dg in zip(fingerprints, digests, strict=True):
            args += [dg.hex(), len(fp), *(str(int(h)) for h in fp)]
        try:
            dups, fu, was, per_image = self._script(keys=[p + "meta"], args=args)
        except self._errors as exc:
            raise StoreUnavailable(f"redis at {self.url}: {exc}") from exc
        flagged_until = float(fu)
        matches = [max(0, int(m)) for m in per_image]
        repeats = [int(m) < 0 for m in per_image]
        return Record(matches, repeats, int(dups), flagged_until, flagged_until > now, bool(was))

    def flagged_until(self, client: str) -> float:
        try:
            v = self._r.hget(_tag(client) + "meta", "flagged_until")
        except self._errors as exc:
            raise StoreUnavailable(f"redis at {self.url}: {exc}") from exc
        return float(v) if v is not None else 0.0

    def size(self) -> dict[str, int]:
        """Keys in the database and the server's used memory (bytes)."""
        try:
            return {"keys": int(self._r.dbsize()), "bytes": int(self._r.info("memory")["used_memory"])}
        except self._errors as exc:
            raise StoreUnavailable(f"redis at {self.url}: {exc}") from exc

    def ping(self) -> None:
        try:
            self._r.ping()
        except self._errors as exc:
            raise StoreUnavailable(f"redis at {self.url}: {exc}") from exc

    def close(self) -> None:
        self._r.close()
