"""What every attack gets: the network to attack and, for the adaptive attack, the detector's objective.

An attack is a function ``attack(target, x, y, budgets) -> x_adv`` with x (N, C, H, W) in [0, 1] and y (N,)
the true labels; it returns adversarial images of the same shape, in [0, 1], on x's device. Attacks that fail
on an input may return anything within budget: success is decided afterwards (prediction != y), and only
successful adversarials count as positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from training.model import Classifier


class AdaptiveObjective(Protocol):
    """A differentiable stand-in for a classifier *and* its detectors, for white-box adaptive attacks."""

    def targets(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The wrong class to aim for, (N,) int64."""
        ...

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss (N,) to minimise, evades (N,) bool: classified as t and flagged by no detector)."""
        ...


@dataclass
class AttackTarget:
    """The network attacked (``lgm`` or the softmax ``twin``) and its detectors' adaptive objective."""

    name: str
    model: Classifier
    objective: AdaptiveObjective | None = None


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
