"""Numerical-safety benchmark: the least forgiving L-GM setting trained for 30 epochs on mnist5k.

Learned diagonal variances with the ``paper`` likelihood form (d_y + 0.5 log|Lambda_y|, Wan et al. CVPR 2018)
is the configuration in which the variances can collapse and drive the loss to -inf or NaN: shrinking
Lambda_y lowers log|Lambda_y| without bound unless something stops it. The trainer stops at the first
non-finite loss (FloatingPointError), so finishing is already the check; this script also verifies every
weight and every per-epoch loss is finite and prints how close the variances came to their floor.

    .venv/bin/python bench/training/stability.py                  # 30 epochs, diagonal + paper + learned priors
    .venv/bin/python bench/training/stability.py --epochs 5       # quicker look

It writes ``report.json`` and ``provenance.json`` into ``--out`` (reports/bench_stability), which
``bench/records/results.py collect stability DIR`` publishes.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench import provenance
from training.artifacts import atomic_write_json
from training.config import TrainConfig
from training.trainer import train

OUT = "reports/bench_stability"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=OUT, help="folder of report.json + provenance.json")
    args = ap.parse_args()
    code = provenance.checkout()  # the code measured is the code at the start

    cfg = TrainConfig(
        dataset="mnist5k",
        variance="diagonal",
        lkd_form="paper",
        learn_priors=True,
        epochs=args.epochs,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        quiet=True,
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lgm-stability-") as tmp:
        try:
            meta = train(cfg, tmp)
        except FloatingPointError as err:
            print(f"FAILED: {err}")
            return 1
        weights = load_file(str(Path(tmp) / "model.safetensors"))
    wall = time.perf_counter() - t0

    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    losses = [h["loss"] for h in meta["history"]]
    var = (cfg.var_floor + weights["head.log_var_raw"].double().exp()).flatten()
    ok = not bad and all(math.isfinite(x) for x in losses)

    rep = {
        "benchmark": "stability",
        "setting": f"diagonal + paper + learned priors, lam {cfg.lam}, var floor {cfg.var_floor}, var lr "
        f"x{cfg.var_lr_mult}",
        "epochs": len(losses),
        "final_loss": losses[-1],
        "min_loss": min(losses),
        "test_accuracy": meta["metrics"]["test_accuracy"],
        "variance": [float(var.min()), float(var.median()), float(var.max())],
        "finite": ok,
        "non_finite": bad,
        "device": str(meta["device"]),
    }
    print(table(rep))
    command = f".venv/bin/python bench/training/stability.py --epochs {args.epochs}" + (
        f" --out {args.out}" if args.out != OUT else ""
    )
    atomic_write_json(Path(args.out) / "report.json", rep)
    prov = provenance.write(args.out, command, wall, None, code)
    print(f"\nCommand: `{command}`  ({wall:.0f} s on {meta['device']})")
    print(
        f"provenance: {prov} (publish: .venv/bin/python bench/records/results.py collect stability {args.out})"
    )
    return 0 if ok else 1


def table(rep: dict) -> str:
    """The benchmark's table from its report.json alone: what it prints and what docs/results/training.md shows."""
    v = rep["variance"]
    finite = "yes" if rep["finite"] else "NO: " + ", ".join(rep["non_finite"])
    return "\n".join(
        [
            "| setting | epochs | final loss | min loss | test acc | variance min / median / max | finite |",
            "|---|---:|---:|---:|---:|---|---|",
            f"| {rep['setting']} | {rep['epochs']} | {rep['final_loss']:.4f} | {rep['min_loss']:.4f} | "
            f"{rep['test_accuracy']:.4f} | {v[0]:.4g} / {v[1]:.4g} / {v[2]:.4g} | {finite} |",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
