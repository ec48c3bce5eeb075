"""Intermediate activations of a classifier, for detectors that look at more than the last layer.

Lee et al. 2018 ("A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", section 2.2, the feature ensemble) score the output of every block of the network, averaged over
space; Ma et al. 2018 ("Characterizing Adversarial Subspaces Using Local Intrinsic Dimensionality") use the
flattened activations. ``forward_with_layers`` returns both kinds from one forward pass through forward hooks,
so the backbones in ``training/backbones.py`` need no change and gradients flow through every output.

Tapped blocks: every conv-BN-ReLU block of ``mnist_cnn``; the stem and the last residual block of each stage of
the CIFAR ``resnet`` (the ends of its stages, as Lee et al. tap ResNet).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from training.batched import batched, model_device
from training.model import Classifier
from training.modes import eval_mode

Pooling = Literal["mean", "flat"]


def tapped_blocks(model: Classifier) -> list[tuple[str, nn.Module]]:
    """(name, module) of the blocks whose outputs are tapped, input side first."""
    bb = model.backbone
    if model.spec.backbone == "mnist_cnn":
        return [(f"body.{i}", m) for i, m in enumerate(bb.body) if isinstance(m, nn.Sequential)]
    if model.spec.backbone == "resnet":
        blocks = list(bb.stages)
        ends = [
            i for i, blk in enumerate(blocks) if i + 1 == len(blocks) or blocks[i + 1].conv1.stride != (1, 1)
        ]
        return [("stem", bb.stem)] + [(f"stages.{i}", blocks[i]) for i in ends]
    raise ValueError(f"no layer taps defined for backbone {model.spec.backbone!r}")


def _pool(out: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) spatial mean, or (N, C*H*W) flattened; (N, C) passes through."""
    if out.ndim == 2:
        return out
    return out.mean(dim=(2, 3)) if pooling == "mean" else out.flatten(1)


def forward_with_layers(
    model: Classifier, x: torch.Tensor, pooling: Pooling = "mean"
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One forward pass: logits (N, K), last-layer features (N, D) and each tapped block's output, pooled.

    Differentiable in ``x``. Runs in eval mode whatever mode the caller left the model in (``training/modes.py``);
    the mode and the hooks live only for the duration of the call, so the model is left as it was."""
    captured: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out: captured.append(_pool(out, pooling)))
        for _, m in tapped_blocks(model)
    ]
    try:
        with eval_mode(model):
            logits, feats = model(x, return_features=True)
    finally:
        for h in handles:
            h.remove()
    return logits, feats, captured


def split_layers(
    model: Classifier, x: torch.Tensor, batch_size: int = 500, pooling: Pooling = "mean"
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Batched ``forward_with_layers`` over uint8 or [0, 1] float images, results float64 on the CPU (in eval
    mode, the model's own mode restored afterwards)."""

    def one(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        lo, fe, la = forward_with_layers(model, xb, pooling)
        return lo.double(), fe.double(), [t.double() for t in la]

    return batched(one, x, batch_size, model_device(model))
