"""The optimiser and the learning-rate schedule of a training run."""

from __future__ import annotations

import math

import torch

from training.config import TrainConfig
from training.model import Classifier


def make_optimizer(model: Classifier, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Three groups: backbone (weight decay), head means/priors (no decay), variances (lr * var_lr_mult)."""
    var_params, head_params, body_params = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head.log_var_raw"):
            var_params.append(p)
        elif name.startswith("head.") or p.ndim <= 1:
            head_params.append(p)
        else:
            body_params.append(p)
    groups = [
        {"params": body_params, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
        {"params": head_params, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": var_params, "weight_decay": 0.0, "lr_mult": cfg.var_lr_mult},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for epoch ``epoch`` (0-based): cosine to 0, step (x0.1 at 50% and 75%), or constant."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    if cfg.lr_schedule == "step":
        return cfg.lr * (0.1 ** (int(epoch >= cfg.epochs * 0.5) + int(epoch >= cfg.epochs * 0.75)))
    return cfg.lr


def set_lr(optim: torch.optim.Optimizer, lr: float) -> None:
    """Every group at ``lr`` times its own ``lr_mult``."""
    for g in optim.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
