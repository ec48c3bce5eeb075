"""bench/serving/loadgen.py's h2load reading: p50 and p99 come from the per-request log of this run alone (h2load
opens ``--log-file`` with O_APPEND, so a log left by an earlier run must not be counted), and the log must hold
the requests the summary counts as done. The summary's "time for request" line has min/max/mean/sd only."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.serving import loadgen

# h2load's stdout for a 2 s gRPC run at one connection (nghttp2 1.52), cut to the lines that are read; 5 requests
SUMMARY = """starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 2.50 req/s, 1.21KB/s
requests: 5 total, 6 started, 5 done, 5 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 5 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 2.42KB (2478) total, 390B (390) headers (space savings 72.14%), 1.76KB (1800) data
                     min         max         mean         sd        +/- sd
time for request:     1.50ms      4.90ms      2.50ms      1.24ms    80.00%
time for connect:      122us       122us       122us         0us   100.00%
time to 1st byte:     1.70ms      1.70ms      1.70ms         0us   100.00%
req/s           :       2.50        2.50        2.50        0.00   100.00%
"""
# its --log-file: start (us since the epoch), status, microseconds to the end of the response
LOG = "".join(f"17650000{i:08d}\t200\t{us}\n" for i, us in enumerate([1500, 1800, 2000, 2300, 4900]))


def test_p50_and_p99_are_the_log_percentiles_not_the_summary_mean():
    r = loadgen.parse_h2load(SUMMARY, LOG)
    assert r == {"rps": 2.5, "p50": 2.0, "p99": 4.9, "errors": 0}


def test_a_log_that_disagrees_with_the_summary_is_refused():
    with pytest.raises(SystemExit, match="log has 10 requests, its summary 5 done"):
        loadgen.parse_h2load(SUMMARY, LOG + LOG)


def test_each_run_reads_its_own_requests_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A run of a slow server, then one of a fast server, in the same folder (as serve.py --protocols does for
    both engines and every concurrency): the second run's p50 is the fast server's."""
    slow = "".join(f"17650000{i:08d}\t200\t{9000 + i}\n" for i in range(5))

    def fake_run(cmd: list[str]) -> tuple[str, float]:
        log = Path(cmd[cmd.index("--log-file") + 1])
        with log.open("a") as f:  # as h2load opens it: O_APPEND, never truncated
            f.write(runs.pop(0))
        return SUMMARY, 0.1

    runs = [slow, LOG]
    monkeypatch.setattr(loadgen, "run_loadgen", fake_run)
    first = loadgen.h2load(1, tmp_path / "grpc.bin", 1, 2, tmp_path)
    second = loadgen.h2load(1, tmp_path / "grpc.bin", 1, 2, tmp_path)
    assert first["p50"] == 9.002
    assert second["p50"] == 2.0 and second["p99"] == 4.9
