"""``bench/serving/serve.py --protocols``: ``lgm serve`` against the servers a user would run instead, per request format,
in one run on one machine, with the model's in-process ceiling measured between the servers.

Formats (each request carries one real test digit; wrk or h2load on loopback drive the load):
- ``v1``: ``POST /v1/predict`` JSON with a base64 PNG (LitServe: the same body on its ``/predict``);
- ``v2 json``: the Open Inference Protocol's JSON body, an FP32 tensor in [0, 1] (MLServer's native route,
  LitServe's ``/predict`` decoding the same body);
- ``v2 binary``: the binary tensor data extension, a UINT8 tensor, every output asked for as raw bytes (as
  tritonclient does by default); no peer speaks it;
- ``grpc``: ``inference.GRPCInferenceService/ModelInfer`` with the UINT8 tensor in ``raw_input_contents``, driven by
  h2load (nghttp2's HTTP/2 load generator: a gRPC call is one HTTP/2 POST with a 5-byte length prefix); MLServer
  serves it too. A gRPC error arrives as HTTP 200 with a grpc-status trailer, which h2load does not read: each
  server's answer to the exact body is checked with a real gRPC client first, and the body never changes.

Peers (``bench/serving/peers.py``, in ``.venv-peers``, ``make .venv-peers``): LitServe with ``--peer-workers``
worker processes, MLServer with a custom runtime; both batch dynamically with the same maximum batch and wait.

With ``--engines torch,onnxruntime``, ``lgm`` is one server per engine (``lgm serve --engine``), up at once, each
cell's runs interleaved across them (``bench/serving/paired.py``) and each engine's in-process ceiling measured
in the same rounds; the load generators are ``bench/serving/loadgen.py``'s.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.serving import common, paired
from bench.serving import report as serve_report
from bench.serving.loadgen import LUA, h2load, write_wrk_files, wrk
from bench.serving.proctree import cpu_seconds, tree

ROOT = Path(__file__).resolve().parents[2]
PEERS_PY = ROOT / ".venv-peers" / "bin" / "python"


# -- request bodies -------------------------------------------------------------------------------------------------
def bodies(u8: np.ndarray) -> dict[str, list[tuple[bytes, str, str]]]:
    """Per format, one (body, header name, header value) per digit; ``u8``: (N, C, H, W) uint8."""
    from service.images import encode_png

    shape = [1, *u8.shape[1:]]
    out: dict[str, list[tuple[bytes, str, str]]] = {"v1": [], "v2 json": [], "v2 binary": []}
    for img in u8:
        png = base64.b64encode(encode_png(img)).decode()
        out["v1"].append(
            (json.dumps({"instances": [{"b64": png}]}).encode(), "Content-Type", "application/json")
        )
        data = (img.astype(np.float32) * np.float32(1 / 255)).reshape(-1).tolist()
        doc = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}
        out["v2 json"].append((json.dumps(doc).encode(), "Content-Type", "application/json"))
        head = {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": img.size},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
        h = json.dumps(head).encode()
        out["v2 binary"].append((h + img.tobytes(), "Inference-Header-Content-Length", str(len(h))))
    return out


def grpc_body(img: np.ndarray) -> bytes:
    """One ModelInfer request (UINT8 raw contents) framed as a gRPC message: flag byte, 4-byte length, bytes."""
    from service.grpc_server import M

    req = M["ModelInferRequest"](model_name="lgm")
    req.inputs.add(name="input", datatype="UINT8", shape=[1, *img.shape])
    req.raw_input_contents.append(img.tobytes())
    raw = req.SerializeToString()
    return b"\0" + len(raw).to_bytes(4, "big") + raw


# -- servers -------------------------------------------------------------------------------------------------------
def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise SystemExit(f"not ready within {seconds:.0f} s: {url}")


def start(
    kind: str, art: Path, args: argparse.Namespace, engine: str | None = None
) -> tuple[subprocess.Popen, int, int]:
    """A server of ``kind`` on free loopback ports: (process, HTTP port, gRPC port or 0); ``engine``: lgm serve's
    ``--engine`` (None: its default)."""
    port, gport = common.free_port(), common.free_port()
    wait = ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    if kind == "lgm":
        cmd = [
            sys.executable,
            "-m",
            "service",
            "serve",
            str(art),
            "--port",
            str(port),
            "--grpc-port",
            str(gport),
        ]
        cmd += ["--engine", engine] if engine else []
        proc = subprocess.Popen([*cmd, *wait, "--log-level", "warning", "--device", "cpu"], cwd=ROOT)
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        return proc, port, gport
    peer = [str(PEERS_PY), str(ROOT / "bench" / "serving" / "peers.py"), kind, str(art), str(port), *wait]
    if kind == "litserve":
        proc = subprocess.Popen(
            [*peer, "--workers", str(args.peer_workers)], cwd=ROOT, stdout=subprocess.DEVNULL
        )
        wait_ready(f"http://127.0.0.1:{port}/health", proc)
        return proc, port, 0
    proc = subprocess.Popen(
        [*peer, "--grpc-port", str(gport)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_ready(f"http://127.0.0.1:{port}/v2/models/lgm/ready", proc)
    return proc, port, gport


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server and wait for every process of its tree (LitServe's idle workers poll: none may stay)."""
    pids = tree(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    deadline = time.time() + 20
    for pid in pids[1:]:
        while Path(f"/proc/{pid}").exists() and time.time() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, 9)


def check_grpc(gport: int, img: np.ndarray, want: int) -> None:
    """The gRPC body's answer, through a real client: the load then repeats a call known to succeed."""
    import tritonclient.grpc as tgrpc

    c = tgrpc.InferenceServerClient(f"127.0.0.1:{gport}")
    inp = tgrpc.InferInput("input", [1, *img.shape], "UINT8")
    inp.set_data_from_numpy(img[None])
    got = int(c.infer("lgm", [inp]).as_numpy("class")[0])
    assert got == want, f"gRPC answered class {got}, expected {want}"
    c.close()


# -- the run -------------------------------------------------------------------------------------------------------
PLAN = {  # server -> formats it serves, and the HTTP path of each
    "lgm": {
        "v1": "/v1/predict",
        "v2 json": "/v2/models/lgm/infer",
        "v2 binary": "/v2/models/lgm/infer",
        "grpc": "",
    },
    "litserve": {"v1": "/predict", "v2 json": "/predict"},
    "mlserver": {"v2 json": "/v2/models/lgm/infer", "grpc": ""},
}


def measure(started: tuple, fmt: str, files, conc: int, secs: int, tmp: Path) -> dict:  # noqa: ANN001
    """One run of ``secs`` seconds against one server (``start``'s triple): wrk over ``files``, or h2load for
    gRPC; with the CPU the server and the client used, per second of wall time."""
    proc, port, gport = started
    c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
    if fmt == "grpc":
        r = h2load(gport, tmp / "grpc.bin", conc, secs, tmp)
    else:
        r = wrk(port, files, tmp / "bodies.lua", conc, secs)
    wall = time.perf_counter() - t0
    r["server_cpu"] = (cpu_seconds(proc.pid) - c0) / wall
    r["client_cpu"] = r.pop("client_cpu_s") / wall
    return r


def run(args: argparse.Namespace) -> dict:
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"bench/serving/serve.py --protocols needs {tool}: apt-get install wrk nghttp2-client"
            )
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if any(s != "lgm" for s in servers) and not PEERS_PY.exists():
        raise SystemExit("the peers need their own environment: make .venv-peers")
    engines = common.engine_list(args.engines)
    concs = [int(c) for c in args.concurrency.split(",") if c.strip()]
    art = common.ensure_artifact(args.artifact)
    from detector.scoring import Detector

    det = Detector.load(art, "cpu")
    x, _ = common.test_images(det)
    u8 = (x * 255).round().to(dtype=__import__("torch").uint8).numpy()
    want = int(det.score(x[:1]).pred[0])
    cores = len(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp(prefix="lgm-bench-"))
    (tmp / "bodies.lua").write_text(LUA)
    per_format = bodies(u8)
    (tmp / "grpc.bin").write_bytes(grpc_body(u8[0]))

    ceils = common.Ceilings(det, x, args.max_batch_size, cores, engines)
    rows = []
    for kind in servers:
        # lgm: one server per engine, up at once, each cell's runs interleaved (bench/serving/paired.py)
        keys = [(kind, e) for e in (engines or [None])] if kind == "lgm" else [(kind, None)]
        base = keys[0] if len(keys) > 1 else None
        started: dict = {}
        try:
            for key in keys:
                started[key] = start(kind, art, args, key[1])
                if "grpc" in PLAN[kind]:
                    check_grpc(started[key][2], u8[0], want)
            for fmt, path in PLAN[kind].items():
                files = (
                    None
                    if fmt == "grpc"
                    else write_wrk_files(tmp, fmt.replace(" ", "_"), per_format[fmt], path)
                )
                for conc in concs:

                    def cell(
                        key: tuple,
                        secs: int = args.duration,
                        srv: dict = started,
                        at: tuple = (fmt, files, conc),
                    ) -> dict:
                        return measure(srv[key], *at, secs, tmp)

                    warm = (lambda key, cell=cell: cell(key, args.warmup)) if args.warmup else None
                    runs = paired.interleave(keys, cell, args.repeats, warm)
                    for (_, engine), med in paired.rows(runs, base, lambda k: k[1]):
                        tag = {"engine": engine} if engine else {}
                        rows.append({"server": kind, **tag, "format": fmt, "concurrency": conc, **med})
                        print(
                            f"# {kind + (f' ({engine})' if engine else ''):8s} {fmt:9s} c={conc:3d}: "
                            f"{med['rps']:7.0f} req/s, p50 {med['p50']:.2f} ms, p99 {med['p99']:.2f} ms, "
                            f"server {med['server_cpu']:.2f} / client {med['client_cpu']:.2f} cores, "
                            f"{med['errors']} errors",
                            flush=True,
                        )
        finally:
            for proc, _, _ in started.values():
                stop(proc)
        ceils.measure()
    return report(args, det, cores, ceils.report(), engines, rows)


def report(args: argparse.Namespace, det, cores: int, ceiling: dict, engines, rows: list[dict]) -> dict:  # noqa: ANN001
    """The run's report (bench/serving/report.py's protocols_table and protocols_targets render it)."""
    from service.settings import ServeSettings

    d = ServeSettings()
    return {
        "benchmark": "serve",
        "mode": "protocols",
        "model": serve_report.model_facts(det),
        "cores": cores,
        "servers": args.servers,
        "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "peer_workers": args.peer_workers,
        "default_layout": {"workers": d.server_workers(), "threads": d.torch_threads()},
        "query_policy": d.query_policy,
        "ceiling": ceiling,
        "engines": engines,
        "repeats": max(1, args.repeats),
        "duration": args.duration,
        "warmup": args.warmup,
        "rows": rows,
    }
