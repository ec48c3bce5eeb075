"""``lgm train`` and ``lgm plot-features``: argument groups with their defaults shown in --help."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from training.config import TrainConfig
from training.trainer import CHOICES, train

_HELP = {
    "dataset": "mnist5k | digits (embedded) | mnist | fashion-mnist | cifar10 | cifar100 | folder (need --data-root)",
    "data_root": "folder holding the dataset's files",
    "image_size": "resize image-folder images to this square size",
    "split_seed": "seed of the train / calibration / test split",
    "backbone": "auto | mnist_cnn | resnet",
    "feat_dim": "feature dimension D (2 for plots)",
    "width": "channels of the first stage (0: backbone default)",
    "depth": "ResNet depth, 6n+2",
    "head": "lgm | softmax (a like-for-like baseline)",
    "variance": "diagonal | isotropic | fixed (held at 1.0, as the official code)",
    "lkd_form": "paper (d_y + 0.5 log|Lambda_y|) | center (0.5 ||x - mu_y||^2)",
    "lam": "lambda, weight of the likelihood term",
    "alpha": "margin alpha (initial value when stepping up)",
    "alpha_factor": "step-up factor",
    "alpha_every": "step up every N iterations (0: constant alpha)",
    "alpha_cap": "largest alpha",
    "learn_priors": "learn class priors pi_k",
    "var_floor": "variance floor",
    "var_lr_mult": "learning-rate multiplier of the variances",
    "epochs": "epochs",
    "batch_size": "global batch size (split across torchrun ranks)",
    "optimizer": "adam (AdamW) | sgd (Nesterov momentum 0.9)",
    "lr": "peak learning rate",
    "weight_decay": "weight decay of the backbone",
    "lr_schedule": "cosine | step | none",
    "augment": "training augmentation (shifts for digits; pad-crop-flip for CIFAR)",
    "seed": "seed of initialisation, shuffling and augmentation",
    "device": "auto (CUDA when present) | cpu | cuda | cuda:N",
    "amp": "mixed precision on CUDA",
    "threads": "torch CPU threads (0: torch default); a CPU run is bit-identical for a seed at a fixed count",
    "quiet": "no progress bars or per-epoch lines",
}
_GROUPS = {
    "data": ("dataset", "data_root", "image_size", "split_seed"),
    "model": ("backbone", "feat_dim", "width", "depth", "head"),
    "L-GM": ("variance", "lkd_form", "lam", "alpha", "alpha_factor", "alpha_every", "alpha_cap",
             "learn_priors", "var_floor", "var_lr_mult"),
    "optimisation": ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "lr_schedule", "augment"),
    "run": ("seed", "device", "amp", "threads", "quiet"),
}  # fmt: skip


def _add_config_args(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    types = {f.name: f.type for f in fields(TrainConfig)}
    for group, names in _GROUPS.items():
        g = p.add_argument_group(group)
        for name in names:
            flag = "--" + name.replace("_", "-")
            default = getattr(defaults, name)
            if isinstance(default, bool):
                g.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=_HELP[name])
            elif "int" in str(types[name]) and "float" not in str(types[name]):
                g.add_argument(flag, type=int, default=default, help=_HELP[name])
            elif "float" in str(types[name]):
                g.add_argument(flag, type=float, default=default, help=_HELP[name])
            else:
                g.add_argument(flag, type=str, default=default, choices=CHOICES.get(name), help=_HELP[name])


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
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
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "plot-features", help="plot the test split's features with the learned Gaussians", formatter_class=fmt
    )
    p.add_argument("artifact", help="artifact folder")
    p.add_argument("--out", default=None, help="PNG path (default ARTIFACT/features.png)")
    p.add_argument("--split", default="test", choices=["train", "calibration", "test"], help="which split")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=cmd_plot_features)
