"""Where a served request's CPU time goes: ``lgm serve`` under wrk load, sampled by py-spy, in shares per category.

    python bench/serving/profile.py models/cifar10 --engine onnxruntime --format "v2 binary" --concurrency 32

The server is started as ``bench/serving/serve.py --protocols`` starts it (``protocols.start``: the same flags, so
its default layout of workers and its default query policy) and gets the same request bodies through the same
wrk script (``protocols.bodies``, ``loadgen.wrk``). After ``--warmup`` seconds of load, ``py-spy record
--subprocesses --rate RATE -d DURATION --format raw --nonblocking`` samples every worker process while the load goes
on. py-spy counts a Python thread when it is running or runnable (not while it waits on the event loop's poll or a
lock), so the shares are of that demand, not exact CPU seconds; the server's CPU per thread from /proc (each
worker's main thread, its event loop, against the others, where the micro-batcher's executor runs the model) is
printed beside them. ONNX Runtime's and torch's native threads are not sampled, but with one intra-op thread per
worker (the default layout on 2 cores) their work runs on the calling Python thread, where it is counted. Each sample goes to one category: scoring (``model`` when a frame of
onnxruntime or ``torch/nn/modules`` is on the stack, else ``scoring, other``), otherwise the innermost frame that
matches a rule in ``RULES``. Prints a Markdown table of shares, the largest own-time functions outside the model,
and writes the raw samples and a JSON summary to ``--out``. Needs ``py-spy`` (``pip install py-spy``) and ptrace.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.serving import common, protocols
from bench.serving.loadgen import LUA, write_wrk_files, wrk
from bench.serving.proctree import TICK, cpu_seconds, tree

MODEL = re.compile(r"onnxruntime|torch/nn/modules")
SCORING = re.compile(r"service/engine\.py|service/onnx_engine\.py|/detector/")
# category, pattern on one frame ("function (path:line)"): the innermost matching frame decides
RULES = [
    ("query defence (service/stateful)", r"service/stateful/|sqlite3|redis"),
    (
        "request parsing and decoding",
        r"service/images\.py|service/oip_binary\.py:(3|4|5|6|7|8)\d\)|(split_body|parse_header|raw_inputs|binary_flags|"
        r"from_raw|from_array|from_values|check_input|instance_array|stack|decode_b64|decode_image) \(|"
        r"pydantic|json/decoder|loads \(.*json|PIL/|base64",
    ),
    (
        "response building and JSON encoding",
        r"(response|outputs|raw|prediction_dicts|_finite|render|serialize_response|jsonable_encoder) \(|"
        r"json/encoder|dumps \(.*json|starlette/responses",
    ),
    ("micro-batcher", r"service/batcher\.py"),
    ("middleware (metrics, body-size limit)", r"prometheus_client|service/metrics\.py|service/limits\.py"),
    ("route handlers' own code (service/api_v1.py, api_v2.py)", r"service/api_v(1|2)\.py"),
    ("executor hand-off (concurrent.futures, threading)", r"concurrent/futures|_chain_future|threading\.py"),
    (
        "asyncio, uvicorn, h11/httptools, starlette/fastapi",
        r"asyncio|uvicorn|h11|httptools|starlette|fastapi|anyio",
    ),
]


def category(frames: list[str]) -> str:
    """The category of one sample; ``frames`` from the outermost to the innermost."""
    if any(MODEL.search(f) for f in frames):
        return "model (ONNX Runtime run / torch forward)"
    if any(SCORING.search(f) for f in frames):
        return "scoring, other (engine and detector code around the model)"
    for f in reversed(frames):
        for name, pat in RULES:
            if re.search(pat, f):
                return name
    return "other"


def aggregate(raw: str) -> tuple[collections.Counter, dict[str, collections.Counter]]:
    """Samples per category, and per category the innermost frames (own time), from py-spy's raw output."""
    cats: collections.Counter = collections.Counter()
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        c = category(frames)
        cats[c] += int(n)
        own[c][re.sub(r":\d+\)$", ")", frames[-1]) if frames else "?"] += int(n)
    return cats, own


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of the server's processes, split into each process's main thread (a worker's event
    loop: HTTP, parsing, the query guard on SQLite, responses) and its other threads (the micro-batcher's
    executor running the model, and any helper threads)."""
    out = {"main threads (event loops)": 0.0, "other threads (model executor, helpers)": 0.0}
    for p in tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                f = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            key = (
                "main threads (event loops)"
                if task.name == str(p)
                else "other threads (model executor, helpers)"
            )
            out[key] += (int(f[11]) + int(f[12])) / TICK
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--engine", default="onnxruntime")
    ap.add_argument("--format", default="v2 binary", choices=["v1", "v2 json", "v2 binary"])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from detector.scoring import Detector

    art = common.ensure_artifact(args.artifact)
    det = Detector.load(art, "cpu")
    x, _ = common.test_images(det)
    u8 = (x * 255).round().to(dtype=__import__("torch").uint8).numpy()
    tmp = Path(tempfile.mkdtemp(prefix="lgm-profile-"))
    out = args.out or tmp
    out.mkdir(parents=True, exist_ok=True)
    (tmp / "bodies.lua").write_text(LUA)
    path = protocols.PLAN["lgm"][args.format]
    files = write_wrk_files(tmp, "bodies", protocols.bodies(u8)[args.format], path)
    proc, port, _ = protocols.start("lgm", art, args, args.engine)
    load: dict = {}
    try:
        secs = args.warmup + args.duration + 3
        t = threading.Thread(
            target=lambda: load.update(wrk(port, files, tmp / "bodies.lua", args.concurrency, secs))
        )
        t.start()
        time.sleep(args.warmup)
        raw = out / "pyspy.raw"
        c0, t0, th0 = cpu_seconds(proc.pid), time.perf_counter(), thread_cpu(proc.pid)
        cmd = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(proc.pid),
            "--subprocesses",
            "--rate",
            str(args.rate),
        ]
        cmd += ["-d", str(args.duration), "--format", "raw", "-o", str(raw), "--nonblocking"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        server_cpu = (cpu_seconds(proc.pid) - c0) / wall
        threads = {k: (v - th0[k]) / wall for k, v in thread_cpu(proc.pid).items()}
        t.join()
    finally:
        protocols.stop(proc)
    cats, own = aggregate(raw.read_text())
    total = sum(cats.values())
    print(
        f"# {args.artifact} --engine {args.engine}, {args.format}, c={args.concurrency}: {load['rps']:.0f} req/s "
        f"(whole wrk run, py-spy attached for {args.duration} s of it), server CPU {server_cpu:.2f} cores while "
        f"sampled; {total} samples at {args.rate} Hz\n"
    )
    print("# server CPU by thread, cores: " + ", ".join(f"{k} {v:.2f}" for k, v in threads.items()) + "\n")
    print("| category | samples | share |\n|---|---:|---:|")
    for name, n in cats.most_common():
        print(f"| {name} | {n} | {100 * n / total:.1f}% |")
    summary = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "load": load,
        "server_cpu": server_cpu,
        "threads": threads,
        "samples": dict(cats),
        "own": {},
    }
    for name, _ in cats.most_common():
        top = own[name].most_common(8)
        summary["own"][name] = top
        if not name.startswith("model"):
            print(f"\n{name}: largest own time")
            for fn, n in top[:6]:
                print(f"  {100 * n / total:5.1f}%  {fn}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n# raw samples and summary.json in {out}")


if __name__ == "__main__":
    main()
