"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks"): score = -max_k p_k on the softmax twin."""

from __future__ import annotations

from typing import Any

import torch

from detector.harness.baselines.base import FitData, Forward


class MSPBaseline:
    name = "msp"
    needs_attacks = False
    differentiable = True

    def fit(self, data: FitData) -> None:
        """Nothing to fit."""

    def score(self, out: Forward) -> torch.Tensor:
        return -torch.softmax(out.logits.float(), 1).amax(1)

    def attack_score(self, out: Forward, t: torch.Tensor) -> torch.Tensor:
        return -torch.softmax(out.logits.float(), 1).gather(1, t[:, None]).squeeze(1)

    def describe(self) -> dict[str, Any]:
        return {}
