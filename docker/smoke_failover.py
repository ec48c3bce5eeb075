"""Kill one api replica in the middle of a steady load and check what the load balancer did with it (part of
``make docker-smoke``).

Workers post a real test digit (PNG, multipart ``files``) to ``/v1/predict`` back to back. After ``--before``
seconds the ``--kill`` command runs (``kill -9`` of the replica's processes: a crash, not a clean stop); the
replica is dead once every process in ``--gone`` has exited (a dying process still holds its sockets, and
requests that reach it meanwhile die with it). The load goes on until the replica is back in rotation (its restart policy starts it again and HAProxy's /readyz
checks bring it back), then ``--after`` seconds more. Passes when:

- no request failed but those in flight on the killed replica when it died: each failure names the victim in
  ``X-LGM-Upstream`` (or no replica at all, if the connection broke), started before the replica was dead and
  ended after the kill began. A request sent once it was gone must be answered by another one;
- the other replicas answered all along, with no pause longer than ``--max-pause`` seconds;
- the replica came back (the victim's address, or one not seen before the kill, answered again).

    python docker/smoke_failover.py http://127.0.0.1:8000 --victim 172.18.0.3:8000 --kill 'kill -9 1234' \
        --gone '1234 1250 1261'
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
from collections import Counter
from dataclasses import dataclass

from smoke_predict import post_png


@dataclass(frozen=True)
class Record:
    """One request: when it started and ended (seconds from the start), its status (0: no HTTP answer) and the
    replica that HAProxy named in X-LGM-Upstream (None when there was no answer to read it from)."""

    start: float
    end: float
    status: int
    upstream: str | None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Verdict:
    in_flight: int  # requests on the victim (or on a broken connection) that spanned the kill
    failed_in_flight: int  # failures that were in flight on the victim: the only failures allowed
    lost: list[Record]  # every other failure
    others: Counter  # answers by the other replicas while the victim was out
    max_pause: float  # longest time without any answer while the victim was out
    rejoined_at: float | None  # first answer by the victim (or a new address) after the kill
    rejoined_as: str | None

    def passed(self, max_pause: float, replicas: int) -> bool:
        return (
            not self.lost
            and self.rejoined_at is not None
            and len(self.others) >= replicas - 1
            and self.max_pause <= max_pause
        )


def judge(records: list[Record], kill_start: float, kill_end: float, victim: str) -> Verdict:
    """Sort failures into in flight on the victim at the kill (allowed) and lost (any other), and find when the
    victim answered again. ``kill_start``/``kill_end``: when the kill command began and when the victim was dead
    (every process exited)."""
    before = {r.upstream for r in records if r.ok and r.end <= kill_start}

    def on_victim_at_kill(r: Record) -> bool:
        return r.upstream in (victim, None) and r.start <= kill_end and r.end >= kill_start

    in_flight = sum(on_victim_at_kill(r) and (r.upstream == victim or not r.ok) for r in records)
    failed = [r for r in records if not r.ok]
    allowed = [r for r in failed if on_victim_at_kill(r)]
    lost = [r for r in failed if not on_victim_at_kill(r)]
    back = sorted(
        (
            r
            for r in records
            if r.ok and r.start > kill_end and (r.upstream == victim or r.upstream not in before)
        ),
        key=lambda r: r.end,
    )
    rejoined_at = back[0].end if back else None
    window_end = rejoined_at if rejoined_at is not None else max((r.end for r in records), default=kill_end)
    out = sorted(r.end for r in records if r.ok and kill_start < r.end <= window_end)
    marks = [kill_start, *out, window_end]
    return Verdict(
        in_flight=in_flight,
        failed_in_flight=len(allowed),
        lost=lost,
        others=Counter(
            r.upstream for r in records if r.ok and kill_end < r.end < (rejoined_at or float("inf"))
        ),
        max_pause=max(b - a for a, b in zip(marks, marks[1:], strict=False)),
        rejoined_at=rejoined_at,
        rejoined_as=back[0].upstream if back else None,
    )


def load(url: str, png: bytes, workers: int, stop: threading.Event, t0: float, records: list[Record]) -> None:
    """Run ``workers`` threads posting ``png`` back to back until ``stop`` is set, appending each request's
    Record to ``records`` as it ends (list.append is atomic: the caller may read a snapshot meanwhile)."""

    def worker() -> None:
        while not stop.is_set():
            start = time.perf_counter() - t0
            try:
                _, headers = post_png(url, png, "digit.png")
                status, upstream = 200, headers.get("X-LGM-Upstream")
            except urllib.error.HTTPError as e:
                status, upstream = e.code, e.headers.get("X-LGM-Upstream")
            except OSError:  # the connection broke: no answer, no replica named
                status, upstream = 0, None
            records.append(Record(start, time.perf_counter() - t0, status, upstream))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(timeout=120)


def exited(pid: int) -> bool:
    """The process is gone or a zombie: it has closed every socket it had."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _latency(rs: list[Record]) -> str:
    ms = [(r.end - r.start) * 1000 for r in rs if r.ok]
    return f"latency p50 {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms" if ms else "no answers"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="the load balancer's base URL")
    p.add_argument("--victim", required=True, help="the replica to kill, address:port as in X-LGM-Upstream")
    p.add_argument("--kill", required=True, help="shell command that kills it")
    p.add_argument("--gone", default="", help="host PIDs of its processes: dead once every one has exited")
    p.add_argument("--replicas", type=int, default=3, help="replicas behind the load balancer")
    p.add_argument("--workers", type=int, default=4, help="concurrent clients")
    p.add_argument("--before", type=float, default=5.0, help="seconds of load before the kill")
    p.add_argument("--after", type=float, default=3.0, help="seconds of load once the victim is back")
    p.add_argument("--timeout", type=float, default=180.0, help="longest wait for the victim to come back")
    p.add_argument("--max-pause", type=float, default=5.0, help="longest allowed time without an answer")
    args = p.parse_args()

    from service.images import encode_png
    from training.data import load_dataset

    png = encode_png(load_dataset("mnist5k").test.x[0].numpy())
    url = args.url.rstrip("/") + "/v1/predict"
    stop, t0, records = threading.Event(), time.perf_counter(), []
    runner = threading.Thread(target=load, args=(url, png, args.workers, stop, t0, records))
    runner.start()
    time.sleep(args.before)
    kill_start = time.perf_counter() - t0
    subprocess.run(shlex.split(args.kill), check=True)
    pids = [int(x) for x in args.gone.split()]
    while not all(exited(pid) for pid in pids) and time.perf_counter() - t0 < kill_start + 30:
        time.sleep(0.001)
    kill_end = time.perf_counter() - t0
    deadline = time.perf_counter() + args.timeout
    while (
        time.perf_counter() < deadline
        and judge(list(records), kill_start, kill_end, args.victim).rejoined_at is None
    ):
        time.sleep(0.5)
    time.sleep(args.after)
    stop.set()
    runner.join()
    v = judge(records, kill_start, kill_end, args.victim)

    total = len(records)
    span = max(r.end for r in records)
    print(f"    load: {args.workers} workers posting one real digit each, {total} requests in {span:.1f} s")
    pre = [r for r in records if r.end <= kill_start]
    print(
        f"    before the kill ({kill_start:.1f} s): {len(pre)} answered, by {dict(Counter(r.upstream for r in pre))}"
    )
    print(
        f"    killed {args.victim} at {kill_start:.2f} s ({args.kill}), its {len(pids)} processes gone"
        f" {(kill_end - kill_start) * 1000:.0f} ms later: {v.in_flight} request(s) in flight on it,"
        f" {v.failed_in_flight} failed; other requests lost: {len(v.lost)}"
    )
    for r in v.lost[:10]:
        print(
            f"      LOST: started {r.start:.2f} s, ended {r.end:.2f} s, status {r.status}, via {r.upstream}"
        )
    end = v.rejoined_at if v.rejoined_at is not None else span
    during = [r for r in records if kill_end < r.end <= end]
    print(
        f"    while it was out ({end - kill_end:.1f} s): {sum(r.ok for r in during)} answered, by"
        f" {dict(v.others)}; longest pause between answers {v.max_pause:.2f} s; {_latency(during)}"
    )
    if v.rejoined_at is None:
        print(f"    it did not come back within {args.timeout:.0f} s")
    else:
        after = [r for r in records if r.start > v.rejoined_at]
        print(
            f"    back in rotation as {v.rejoined_as} at {v.rejoined_at:.1f} s ({v.rejoined_at - kill_end:.1f} s"
            f" after the kill); after: {len(after)} answered, by {dict(Counter(r.upstream for r in after))},"
            f" {_latency(after)}"
        )
    ok = v.passed(args.max_pause, args.replicas)
    if not ok:
        print("smoke_failover: FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
