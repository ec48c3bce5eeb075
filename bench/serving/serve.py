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

``--engines torch,onnxruntime`` compares ``lgm serve``'s scoring engines (``lgm serve --engine``): one server per
engine, all up at once, their runs of each cell interleaved (``bench/serving/paired.py``, as ``--query-policies``
does for policies) so that the machine's drift hits them alike, and each engine's in-process ceiling measured in
the same rounds (``bench/serving/engines.py``'s scorers). The report gets an engine column and, per cell, the
ratio of each engine to the first (throughput and p50, median over the pairs of runs). On /v1 alone (wrk) it is
the load test below; with ``--protocols --servers lgm`` the same engines answer /v1, /v2 JSON, /v2 binary and
gRPC: the command for p50 at concurrency 1 and throughput at 32 of both engines on every protocol is the second
one below. Without ``--engines`` the server's default engine runs, not named, as before.

``--soak SECONDS`` instead keeps one server under ``--soak-concurrency`` connections for that long and samples
its resident memory (all worker processes) every few seconds: start (after a warm-up), peak, end, errors.

    python bench/serving/serve.py --artifact artifacts/mnist5k
    python bench/serving/serve.py --artifact artifacts/mnist5k --soak 600
    python bench/serving/serve.py --artifact artifacts/mnist5k --protocols      (needs make .venv-peers, h2load)
    python bench/serving/serve.py --artifact models/mnist-robust --engines torch,onnxruntime --concurrency 1,32
    python bench/serving/serve.py --artifact models/mnist-robust --engines torch,onnxruntime --protocols \
        --servers lgm --concurrency 1,32

Needs ``wrk`` (``apt-get install wrk``; ``--protocols`` also h2load, ``nghttp2-client``). Loopback only; every run is bounded in time. Without ``--artifact`` a
1-epoch mnist5k model is trained and calibrated into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench import provenance
from bench.serving import paired
from bench.serving import protocols as serve_protocols
from bench.serving import report as serve_report
from bench.serving.common import Ceilings, engine_list, ensure_artifact, free_port, test_images
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
        "--engines",
        default="",
        help="comma-separated lgm serve --engine values (torch,onnxruntime): one server each, up at once, their "
        "cells interleaved, each engine's in-process ceiling in the same rounds, ratios to the first engine "
        "(default: the server's own engine, not passed)",
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
    art: Path,
    port: int,
    layout: tuple[int, int] | None,
    args: argparse.Namespace,
    policy: str | None = None,
    engine: str | None = None,
):
    """``lgm serve`` in a subprocess; ``policy``: its query-attack defence (``LGM_QUERY_POLICY``), with the query
    history in a fresh SQLite file (``proc.query_store``); ``engine``: its ``--engine`` (None: its default)."""
    cmd = [sys.executable, "-m", "service", "serve", str(art), "--host", "127.0.0.1", "--port", str(port)]
    if engine is not None:
        cmd += ["--engine", engine]
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
    engines = engine_list(args.engines)  # a wrong name stops here, before any set-up
    if args.soak and engines and len(engines) > 1:
        raise SystemExit("--soak runs one server: give --engines one engine")
    if args.protocols:
        if args.max_wait_ms is None:
            args.max_wait_ms = ServeSettings().max_wait_ms
        rep = serve_protocols.run(args)
        text = serve_report.protocols_table(rep) + "\n\n" + serve_report.protocols_targets(rep)
        finish(args, rep, "reports/bench_serve_protocols", t0, code, text)
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
        proc = start_server(art, port, layout, args, engine=engines[0] if engines else None)
        try:
            rep = soak(port, proc.pid, bodies_file, args)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        if proc.query_store.exists():
            from service.stateful.store import SQLiteStore

            rep["store"] = SQLiteStore(proc.query_store).size()
        finish(args, rep, "reports/bench_serve_soak", t0, code, serve_report.soak_text(rep))
        return

    policies = [s.strip() for s in args.query_policies.split(",") if s.strip()] or [None]
    if engines and len(engines) > 1 and len(policies) > 1:
        raise SystemExit("--engines and --query-policies: compare one of the two at a time")
    ceils = Ceilings(det, x, args.max_batch_size, cores, engines)
    # One server per (engine, policy); with several, each run is paired with the first one's run just before it.
    variants = [(e, p) for e in (engines or [None]) for p in policies]
    base = variants[0] if len(variants) > 1 else None
    by_engine = engines is not None and len(engines) > 1
    rows = []
    for name in [s.strip() for s in args.layouts.split(",") if s.strip()]:
        layout = parse_layout(name)
        procs = {}
        try:
            for engine, pol in variants:
                port = free_port()
                procs[engine, pol] = (port, start_server(art, port, layout, args, pol, engine))
            for conc in concs:

                def cell(v: tuple, conc: int = conc, name: str = name, procs: dict = procs) -> dict:
                    port, proc = procs[v]
                    r = run_cell(port, proc.pid, bodies_file, conc, args)
                    tags = (f" engine={v[0]}" if v[0] else "") + (f" query_policy={v[1]}" if v[1] else "")
                    print(
                        f"# {name}{tags} concurrency {conc:3d}: {r['rps']:.0f} req/s, p50 {r['p50']:.2f} ms, "
                        f"server {r['server_cpu']:.2f} / client {r['client_cpu']:.2f} cores",
                        flush=True,
                    )
                    return r

                runs = paired.interleave(variants, cell, args.repeats)
                for (engine, pol), row in paired.rows(runs, base, lambda v: v[0] if by_engine else v[1]):
                    row["policy"] = pol
                    if engine is not None:
                        row["engine"] = engine
                    rows.append((name, conc, row))
        finally:
            for _, proc in procs.values():
                proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
                proc.wait(timeout=60)
                store = proc.query_store
                if store.exists():
                    from service.stateful.store import SQLiteStore

                    print(f"# query history after the run ({store}): {SQLiteStore(store).size()}", flush=True)
        ceils.measure()
    default = ServeSettings()
    rep = {
        "benchmark": "serve",
        "mode": "load",
        "model": serve_report.model_facts(det),
        "cores": cores,
        "max_batch_size": args.max_batch_size,
        "default_layout": {"workers": default.server_workers(), "threads": default.torch_threads()},
        "ceiling": ceils.report(),
        "engines": engines,
        "repeats": max(1, args.repeats),
        "duration": args.duration,
        "warmup": args.warmup,
        "images": args.images,
        "clients": args.clients,
        "rows": [{"layout": name, "concurrency": conc, **r} for name, conc, r in rows],
    }
    finish(args, rep, "reports/bench_serve", t0, code, serve_report.load_table(rep))


def finish(args: argparse.Namespace, rep: dict, default_out: str, t0: float, code: dict, text: str) -> None:
    """Print the run's tables (``text``, bench/serving/report.py's), and write them as ``report.md`` beside
    ``report.json`` and ``provenance.json`` into ``--out`` (or the mode's default folder)."""
    from training.artifacts import atomic_write_bytes, atomic_write_json

    print()
    print(text)
    out = Path(args.out or default_out)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/serving/serve.py", *sys.argv[1:]])
    atomic_write_json(out / "report.json", rep)
    atomic_write_bytes(out / "report.md", f"{text}\n\nCommand: `{command}`\n".encode())
    prov = provenance.write(out, command, time.perf_counter() - t0, None, code)
    print()
    print(f"Command: `{command}`")
    name = out.name.removeprefix("bench_")  # the record names of bench/records/results_serve.py
    print(f"provenance: {prov} (publish: .venv/bin/python bench/records/results.py collect {name} {out})")


if __name__ == "__main__":
    main()
