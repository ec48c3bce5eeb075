"""Serving benchmark: the model's in-process ceiling, then a real uvicorn server under a real HTTP client.

In one run on one machine:
1. the in-process batched throughput of ``Detector.score`` (images/s at ``--max-batch-size``): the ceiling, at
   the torch thread count the server uses (and, for reference, at all cores);
2. ``lgm serve`` in a subprocess on a free loopback port, then client threads (``http.client``, keep-alive)
   posting one real test image per request (``POST /v1/predict``, JSON with a base64 PNG) at each concurrency, with coalescing on and
   off: throughput, p50 and p99 latency, errors.

Targets (issue 4): at concurrency 32 the server delivers >= 60% of the ceiling; p50 at concurrency 1 < 10 ms for
the MNIST model on the CPU. Everything is bounded: ``--duration`` seconds per run (plus a short warm-up),
``--repeats`` runs per cell (the table shows the median run and the range, since a shared CPU is noisy),
loopback only. Without ``--artifact`` a 1-epoch mnist5k model is trained and calibrated into a temp folder.

    python bench/serve.py --artifact runs/mnist --duration 3
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.scoring import Detector  # noqa: E402
from service.images import encode_png  # noqa: E402
from service.settings import ServeSettings  # noqa: E402
from training.data import load_dataset  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--artifact", default=None, help="calibrated artifact (default: train a 1-epoch mnist5k model)"
    )
    p.add_argument("--concurrency", default="1,8,32,64", help="comma-separated client concurrencies")
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per cell")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of unmeasured load before each cell")
    p.add_argument("--max-requests", type=int, default=20000, help="stop a cell after this many requests")
    p.add_argument(
        "--threads", type=int, default=0, help="server torch threads (0: the server's auto choice)"
    )
    p.add_argument("--max-batch-size", type=int, default=64, help="server max_batch_size and ceiling batch")
    p.add_argument(
        "--max-wait-ms", type=float, default=ServeSettings().max_wait_ms, help="server max_wait_ms"
    )
    p.add_argument("--modes", default="on,off", help="coalescing modes to run: on,off")
    p.add_argument(
        "--repeats", type=int, default=3, help="runs per cell; the table shows the median run and the range"
    )
    return p.parse_args()


# -- set-up ------------------------------------------------------------------------------------------------------
def ensure_artifact(path: str | None) -> Path:
    if path:
        return Path(path)
    out = Path(tempfile.mkdtemp(prefix="lgm-bench-")) / "mnist5k"
    lgm = [sys.executable, "-m", "service"]
    print(f"# training a 1-epoch mnist5k model into {out} ...", flush=True)
    subprocess.run(
        [*lgm, "train", "--dataset", "mnist5k", "--epochs", "1", "--out", str(out), "--quiet"], check=True
    )
    subprocess.run([*lgm, "calibrate", str(out), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return out


def test_images(det: Detector, n: int = 256) -> tuple[torch.Tensor, list[bytes]]:
    """Real test-split images: as a float batch (N, C, H, W), and as /v1/predict JSON bodies (base64 PNG)."""
    ds = det.meta["dataset"]
    data = load_dataset(ds["name"], ds.get("root"), ds.get("split_seed", 0), ds.get("image_size"))
    x = data.test.x[:n]  # (N, C, H, W) uint8
    bodies = []
    for img in x.numpy():
        bodies.append(
            json.dumps({"instances": [{"b64": base64.b64encode(encode_png(img)).decode()}]}).encode()
        )
    return x.float() / 255.0, bodies


def ceiling(det: Detector, x: torch.Tensor, batch: int, threads: int, seconds: float = 2.0) -> float:
    """Images/s of Detector.score on full batches, in this process, with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    xb = x[:batch] if len(x) >= batch else x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch]
    with torch.inference_mode():
        for _ in range(3):
            det.score(xb)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            det.score(xb)
            n += batch
    return n / (time.perf_counter() - t0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(art: Path, port: int, batching: bool, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "service", "serve", str(art), "--host", "127.0.0.1", "--port", str(port),
        "--batching" if batching else "--no-batching", "--max-batch-size", str(args.max_batch_size),
        "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning", "--device", "cpu",
    ]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    deadline = time.time() + 120
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
    raise SystemExit("server not ready within 120 s")


# -- load --------------------------------------------------------------------------------------------------------
def run_load(port: int, bodies: list[bytes], conc: int, duration: float, warmup: float, cap: int) -> dict:
    """``conc`` closed-loop client threads, each on its own keep-alive ``http.client`` connection (a far cheaper
    client per request than httpx, so the client is not what is measured); latencies of requests started after
    the warm-up."""
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + duration
    lats: list[list[float]] = [[] for _ in range(conc)]
    errors = [0] * conc
    headers = {"Content-Type": "application/json"}
    budget = [cap]
    lock = threading.Lock()

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                if t0 >= t_measure:
                    with lock:
                        if budget[0] <= 0:
                            return
                        budget[0] -= 1
                conn.request("POST", "/v1/predict", body=bodies[i % len(bodies)], headers=headers)
                resp = conn.getresponse()
                resp.read()
                t1 = time.perf_counter()
                i += conc
                if t0 >= t_measure:
                    if resp.status == 200:
                        lats[k].append(t1 - t0)
                    else:
                        errors[k] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = min(time.perf_counter(), t_end) - t_measure
    lat = sorted(v for per in lats for v in per)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) >= 2 else [float("nan")] * 99
    return {
        "rps": len(lat) / max(elapsed, 1e-9),
        "p50": q[49] * 1e3,
        "p99": q[98] * 1e3,
        "n": len(lat),
        "errors": sum(errors),
    }


def forwards(port: int) -> tuple[float, float]:
    """(forward passes, images) so far, from the server's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("lgm_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("lgm_batch_size_sum"):
            total = float(line.split()[-1])
    return count, total


def main() -> None:
    args = parse_args()
    concs = [int(c) for c in args.concurrency.split(",") if c.strip()]
    art = ensure_artifact(args.artifact)
    threads = args.threads or ServeSettings().torch_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    det = Detector.load(art, "cpu")
    x, bodies = test_images(det)
    ceil = ceiling(det, x, args.max_batch_size, threads)
    ceil_all = ceiling(det, x, args.max_batch_size, cores) if cores != threads else ceil
    torch.set_num_threads(1)  # the client process needs no torch threads from here on
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        port = free_port()
        proc = start_server(art, port, mode == "on", args)
        try:
            for conc in concs:
                runs = []
                for _ in range(max(1, args.repeats)):
                    f0, i0 = forwards(port)
                    r = run_load(port, bodies, conc, args.duration, args.warmup, args.max_requests)
                    f1, i1 = forwards(port)
                    r["mean_batch"] = (i1 - i0) / max(f1 - f0, 1.0)
                    runs.append(r)
                    print(f"# coalescing {mode:3s} concurrency {conc:3d}: {r['rps']:.0f} req/s", flush=True)
                runs.sort(key=lambda r: r["rps"])
                med = dict(runs[len(runs) // 2])  # the median run by throughput, latencies from that run
                med["range"] = (runs[0]["rps"], runs[-1]["rps"])
                med["errors"] = sum(r["errors"] for r in runs)
                rows.append((mode, conc, med))
        finally:
            proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
            proc.wait(timeout=60)

    shape = "x".join(map(str, det.input_shape))
    print()
    print(f"Model: {det.meta['dataset']['name']} {det.meta['arch']['backbone']} (input {shape}), CPU, {cores} cores; "
          f"server torch threads {threads}, max_batch_size {args.max_batch_size}, max_wait_ms {args.max_wait_ms:g}; "
          f"one image per request (POST /v1/predict, JSON base64 PNG); client: http.client threads on the same machine.")  # fmt: skip
    print()
    print(f"In-process ceiling (Detector.score, batch {args.max_batch_size}): **{ceil:.0f} images/s** "
          f"at {threads} torch thread(s); {ceil_all:.0f} images/s at {cores}.")  # fmt: skip
    print()
    print(f"Each cell: {max(1, args.repeats)} run(s) of {args.duration:g} s; the median run by throughput (its "
          "latencies and batch size), and the range of throughput over the runs.")  # fmt: skip
    print()
    print(
        "| coalescing | concurrency | throughput (img/s) | range | % of ceiling | p50 (ms) | p99 (ms) | mean batch "
        "| errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, conc, r in rows:
        lo, hi = r["range"]
        print(f"| {mode} | {conc} | {r['rps']:.0f} | {lo:.0f}-{hi:.0f} | {100 * r['rps'] / ceil:.0f}% | {r['p50']:.2f} "
              f"| {r['p99']:.2f} | {r['mean_batch']:.1f} | {r['errors']} |")  # fmt: skip
    print()
    print("Command: `" + " ".join(shlex.quote(a) for a in ["python", "bench/serve.py", *sys.argv[1:]]) + "`")


if __name__ == "__main__":
    main()
