"""``lgm train`` and ``lgm plot-features``: argument groups with their defaults shown in --help."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.config import TrainConfig
from training.configargs import add_arguments, from_args
from training.trainer import train


def cmd_train(args: argparse.Namespace) -> int:
    cfg: TrainConfig = from_args(TrainConfig, args)
    meta = train(cfg, args.out, resume=args.resume)
    if meta:
        m = meta["metrics"]
        print(
            f"saved {Path(args.out) / 'model.safetensors'}  test accuracy {m['test_accuracy']:.4f}"
            f"  calibration accuracy {m['calibration_accuracy']:.4f}"
        )
    return 0


def cmd_plot_features(args: argparse.Namespace) -> int:
    from training.plots import plot_features

    path = plot_features(args.artifact, args.out, split=args.split, device=args.device)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("train", help="train an L-GM (or softmax) classifier", formatter_class=fmt)
    p.add_argument("--out", required=True, help="artifact folder to write (model.safetensors, model.json)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.* if present")
    add_arguments(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "plot-features", help="plot the test split's features with the learned Gaussians", formatter_class=fmt
    )
    p.add_argument("artifact", help="artifact folder")
    p.add_argument("--out", default=None, help="PNG path (default ARTIFACT/features.png)")
    p.add_argument("--split", default="test", choices=["train", "calibration", "test"], help="which split")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=cmd_plot_features)
