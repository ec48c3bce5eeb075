"""The classifier: Normalize -> backbone -> head (L-GM or softmax), built from a JSON-able spec."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from training.backbones import BACKBONES, Normalize
from training.batched import batched
from training.data import Split
from training.lgm import LGMHead, SoftmaxHead
from training.modes import eval_mode


@dataclass
class ModelSpec:
    """Everything needed to rebuild the network; stored in model.json under ``arch``."""

    backbone: str = "mnist_cnn"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    head: str = "lgm"  # "lgm" or "softmax"
    head_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 10
    feat_dim: int = 32
    input_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    mean: tuple[float, ...] = (0.1307,)
    std: tuple[float, ...] = (0.3081,)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        spec = cls(**known)
        spec.input_shape = tuple(int(v) for v in spec.input_shape)  # type: ignore[assignment]
        spec.mean = tuple(float(v) for v in spec.mean)
        spec.std = tuple(float(v) for v in spec.std)
        return spec


class Classifier(nn.Module):
    """Images in [0, 1] -> logits (N, K). ``forward(x)`` alone returns logits, as torchattacks expects."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {spec.backbone!r}; choose from {sorted(BACKBONES)}")
        self.spec = spec
        c, h, _ = spec.input_shape
        self.normalize = Normalize(spec.mean, spec.std)
        args = dict(spec.backbone_args)
        args.setdefault("in_channels", c)
        if spec.backbone == "mnist_cnn":
            args.setdefault("image_size", h)
        self.backbone = BACKBONES[spec.backbone](feat_dim=spec.feat_dim, **args)
        if spec.head == "lgm":
            self.head: nn.Module = LGMHead(spec.feat_dim, spec.num_classes, **spec.head_args)
        elif spec.head == "softmax":
            self.head = SoftmaxHead(spec.feat_dim, spec.num_classes)
        else:
            raise ValueError(f"unknown head {spec.head!r}; choose 'lgm' or 'softmax'")

    @property
    def is_lgm(self) -> bool:
        return isinstance(self.head, LGMHead)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Deep features (N, D), the input of the head (penultimate layer for the softmax head)."""
        return self.backbone(self.normalize(x))

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        alpha: float = 0.0,
        return_features: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)  # (N, D)
        logits = self.head(feats.float(), y, alpha)  # (N, K), head in fp32 even under autocast
        if return_features:
            return logits, feats
        return logits


def split_features(
    model: Classifier, x: torch.Tensor, device: torch.device, batch_size: int = 500
) -> torch.Tensor:
    """Features (N, D), float32 on the CPU, of uint8 images x (N, C, H, W), in batches and in eval mode (the
    model's own mode is restored afterwards, ``training/modes.py``)."""
    with eval_mode(model):
        return batched(lambda xb: model.features(xb).float(), x, batch_size, device)


def accuracy(model: Classifier, split: Split, device: torch.device, batch_size: int = 500) -> float:
    """Fraction of a split's uint8 images that ``model`` classifies correctly (in eval mode, its own mode restored
    afterwards; in batches)."""
    with eval_mode(model):
        pred = batched(lambda xb: model(xb).argmax(1), split.x, batch_size, device)
    return int((pred == split.y).sum()) / max(1, len(split))
