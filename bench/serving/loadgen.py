"""The load generators of ``bench/serving/serve.py --protocols``: Debian's ``wrk`` posting prepared bodies of any
request format (a data file and an index of offsets, paths and one header each), and nghttp2's ``h2load``
repeating one gRPC call (one HTTP/2 POST with a 5-byte length prefix). Each returns one run's throughput, p50 and
p99 latency, errors, and the CPU seconds the generator itself used."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bench.serving.wrk import WRK_TAIL, figures, parse_wrk, run_loadgen

GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"

# wrk: every thread reads the request bodies (one data file, one index line per body: offset, length, path and
# one header) and posts them in turn; ``done`` prints counts and latency percentiles as one JSON line.
LUA = r"""
local reqs, n = {}, 0
function init(args)
  local f = io.open(args[1], "rb")
  local data = f:read("*a")
  f:close()
  for line in io.lines(args[2]) do
    local off, len, path, hn, hv = line:match("^(%d+) (%d+) (%S+) (%S+) (%S+)$")
    reqs[#reqs + 1] = wrk.format("POST", path, {[hn] = hv}, data:sub(off + 1, off + len))
  end
  n = math.random(#reqs)
end
"""
LUA += WRK_TAIL


def write_wrk_files(
    tmp: Path, name: str, items: list[tuple[bytes, str, str]], path: str
) -> tuple[Path, Path]:
    """The data file and index ``LUA`` reads: (body, header name, header value) items posted to ``path``."""
    data, index, off = tmp / f"{name}.bin", tmp / f"{name}.idx", 0
    with data.open("wb") as d, index.open("w") as ix:
        for body, hn, hv in items:
            d.write(body)
            ix.write(f"{off} {len(body)} {path} {hn} {hv}\n")
            off += len(body)
    return data, index


def wrk(port: int, files: tuple[Path, Path], lua: Path, conc: int, secs: int) -> dict:
    """One wrk run over the bodies in ``files`` (``write_wrk_files``), ``lua`` holding ``LUA``."""
    threads = max(1, min(conc, os.cpu_count() or 1))
    cmd = ["wrk", "-t", str(threads), "-c", str(conc), "-d", f"{secs}s", "--timeout", "30s", "-s", str(lua)]
    out, cpu = run_loadgen([*cmd, f"http://127.0.0.1:{port}", "--", str(files[0]), str(files[1])])
    return {**figures(parse_wrk(out)), "client_cpu_s": cpu}


def h2load(port: int, body: Path, conc: int, secs: int, tmp: Path) -> dict:
    """One h2load run repeating the gRPC call in ``body``; latencies from its per-request log in ``tmp``.

    h2load opens ``--log-file`` with O_APPEND: the log left by the previous run is removed first, or every run's
    percentiles would be those of all the runs before it too (both engines, every concurrency)."""
    threads = max(1, min(conc, os.cpu_count() or 1))
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)
    cmd = ["h2load", "-D", str(secs), "-c", str(conc), "-m", "1", "-t", str(threads), "-d", str(body)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", str(log)]
    out, cpu = run_loadgen([*cmd, f"http://127.0.0.1:{port}{GRPC_PATH}"])
    return {**parse_h2load(out, log.read_text()), "client_cpu_s": cpu}


def parse_h2load(out: str, log: str) -> dict:
    """Throughput and errors from h2load's summary ``out``; p50 and p99 from its per-request ``log`` (one line a
    request: start time, status, microseconds to the end of the response). The summary's "time for request" line
    has min, max, mean and sd, no percentiles. The log must hold exactly the requests the summary counts as done."""
    m = re.search(r"finished in ([\d.]+)m?s, ([\d.]+) req/s", out)
    req = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
        out,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and req and codes):
        raise SystemExit(f"h2load output not understood:\n{out[-800:]}")
    durations = sorted(int(ln.split("\t")[2]) for ln in log.splitlines() if ln.count("\t") == 2)
    if not durations or len(durations) != int(req.group(3)):
        raise SystemExit(f"h2load's log has {len(durations)} requests, its summary {req.group(3)} done")
    pick = lambda q: durations[min(len(durations) - 1, int(q * len(durations)))] / 1e3  # noqa: E731
    errors = (
        int(req.group(5))
        + int(req.group(6))
        + int(req.group(7))
        + sum(int(codes.group(i)) for i in (2, 3, 4))
    )
    return {"rps": float(m.group(2)), "p50": pick(0.5), "p99": pick(0.99), "errors": errors}
