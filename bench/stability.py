"""Numerical-safety benchmark: the least forgiving L-GM setting trained for 30 epochs on mnist5k.

Learned diagonal variances with the ``paper`` likelihood form (d_y + 0.5 log|Lambda_y|, Wan et al. CVPR 2018)
is the configuration in which the variances can collapse and drive the loss to -inf or NaN: shrinking
Lambda_y lowers log|Lambda_y| without bound unless something stops it. The trainer stops at the first
non-finite loss (FloatingPointError), so finishing is already the check; this script also verifies every
weight and every per-epoch loss is finite and prints how close the variances came to their floor.

    .venv/bin/python bench/stability.py                  # 30 epochs, diagonal + paper + learned priors
    .venv/bin/python bench/stability.py --epochs 5       # quicker look
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import TrainConfig  # noqa: E402
from training.trainer import train  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

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

    print("| setting | epochs | final loss | min loss | test acc | variance min / median / max | finite |")
    print("|---|---:|---:|---:|---:|---|---|")
    print(
        f"| diagonal + paper + learned priors, lam {cfg.lam}, var floor {cfg.var_floor}, var lr x{cfg.var_lr_mult} "
        f"| {len(losses)} | {losses[-1]:.4f} | {min(losses):.4f} | {meta['metrics']['test_accuracy']:.4f} "
        f"| {var.min():.4g} / {var.median():.4g} / {var.max():.4g} | {'yes' if ok else 'NO: ' + ', '.join(bad)} |"
    )
    print(
        f"\nCommand: `python bench/stability.py --epochs {args.epochs}`  ({wall:.0f} s on {meta['device']})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
