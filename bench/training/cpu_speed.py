"""CPU training speed of the CIFAR ResNet under ``--channels-last`` and ``--cpu-bf16``, as ratios in one run.

One training step (forward, L-GM loss, backward, SGD step) of ResNet-20 on a batch of CIFAR-shaped images, timed
in four layouts: float32 NCHW (the default), channels-last, bfloat16 autocast, both. The variants run
interleaved, round after round, so that the machine's drift (2x within an hour on a shared host) falls on all of
them alike; each ratio is the median over rounds of (default step time / variant step time) in the same round,
with a 95% bootstrap interval over rounds.

    .venv/bin/python bench/training/cpu_speed.py                     # ResNet-20, batch 128, 2 threads, 15 rounds
    .venv/bin/python bench/training/cpu_speed.py --depth 8 --rounds 3   # quick look

bfloat16 speeds convolutions up only where the CPU has bfloat16 dot products (AVX512-BF16 or AMX); elsewhere
oneDNN emulates them and the variant can be slower. The script prints which the CPU has.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from training.config import TrainConfig
from training.loss import lgm_loss
from training.model import Classifier, ModelSpec
from training.optim import make_optimizer

VARIANTS = {  # name -> (channels_last, bfloat16 autocast)
    "float32": (False, False),
    "channels-last": (True, False),
    "bf16": (False, True),
    "channels-last + bf16": (True, True),
}


def cpu_bf16_flags() -> str:
    """The bfloat16-related instruction sets /proc/cpuinfo lists, or 'none'."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "unknown"
    have = sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile")})
    return ", ".join(have) or "none"


class Stepper:
    """One model + optimiser in one layout; ``step()`` returns the seconds of one training step."""

    def __init__(self, depth: int, width: int, batch: int, channels_last: bool, bf16: bool) -> None:
        torch.manual_seed(0)
        spec = ModelSpec(
            backbone="resnet",
            backbone_args={"depth": depth, "width": width, "feature_norm": True},
            head="lgm",
            feat_dim=32,
            input_shape=(3, 32, 32),
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
        )
        self.model = Classifier(spec).train()
        self.cfg = TrainConfig(optimizer="sgd", lr=0.01, weight_decay=5e-4, lam=0.1)
        self.optim = make_optimizer(self.model, self.cfg)
        self.x = torch.rand(batch, 3, 32, 32)
        self.y = torch.randint(0, 10, (batch,))
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.bf16 = bf16

    def step(self) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits, feats = self.model(self.x, self.y, alpha=0.1, return_features=True)
            loss = lgm_loss(self.model.head, feats, logits, self.y, self.cfg.lam, "center")[0]
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        return time.perf_counter() - t0


def interval(ratios: list[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``ratios``."""
    rng = np.random.default_rng(seed)
    a = np.asarray(ratios)
    meds = np.median(rng.choice(a, size=(2000, len(a)), replace=True), axis=1)
    return float(np.quantile(meds, 0.025)), float(np.quantile(meds, 0.975))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=20, help="ResNet depth (6n+2)")
    ap.add_argument("--width", type=int, default=16, help="channels of the first stage (16: ResNet-20's)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds; each times every variant once")
    ap.add_argument("--steps", type=int, default=3, help="steps per variant per round (their median counts)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steppers = {k: Stepper(args.depth, args.width, args.batch, *v) for k, v in VARIANTS.items()}
    for s in steppers.values():  # warm-up: oneDNN picks its kernels on the first steps
        s.step(), s.step()
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(args.rounds):
        for k, s in steppers.items():
            times[k].append(statistics.median(s.step() for _ in range(args.steps)))
    print(
        f"ResNet-{args.depth} (width {args.width}), batch {args.batch}, {args.threads} threads, {args.rounds} rounds; "
        f"torch {torch.__version__}; CPU bfloat16 instructions: {cpu_bf16_flags()}"
    )
    print("| variant | median step (ms) | speed-up over float32 [95% interval] |")
    print("|---|---|---|")
    for k, ts in times.items():
        ratios = [a / b for a, b in zip(times["float32"], ts, strict=True)]
        lo, hi = interval(ratios)
        print(
            f"| {k} | {1000 * statistics.median(ts):.0f} | {statistics.median(ratios):.2f}x [{lo:.2f}, {hi:.2f}] |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
