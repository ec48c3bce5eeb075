"""What every attack gets: the network to attack and, for the adaptive attacks, the detector's objective.

An attack is a function ``attack(target, x, y, budgets, seed) -> x_adv`` with x (N, C, H, W) in [0, 1] and y (N,)
the true labels; it returns adversarial images of the same shape, in [0, 1], on x's device. Attacks that fail
on an input may return anything within budget: success is decided afterwards (prediction != y), and only
successful adversarials count as positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from detector.gradient import Float64Logits
from training.model import Classifier

__all__ = ["AdaptiveObjective", "AttackTarget", "Float64Logits", "project_linf"]


class AdaptiveObjective(Protocol):
    """A differentiable stand-in for a classifier *and* its detectors, for white-box adaptive attacks."""

    model: Classifier

    def losses(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(classifier loss (N,), detector loss (N,), evades (N,) bool) for target classes t: both losses are
        0 once x is classified as t with a margin and no detector would flag it."""
        ...


@dataclass
class AttackTarget:
    """The network attacked (``lgm`` or the softmax ``twin``) and its detectors' adaptive objective."""

    name: str
    model: Classifier
    objective: AdaptiveObjective | None = None


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
