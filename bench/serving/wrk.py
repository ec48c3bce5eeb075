"""The load generator's side of ``bench/serving/serve.py``: Debian's ``wrk`` with a Lua script that posts prepared request
bodies (optionally as many simulated clients, named in ``X-Forwarded-For``), one run's counts and latencies, and
the soak, which samples the server's resident memory while wrk holds its connections open."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path

from bench.serving.proctree import cpu_seconds, rss_mib

# wrk's script: every thread reads the request bodies (one JSON document a line) and posts them in turn; ``done``
# prints the run's counts and latency percentiles as one JSON line.
LUA = r"""
local reqs, n = {}, 0
function init(args)
  local clients = tonumber(args[2]) or 0
  for line in io.lines(args[1]) do
    local headers = {["Content-Type"] = "application/json"}
    if clients > 0 then  -- body i comes from client i mod clients, named the way a trusted proxy would
      local c = #reqs % clients
      headers["X-Forwarded-For"] = "10.77." .. math.floor(c / 250) .. "." .. (c % 250 + 1)
    end
    reqs[#reqs + 1] = wrk.format("POST", nil, headers, line)
  end
  n = math.random(#reqs)
end
"""
# The rest of every wrk script: round robin over the prepared requests, and one JSON line of results at the end.
WRK_TAIL = r"""function request()
  n = n % #reqs + 1
  return reqs[n]
end
function done(s, latency, requests)
  local e = s.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, '
    .. '"timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    s.requests, s.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
LUA += WRK_TAIL


def run_loadgen(cmd: list[str]) -> tuple[str, float]:
    """Run a load generator (wrk, h2load) to its end; (stdout, the CPU seconds it used itself, from wait4)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    reader.join()
    err = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {err.strip()[-500:]}")
    return "".join(chunks), usage.ru_utime + usage.ru_stime


def parse_wrk(out: str) -> dict:
    """wrk's stdout -> the JSON summary the Lua ``done`` hook writes (counts, duration, latency percentiles)."""
    line = next((ln for ln in out.splitlines() if ln.startswith("{")), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary: {out.strip()[-500:]}")
    return json.loads(line)


def figures(r: dict) -> dict:
    """A wrk summary -> requests/s, p50 and p99 (ms) and errors of every kind."""
    return {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50": r["p50_us"] / 1e3,
        "p99": r["p99_us"] / 1e3,
        "errors": r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"],
    }


def wrk(port: int, bodies_file: Path, conc: int, seconds: int, clients: int = 0) -> tuple[dict, float]:
    """One wrk run: its JSON summary (``parse_wrk``) and the CPU seconds wrk itself used."""
    threads = max(1, min(conc, os.cpu_count() or 1))
    cmd = ["wrk", "-t", str(threads), "-c", str(conc), "-d", f"{seconds}s", "--timeout", "30s"]
    cmd += [
        "-s",
        str(bodies_file.with_suffix(".lua")),
        f"http://127.0.0.1:{port}/v1/predict",
        "--",
        str(bodies_file),
        str(clients),
    ]
    out, cpu = run_loadgen(cmd)
    return parse_wrk(out), cpu


def run_cell(port: int, pid: int, bodies_file: Path, conc: int, args: argparse.Namespace) -> dict:
    if args.warmup > 0:
        wrk(port, bodies_file, conc, args.warmup, args.clients)
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    r, client_cpu = wrk(port, bodies_file, conc, args.duration, args.clients)
    wall = time.perf_counter() - t0
    return {**figures(r), "server_cpu": (cpu_seconds(pid) - c0) / wall, "client_cpu": client_cpu / wall}


def soak(port: int, pid: int, bodies_file: Path, args: argparse.Namespace) -> dict:
    """--soak seconds at --soak-concurrency, resident memory sampled every 5 s: the soak's report."""
    wrk(
        port, bodies_file, args.soak_concurrency, 10, args.clients
    )  # warm-up: allocator pools and batch sizes settle
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, rss_mib(pid)))
            stop.wait(5.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    r, _ = wrk(port, bodies_file, args.soak_concurrency, args.soak, args.clients)
    f = figures(r)
    stop.set()
    sampler.join()
    samples.append((time.perf_counter() - t0, rss_mib(pid)))
    socket_errors = r["connect"] + r["read"] + r["write"]
    return {
        "benchmark": "serve",
        "mode": "soak",
        "seconds": args.soak,
        "concurrency": args.soak_concurrency,
        "layout": args.soak_layout,
        "clients": args.clients,
        "images": args.images,
        "requests": r["requests"],
        "rps": f["rps"],
        "errors": f["errors"],
        "status": r["status"],
        "timeout": r["timeout"],
        "socket": socket_errors,
        "p50": f["p50"],
        "p99": f["p99"],
        "rss": [[round(t, 1), round(mib, 1)] for t, mib in samples],
    }
