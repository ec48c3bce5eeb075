"""Serving benchmark: the model's in-process ceiling, then ``lgm serve`` under a native load generator.

In one run on one machine:
1. the in-process ceiling: images/s of ``Detector.score`` on full batches of ``--max-batch-size`` with all
   cores' torch threads (and, for reference, one thread), measured before and after the load cells, since the
   machine's speed drifts; the table compares with their median;
2. for each server layout (``--layouts``, uvicorn workers x torch threads per worker), ``lgm serve`` in a
   subprocess on a free loopback port, then Debian's ``wrk`` (C, event-driven; the Lua script below posts one
   real test digit per request, ``POST /v1/predict`` as JSON with a base64 PNG) at each concurrency:
   throughput, p50 and p99 latency, errors, and the CPU the server and the client each used (CPU seconds per
   second of wall time, so 2.0 is both cores of a 2-core machine).

Every cell is ``--repeats`` runs of ``--duration`` seconds after a short warm-up; the table shows the median
run by throughput (with its latencies and CPU) and the range of throughput over the runs.

``--protocols`` instead compares request formats and servers: ``lgm serve`` against LitServe and MLServer serving
the same ``Detector.score`` (``bench/serving/protocols.py``, ``bench/serving/peers.py``): /v1 base64 PNG JSON, /v2
JSON, /v2 binary UINT8 and gRPC (h2load), with the ceiling in the same run.

``--soak SECONDS`` instead keeps one server under ``--soak-concurrency`` connections for that long and samples
its resident memory (all worker processes) every few seconds: start (after a warm-up), peak, end, errors.

    python bench/serving/serve.py --artifact artifacts/mnist5k
    python bench/serving/serve.py --artifact artifacts/mnist5k --soak 600
    python bench/serving/serve.py --artifact artifacts/mnist5k --protocols      (needs make .venv-peers, h2load)

Needs ``wrk`` (``apt-get install wrk``). Loopback only; every run is bounded in time. Without ``--artifact`` a
1-epoch mnist5k model is trained and calibrated into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench import provenance
from bench.serving import protocols as serve_protocols
from bench.serving import report as serve_report
from bench.serving.common import ceiling, ensure_artifact, free_port, test_images
from bench.serving.wrk import LUA, run_cell, soak
from detector.scoring import Detector
from service.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--artifact", default=None, help="calibrated artifact (default: train a 1-epoch mnist5k model)"
    )
    p.add_argument("--concurrency", default="1,8,32,64", help="comma-separated open connections")
    p.add_argument(
        "--layouts",
        default="default",
        help="server layouts WORKERSxTHREADS, comma-separated (e.g. 1x1,1x2,2x1); 'default': lgm serve's own",
    )
    p.add_argument("--duration", type=int, default=5, help="seconds measured per run")
    p.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured load before each cell")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell (median and range reported)")
    p.add_argument("--max-batch-size", type=int, default=64, help="server max_batch_size and ceiling batch")
    p.add_argument("--max-wait-ms", type=float, default=None, help="server max_wait_ms (default: its own)")
    p.add_argument("--soak", type=int, default=0, help="instead: one soak of this many seconds")
    p.add_argument(
        "--protocols", action="store_true", help="instead: formats and peers (bench/serving/protocols.py)"
    )
    p.add_argument("--servers", default="lgm,litserve,mlserver", help="with --protocols: servers to run")
    p.add_argument("--peer-workers", type=int, default=2, help="with --protocols: LitServe's workers")
    p.add_argument("--soak-concurrency", type=int, default=64, help="connections during the soak")
    p.add_argument("--soak-layout", default="default", help="server layout for the soak")
    p.add_argument(
        "--clients",
        type=int,
        default=0,
        help="simulated clients: body i is sent with X-Forwarded-For naming client i mod N (0: all from one)",
    )
    p.add_argument(
        "--query-policies",
        default="",
        help="comma-separated LGM_QUERY_POLICY values (e.g. off,flag): one server each, up at once, their "
        "cells interleaved so that the machine's drift hits them alike (default: the server's own setting)",
    )
    p.add_argument(
        "--images",
        type=int,
        default=256,
        help="request bodies wrk cycles through; beyond the test split's size the digits repeat, each copy "
        "with a few pixels nudged by 1/255 so that every body is a distinct image (the query-attack "
        "defence treats exact repeats apart, docs/query-attacks.md)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder of report.json + provenance.json (default reports/bench_serve, reports/bench_serve_soak "
        "with --soak, reports/bench_serve_protocols with --protocols)",
    )
    return p.parse_args()


# -- set-up ------------------------------------------------------------------------------------------------------
def parse_layout(text: str) -> tuple[int, int] | None:
    """'WxT' -> (workers, threads); 'default' -> None (lgm serve chooses)."""
    if text == "default":
        return None
    w, t = text.lower().split("x")
    return int(w), int(t)


def start_server(
    art: Path, port: int, layout: tuple[int, int] | None, args: argparse.Namespace, policy: str | None = None
):
    """``lgm serve`` in a subprocess; ``policy``: its query-attack defence (``LGM_QUERY_POLICY``), with the query
    history in a fresh SQLite file (``proc.query_store``)."""
    cmd = [sys.executable, "-m", "service", "serve", str(art), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--max-batch-size", str(args.max_batch_size), "--log-level", "warning", "--device", "cpu"]
    cmd += [
        "--grpc-port",
        "0",
    ]  # HTTP cells only (gRPC is --protocols' part); servers up at once need no port
    if args.max_wait_ms is not None:
        cmd += ["--max-wait-ms", str(args.max_wait_ms)]
    if layout is not None:
        cmd += ["--workers", str(layout[0]), "--threads", str(layout[1])]
    store = Path(tempfile.mkdtemp(prefix="lgm-bench-queries-")) / "history.sqlite3"
    env = {**os.environ, "LGM_QUERY_STORE": f"sqlite:///{store}"}
    if policy:
        env["LGM_QUERY_POLICY"] = policy
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    proc.query_store = store  # type: ignore[attr-defined]
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server not ready within 180 s")


# -- load --------------------------------------------------------------------------------------------------------
def main() -> None:
    args = parse_args()
    t0, code = time.perf_counter(), provenance.checkout()  # the code measured is the code at the start
    if args.protocols:
        if args.max_wait_ms is None:
            args.max_wait_ms = ServeSettings().max_wait_ms
        rep = serve_protocols.run(args)
        finish(args, rep, "reports/bench_serve_protocols", t0, code)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("bench/serving/serve.py needs wrk: apt-get install wrk")
    concs = [int(c) for c in args.concurrency.split(",") if c.strip()]
    art = ensure_artifact(args.artifact)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    det = Detector.load(art, "cpu")
    x, bodies = test_images(det, args.images)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("\n".join(bodies) + "\n")
        bodies_file = Path(f.name)
    bodies_file.with_suffix(".lua").write_text(LUA)

    if args.soak:
        layout = parse_layout(args.soak_layout)
        port = free_port()
        proc = start_server(art, port, layout, args)
        try:
            rep = soak(port, proc.pid, bodies_file, args)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        if proc.query_store.exists():
            from service.stateful.store import SQLiteStore

            rep["store"] = SQLiteStore(proc.query_store).size()
        print()
        print(serve_report.soak_text(rep))
        finish(args, rep, "reports/bench_serve_soak", t0, code)
        return

    ceils_all = [ceiling(det, x, args.max_batch_size, cores)]
    ceil_one = ceiling(det, x, args.max_batch_size, 1)
    torch.set_num_threads(1)
    rows = []
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    policies = [s.strip() for s in args.query_policies.split(",") if s.strip()] or [None]
    for name in layouts:
        layout = parse_layout(name)
        procs = {}
        try:
            for pol in policies:
                port = free_port()
                procs[pol] = (port, start_server(art, port, layout, args, pol))
            for conc in concs:
                runs: dict = {pol: [] for pol in policies}
                for _ in range(max(1, args.repeats)):
                    for pol, (port, proc) in procs.items():
                        r = run_cell(port, proc.pid, bodies_file, conc, args)
                        runs[pol].append(r)
                        print(
                            f"# {name}{f' query_policy={pol}' if pol else ''} concurrency {conc:3d}: "
                            f"{r['rps']:.0f} req/s, p50 {r['p50']:.2f} ms, "
                            f"server {r['server_cpu']:.2f} / client {r['client_cpu']:.2f} cores",
                            flush=True,
                        )
                for pol in policies:
                    rs = sorted(runs[pol], key=lambda r: r["rps"])
                    med = dict(rs[len(rs) // 2])
                    med["range"] = (rs[0]["rps"], rs[-1]["rps"])
                    med["errors"] = sum(r["errors"] for r in rs)
                    med["policy"] = pol
                    if pol != policies[0]:  # throughput against the first policy's run just before it
                        pairs = sorted(
                            a["rps"] / b["rps"] for a, b in zip(runs[pol], runs[policies[0]], strict=True)
                        )
                        med["pair_ratio"] = (statistics.median(pairs), pairs[0], pairs[-1], policies[0])
                        med["pair_ratios"] = (
                            pairs  # every pair, for the median's interval (bench/serving/report.py)
                        )
                    rows.append((name, conc, med))
        finally:
            for _, proc in procs.values():
                proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
                proc.wait(timeout=60)
                store = proc.query_store
                if store.exists():
                    from service.stateful.store import SQLiteStore

                    print(f"# query history after the run ({store}): {SQLiteStore(store).size()}", flush=True)
        ceils_all.append(ceiling(det, x, args.max_batch_size, cores))
        torch.set_num_threads(1)
    default = ServeSettings()
    rep = {
        "benchmark": "serve",
        "mode": "load",
        "model": serve_report.model_facts(det),
        "cores": cores,
        "max_batch_size": args.max_batch_size,
        "default_layout": {"workers": default.server_workers(), "threads": default.torch_threads()},
        "ceiling": {"median": statistics.median(ceils_all), "all": ceils_all, "one_thread": ceil_one},
        "repeats": max(1, args.repeats),
        "duration": args.duration,
        "warmup": args.warmup,
        "images": args.images,
        "clients": args.clients,
        "rows": [{"layout": name, "concurrency": conc, **r} for name, conc, r in rows],
    }
    print()
    print(serve_report.load_table(rep))
    finish(args, rep, "reports/bench_serve", t0, code)


def finish(args: argparse.Namespace, rep: dict, default_out: str, t0: float, code: dict) -> None:
    """Write ``report.json`` and ``provenance.json`` into ``--out`` (or the mode's default folder)."""
    from training.artifacts import atomic_write_json

    out = Path(args.out or default_out)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/serving/serve.py", *sys.argv[1:]])
    atomic_write_json(out / "report.json", rep)
    prov = provenance.write(out, command, time.perf_counter() - t0, None, code)
    print()
    print(f"Command: `{command}`")
    name = out.name.removeprefix("bench_")  # the record names of bench/records/results_serve.py
    print(f"provenance: {prov} (publish: .venv/bin/python bench/records/results.py collect {name} {out})")


if __name__ == "__main__":
    main()
