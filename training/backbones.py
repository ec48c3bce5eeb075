"""Backbones that map images in [0, 1] to D-dimensional features; normalisation lives inside the model.

- ``mnist_cnn``: a 4-conv CNN for small grey images (28x28 MNIST, 8x8 digits work too).
- ``resnet``: the CIFAR ResNet of He et al. 2016 (section 4.2): 3 stages of n basic blocks,
  16/32/64 channels, depth 6n + 2 (ResNet-20 by default) for 32x32 colour images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel, so the model takes raw [0, 1] pixels (what attacks assume)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class MnistCNN(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool-fc256-fcD. Input (N, C, H, W) -> features (N, D)."""

    def __init__(
        self, in_channels: int = 1, image_size: int = 28, feat_dim: int = 32, width: int = 32
    ) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn(in_channels, w),
            _conv_bn(w, w),
            nn.MaxPool2d(2),
            _conv_bn(w, 2 * w),
            _conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * w * side * side, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
            nn.Linear(256, feat_dim),  # no activation: features are free to follow a Gaussian mixture
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1-projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs. Input (N, C, 32, 32) -> features (N, D).

    ``feature_norm``: a BatchNorm without affine parameters after the last linear layer, so the features have
    unit variance per dimension over a batch (running statistics at inference). Why: the L-GM logits are
    quadratic in the features, -0.5 * ||W h + b - mu_k||^2, so the loss's curvature along the linear layer's
    weights grows with ||h||^2, the squared norm of the pooled block output (about 69 at initialisation on
    CIFAR-10, rising to 150-250 within 100 steps). Plain gradient descent on a quadratic is stable only while
    lr * curvature < 2: at the official lr 0.1 that product is ~7 and SGD diverged (loss 38 -> 2,155 -> 1.8e7,
    NaN at step 4), which AdamW's per-weight scaling hid. Normalising the features bounds that curvature
    whatever ||h|| is. A BatchNorm *with* affine parameters is not enough: its scale learns to shrink towards 0,
    every feature collapses onto one point with the means, the likelihood term reaches 0 and the classifier
    sits at chance (measured at lambda 1); without affine parameters the features' spread is fixed at 1 and
    the only way to lower the likelihood term is to cluster each class around its own mean. Measurements:
    docs/training.md, "Natural images".
    """

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 20,
        feat_dim: int = 64,
        width: int = 16,
        feature_norm: bool = True,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, stride=2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, feat_dim)
        self.feature_norm = nn.BatchNorm1d(feat_dim, affine=False) if feature_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x))).flatten(1)  # (N, 4w)
        return self.feature_norm(self.fc(x))  # (N, D)


BACKBONES = {"mnist_cnn": MnistCNN, "resnet": CifarResNet}
