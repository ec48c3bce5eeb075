"""Benchmark: the scoring engines of ``lgm serve`` in process, eager PyTorch (``Detector.score``) against ONNX
Runtime running the ``lgm export`` graph of the same artifact (``--engine onnxruntime``).

For each thread count: images/s on full batches of ``--batch`` and the median latency of one image, the two
engines alternated over ``--rounds`` rounds (A B A B ...) so that the machine's drift touches both alike; the
ratio onnxruntime / torch is taken within each round and the table prints its median and range over rounds.
This is the in-process ceiling only: served throughput and latency through HTTP and gRPC are
``bench/serving/serve.py``'s (``--engines torch,onnxruntime``), which measures its ceilings with ``scorer`` and
``images_per_second`` below.

    .venv/bin/python bench/serving/engines.py models/mnist-robust
    .venv/bin/python bench/serving/engines.py models/cifar10 --data-root ROOT
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from detector.export import build, build_in_memory, session
from detector.onnx_graph import INPUT, OUTPUTS
from detector.scoring import Detector
from training.data import load_card_dataset

ENGINES = ("torch", "onnxruntime")  # lgm serve --engine


def scorer(
    det: Detector, engine: str, threads: int, model: bytes | None = None
) -> Callable[[torch.Tensor], object]:
    """``engine``'s scoring of a batch in this process, as ``lgm serve --engine`` runs it: ``Detector.score`` with
    ``threads`` torch threads, or an ONNX Runtime session of ``threads`` intra-op threads over ``model`` (the
    ``lgm export`` graph; exported in memory from ``det`` when None)."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    torch.set_num_threads(threads)
    if engine == "torch":
        return det.score
    sess = session(model if model is not None else build_in_memory(det, "bench/serving"), threads)
    return lambda x: sess.run(list(OUTPUTS), {INPUT: x.numpy()})


def images_per_second(fn: Callable[[torch.Tensor], object], xb: torch.Tensor, seconds: float) -> float:
    for _ in range(3):
        fn(xb)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(xb)
        n += len(xb)
    return n / (time.perf_counter() - t0)


def one_image_ms(fn: Callable[[torch.Tensor], object], x1: torch.Tensor, calls: int) -> float:
    for _ in range(10):
        fn(x1)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(x1)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", help="calibrated L-GM artifact folder")
    ap.add_argument("--data-root", default=None, help="the dataset's folder, when not the one its card names")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--batch", type=int, default=64, help="batch of the throughput cells")
    ap.add_argument("--rounds", type=int, default=5, help="alternations of the two engines")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per throughput cell")
    ap.add_argument("--calls", type=int, default=200, help="one-image calls per latency cell")
    args = ap.parse_args(argv)
    model, det = build(args.artifact)
    ds = load_card_dataset(det.meta["dataset"], args.data_root)
    xb, x1 = ds.test.float()[: args.batch].contiguous(), ds.test.float()[:1].contiguous()
    print(
        f"{args.artifact}: {det.input_shape}, batch {args.batch}, {args.rounds} rounds, torch {torch.__version__}"
    )
    print(
        "threads | torch img/s | onnxruntime img/s | ratio (median, range) | torch 1-image ms | ort 1-image ms | ratio"
    )
    for threads in (int(t) for t in args.threads.split(",")):
        ort = scorer(det, "onnxruntime", threads, model)
        torch.set_num_threads(threads)
        cells: dict[str, list[float]] = {k: [] for k in ("t_ips", "o_ips", "t_ms", "o_ms")}
        with torch.inference_mode():
            for _ in range(args.rounds):
                cells["t_ips"].append(images_per_second(det.score, xb, args.seconds))
                cells["o_ips"].append(images_per_second(ort, xb, args.seconds))
                cells["t_ms"].append(one_image_ms(det.score, x1, args.calls))
                cells["o_ms"].append(one_image_ms(ort, x1, args.calls))
        ips = [o / t for o, t in zip(cells["o_ips"], cells["t_ips"], strict=True)]
        lat = [t / o for o, t in zip(cells["o_ms"], cells["t_ms"], strict=True)]
        med = {k: statistics.median(v) for k, v in cells.items()}
        print(
            f"{threads} | {med['t_ips']:.0f} | {med['o_ips']:.0f} | {statistics.median(ips):.2f}x "
            f"({min(ips):.2f}-{max(ips):.2f}) | {med['t_ms']:.2f} | {med['o_ms']:.2f} | "
            f"{statistics.median(lat):.2f}x ({min(lat):.2f}-{max(lat):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
