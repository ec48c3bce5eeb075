"""What a baseline detector is: the ``Baseline`` protocol, the data it is fitted on and the forward it scores.

A baseline runs on the softmax twin (``twin.py``). ``fit`` learns its state from ``FitData`` (the training split,
the clean calibration split and, for ``needs_attacks`` baselines, adversarials made on the calibration split);
``score`` turns one batch's ``Forward`` into a score (B,), larger = more abnormal; a ``differentiable`` baseline
also has ``attack_score``, the same score as a differentiable function of the input for an attacker's target
class, which the adaptive attacks follow; ``describe`` is what the report states about its fit. Its threshold
(the target-FPR quantile of its clean calibration scores) is set by ``fit_baselines``, the same for every one.
Adding a baseline is one file with one such class and one line in ``REGISTRY`` (``__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from training.batched import model_device
from training.data import Dataset
from training.model import Classifier, split_features
from training.modes import eval_mode


@dataclass
class FitData:
    """What the baselines are fitted on (nothing from the test split)."""

    model: Classifier  # the softmax twin
    ds: Dataset
    noise: float = 0.0  # the one-layer Mahalanobis input pre-processing step (``--maha-noise``)
    adversarial: torch.Tensor | None = None  # (M, C, H, W) successful adversarials of the calibration split
    seed: int = 0
    _train_feats: torch.Tensor | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def clean(self) -> torch.Tensor:
        """(N, C, H, W) clean calibration images in [0, 1]."""
        return self.ds.calibration.float()

    def adversarial_for(self, name: str) -> torch.Tensor:
        """The calibration adversarials a ``needs_attacks`` baseline is fitted on (ValueError without them)."""
        if self.adversarial is None:
            raise ValueError(f"{name} needs adversarial calibration inputs")
        return self.adversarial

    def train_features(self) -> torch.Tensor:
        """The twin's penultimate features of the training split (N, D), float32 on the CPU, computed once."""
        if self._train_feats is None:
            self._train_feats = split_features(self.model, self.ds.train.x, self.device)
        return self._train_feats


@dataclass
class Forward:
    """One batch through the twin, shared by every baseline's score."""

    x: torch.Tensor  # (B, C, H, W) in [0, 1], on the twin's device
    logits: torch.Tensor  # (B, K)
    feats: torch.Tensor  # (B, D) penultimate features

    @classmethod
    def of(cls, model: Classifier, x: torch.Tensor) -> Forward:
        with eval_mode(model):  # whatever mode an attack library left the twin in (training/modes.py)
            logits, feats = model(x, return_features=True)
        return cls(x, logits, feats)


@runtime_checkable
class Baseline(Protocol):
    name: ClassVar[str]  # the report's column
    needs_attacks: ClassVar[bool]  # fitted on calibration adversarials; left out of a run without them
    differentiable: ClassVar[bool]  # has attack_score: the adaptive attacks on the twin follow it

    def fit(self, data: FitData) -> None: ...

    def score(self, out: Forward) -> torch.Tensor:
        """(B,) larger = more abnormal."""
        ...

    def attack_score(self, out: Forward, t: torch.Tensor) -> torch.Tensor:
        """(B,) the score as a differentiable function of ``out.x`` for target classes t (B,)."""
        ...

    def describe(self) -> dict[str, Any]: ...
