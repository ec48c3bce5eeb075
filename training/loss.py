"""The L-GM loss, L_GM = L_cls + lambda * L_lkd (Wan et al., CVPR 2018, eq. 10), and the margin schedule.

Two likelihood-regularisation forms:

- ``paper``:  L_lkd = d_y + 0.5 * log|Lambda_y|   (the negative log-likelihood up to a constant, eq. 7)
- ``center``: L_lkd = 0.5 * ||x - mu_y||^2        (what the official code trains with; center-loss-like)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from training.lgm import LGMHead, at_least_fp32

LkdForm = Literal["paper", "center"]
LKD_FORMS: tuple[str, ...] = ("paper", "center")


def likelihood_term(head: LGMHead, feats: torch.Tensor, y: torch.Tensor, form: LkdForm) -> torch.Tensor:
    """Mean likelihood regulariser over the batch. feats (N, D), y (N,) -> scalar."""
    feats = at_least_fp32(feats)
    if form == "center":
        return 0.5 * (feats - head.means[y]).pow(2).sum(dim=1).mean()
    if form == "paper":
        d = head.half_mahalanobis(feats).gather(1, y[:, None]).squeeze(1)  # (N,)
        return (d + 0.5 * head.log_det()[y]).mean()
    raise ValueError(f"unknown likelihood form {form!r}; choose from {LKD_FORMS}")


def lgm_loss(
    head: LGMHead,
    feats: torch.Tensor,
    logits: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    form: LkdForm,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (total, L_cls, L_lkd). ``logits`` already carry the margin (see LGMHead.forward)."""
    cls = F.cross_entropy(at_least_fp32(logits), y)
    if lam == 0.0:
        return cls, cls, torch.zeros((), device=cls.device)
    lkd = likelihood_term(head, feats, y, form)
    return cls + lam * lkd, cls, lkd


@dataclass
class AlphaSchedule:
    """Margin alpha as a function of the iteration: constant, or step-up.

    alpha(it) = min(cap, initial * factor ** (it // every)) when ``every > 0``, else ``initial``.
    The official code's STEPUP: initial 0.1, factor 2, every 5000, cap 0.3.
    """

    initial: float = 0.1
    factor: float = 2.0
    every: int = 0
    cap: float = 0.3

    def __call__(self, iteration: int) -> float:
        if self.every <= 0:
            return self.initial
        return min(self.cap, self.initial * self.factor ** (iteration // self.every))
