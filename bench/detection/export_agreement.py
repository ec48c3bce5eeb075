"""Benchmark: does ``lgm export``'s ONNX graph, run by ONNX Runtime, give the deployed detector's answers?

For a calibrated artifact: the graph made by ``detector.export.build`` (the same checks as ``lgm export``), run on
the CPU provider over every test image of the artifact's own dataset (the official test set for full MNIST and
for a CIFAR-10 image folder), and on uniform noise; each compared with ``Detector.score`` on the same inputs.
Printed per input set: how many inputs, how many get another class, how many another flag, how many have a
combined score within 1e-5 of their class's threshold (where a flag may legitimately differ), and the largest
absolute score difference.

    .venv/bin/python bench/detection/export_agreement.py models/mnist-robust
    .venv/bin/python bench/detection/export_agreement.py models/cifar10 --data-root ROOT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from detector.export import build, session
from detector.onnx_graph import INPUT, OUTPUTS
from training.data import load_card_dataset

NEAR = 1e-5


def compare(det, sess, x: torch.Tensor, batch: int = 500) -> dict[str, float]:
    """Counts of disagreements between ONNX Runtime and ``Detector.score`` over ``x`` (N, C, H, W) in [0, 1]."""
    out = {
        "inputs": len(x),
        "class_differs": 0,
        "flag_differs": 0,
        "near_threshold": 0,
        "max_score_diff": 0.0,
    }
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].contiguous()
        got = dict(zip(OUTPUTS, sess.run(list(OUTPUTS), {INPUT: xb.numpy()}), strict=True))
        ref = det.score(xb)
        score, thr = ref.score.numpy(), det.thresholds[ref.pred.numpy()]
        out["class_differs"] += int((got["class"] != ref.pred.numpy()).sum())
        out["flag_differs"] += int((got["is_adversarial"] != ref.is_adversarial.numpy()).sum())
        out["near_threshold"] += int((np.abs(score - thr) < NEAR).sum())
        diff = np.abs(got["score"] - score)
        out["max_score_diff"] = max(out["max_score_diff"], float(diff[np.isfinite(diff)].max(initial=0.0)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", help="calibrated L-GM artifact folder")
    ap.add_argument("--data-root", default=None, help="the dataset's folder, when not the one its card names")
    ap.add_argument("--noise", type=int, default=1000, help="uniform-noise inputs (seed 0)")
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, det = build(args.artifact)
    sess = session(model, args.threads)
    ds = load_card_dataset(det.meta["dataset"], args.data_root)
    noise = torch.rand(args.noise, *det.input_shape, generator=torch.Generator().manual_seed(0))
    rows = {"test split": compare(det, sess, ds.test.float()), "uniform noise": compare(det, sess, noise)}
    for name, row in rows.items():
        print(f"{args.artifact} {name}: " + json.dumps(row))
    print(f"torch {torch.__version__}, {args.threads} threads, {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
