"""The Large-Margin Gaussian Mixture (L-GM) head.

Wan, Zhong, Li, Chen, "Rethinking Feature Distribution for Loss Functions in Image Classification",
CVPR 2018 (arXiv 1803.02988). Features x in R^D follow a mixture with one Gaussian per class:
means mu_k, diagonal covariances Lambda_k, priors pi_k.

    d_k      = 0.5 * sum_j (x_j - mu_kj)^2 / Lambda_kj                              (eq. 3, halved)
    logit_k  = -d_k * (1 + alpha * [k == y]) - 0.5 * log|Lambda_k| + log pi_k        (eq. 8-9, margin)
    loglik_k = -d_k - 0.5 * log|Lambda_k| - (D / 2) * log(2 * pi)                   (Gaussian density)

Numerical safety (the failure the MXNet port hit, where 0.5*log|Lambda| ran to -inf): variances are
parametrised as ``floor + exp(v)`` with ``v`` initialised so the variance starts at 1.0; everything is kept in
log space and no ``exp(-d)`` is ever formed.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

VarianceMode = Literal["diagonal", "isotropic", "fixed"]
VARIANCE_MODES: tuple[str, ...] = ("diagonal", "isotropic", "fixed")


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Half / bfloat16 -> float32; float32 and float64 unchanged (float64 keeps gradcheck exact)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class LGMHead(nn.Module):
    """Gaussian-mixture classification head.

    Args:
        feat_dim: D, the feature dimension.
        num_classes: K.
        variance: ``diagonal`` (D variances per class), ``isotropic`` (one per class) or ``fixed``
            (held at 1.0, the official code's ``update_sigma: false``).
        learn_priors: learn log pi_k (softmax-normalised); otherwise equal priors.
        var_floor: lower bound added to every variance.
    Shapes: features (N, D) -> logits (N, K).
    """

    def __init__(
        self,
        feat_dim: int,
        num_classes: int,
        variance: VarianceMode = "fixed",
        learn_priors: bool = False,
        var_floor: float = 1e-3,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if variance not in VARIANCE_MODES:
            raise ValueError(f"variance must be one of {VARIANCE_MODES}, got {variance!r}")
        if not 0.0 < var_floor < 1.0:
            raise ValueError(f"var_floor must be in (0, 1), got {var_floor}")
        self.feat_dim = feat_dim
        self.num_classes = num_classes
        self.variance = variance
        self.learn_priors = learn_priors
        self.var_floor = var_floor
        self.means = nn.Parameter(torch.randn(num_classes, feat_dim) * init_scale)  # (K, D)
        v0 = math.log(1.0 - var_floor)  # floor + exp(v0) == 1.0
        cols = {"diagonal": feat_dim, "isotropic": 1, "fixed": 1}[variance]
        log_var = torch.full((num_classes, cols), v0)
        if variance == "fixed":
            self.register_buffer("log_var_raw", log_var)
        else:
            self.log_var_raw = nn.Parameter(log_var)  # (K, D) or (K, 1)
        if learn_priors:
            self.prior_logits = nn.Parameter(torch.zeros(num_classes))
        else:
            self.register_buffer("prior_logits", torch.zeros(num_classes))

    # -- parameters in their natural form -------------------------------------------------------------
    def variances(self) -> torch.Tensor:
        """Lambda as a (K, D) tensor, always >= var_floor."""
        var = self.var_floor + torch.exp(self.log_var_raw)
        return var.expand(self.num_classes, self.feat_dim)

    def log_det(self) -> torch.Tensor:
        """log|Lambda_k| for each class, (K,)."""
        return torch.log(self.variances()).sum(dim=1)

    def log_priors(self) -> torch.Tensor:
        """log pi_k, (K,), normalised with log-softmax."""
        return torch.log_softmax(self.prior_logits, dim=0)

    # -- the quantities of the paper ------------------------------------------------------------------
    def half_mahalanobis(self, x: torch.Tensor) -> torch.Tensor:
        """d_k(x) = 0.5 * sum_j (x_j - mu_kj)^2 / Lambda_kj, shape (N, K)."""
        x = at_least_fp32(x)
        diff = x.unsqueeze(1) - self.means.unsqueeze(0)  # (N, K, D)
        return 0.5 * (diff.pow(2) / self.variances().unsqueeze(0)).sum(dim=2)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; mu_k, Lambda_k) for each class, (N, K): -d_k - 0.5 log|Lambda_k| - D/2 log(2 pi)."""
        const = 0.5 * self.feat_dim * math.log(2.0 * math.pi)
        return -self.half_mahalanobis(x) - 0.5 * self.log_det().unsqueeze(0) - const

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, alpha: float = 0.0) -> torch.Tensor:
        """Logits (N, K). The margin ``alpha`` applies only in training mode and only when labels are given."""
        d = self.half_mahalanobis(x)  # (N, K)
        if y is not None and self.training and alpha > 0.0:
            onehot = torch.nn.functional.one_hot(y, self.num_classes).to(d.dtype)
            d = d * (1.0 + alpha * onehot)
        return -d - 0.5 * self.log_det().unsqueeze(0) + self.log_priors().unsqueeze(0)


class SoftmaxHead(nn.Module):
    """A plain linear softmax head on the same features, for like-for-like comparisons."""

    def __init__(self, feat_dim: int, num_classes: int) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.num_classes = num_classes
        self.fc = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, alpha: float = 0.0) -> torch.Tensor:
        return self.fc(at_least_fp32(x))
