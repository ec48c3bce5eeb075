"""Class-conditional Gaussians fitted to a network's features: the detector's model of clean inputs.

For features f in R^D and classes k = 1..K, with means mu_k and covariance Sigma (tied) or Sigma_k (per class):

    log N(f; mu_k, Sigma_k) = -0.5 (f - mu_k)^T Sigma_k^-1 (f - mu_k) - 0.5 log|Sigma_k| - (D/2) log(2 pi)

Fitting: mu_k is the mean of class k's training features (the maximum-likelihood estimate); the covariance is
estimated from the class-centred features with shrinkage towards a scaled identity (Ledoit & Wolf 2004,
"A well-conditioned estimator for large-dimensional covariance matrices", or Chen et al. 2010's OAS), through
``sklearn.covariance``, so that it stays invertible however few inputs a class has. ``empirical`` is the plain
maximum-likelihood covariance (1/N, as ``np.cov(..., bias=True)``). Tied: one covariance of all class-centred
features (Lee et al. 2018); per class: one per class, each from its own centred features.

``from_head`` wraps the L-GM head's own Gaussians (Wan et al. 2018: means mu_k and diagonal variances Lambda_k).
Scoring is in torch and differentiable, so adaptive attacks can follow the detector's own gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf

from training.lgm import LGMHead

SHRINKAGE = {"ledoit_wolf": LedoitWolf, "oas": OAS, "empirical": EmpiricalCovariance}
KINDS = ("tied", "per_class", "head")


def fit_covariance(centred: np.ndarray, shrinkage: str) -> np.ndarray:
    """Covariance (D, D) of already-centred rows (N, D) with the named estimator (assume_centered)."""
    if shrinkage not in SHRINKAGE:
        raise ValueError(f"shrinkage must be one of {', '.join(SHRINKAGE)}, got {shrinkage!r}")
    return SHRINKAGE[shrinkage](assume_centered=True).fit(centred).covariance_


@dataclass
class ClassGaussians:
    """K Gaussians in R^D. ``whiten`` is (D, D) (tied) or (K, D, D), with whiten @ whiten.T = Sigma^-1."""

    means: torch.Tensor  # (K, D)
    whiten: torch.Tensor  # (D, D) or (K, D, D)
    logdet: torch.Tensor  # (K,): log|Sigma_k| (equal entries when tied)

    @property
    def tied(self) -> bool:
        return self.whiten.ndim == 2

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def from_covariances(cls, means: np.ndarray, covs: np.ndarray) -> ClassGaussians:
        """From means (K, D) and covariance (D, D) or (K, D, D), in float64."""
        cov = torch.as_tensor(covs, dtype=torch.float64)
        prec = torch.linalg.inv(cov)
        prec = 0.5 * (prec + prec.transpose(-1, -2))  # exactly symmetric before Cholesky
        whiten = torch.linalg.cholesky(prec)  # L L^T = Sigma^-1
        logdet = torch.linalg.slogdet(cov).logabsdet
        k = len(means)
        return cls(
            means=torch.as_tensor(means, dtype=torch.float64),
            whiten=whiten,
            logdet=logdet.expand(k).clone() if cov.ndim == 2 else logdet,
        )

    @classmethod
    def fit(
        cls,
        feats: np.ndarray,
        y: np.ndarray,
        num_classes: int,
        tied: bool = True,
        shrinkage: str = "ledoit_wolf",
    ) -> ClassGaussians:
        """Fit to features (N, D) with labels (N,): class means, shrunk covariance of class-centred features."""
        feats = np.asarray(feats, dtype=np.float64)
        y = np.asarray(y)
        missing = [k for k in range(num_classes) if not (y == k).any()]
        if missing:
            raise ValueError(f"no training input of class {missing[0]}: cannot fit its Gaussian")
        means = np.stack([feats[y == k].mean(0) for k in range(num_classes)])
        centred = feats - means[y]
        if tied:
            return cls.from_covariances(means, fit_covariance(centred, shrinkage))
        covs = np.stack([fit_covariance(centred[y == k], shrinkage) for k in range(num_classes)])
        return cls.from_covariances(means, covs)

    @classmethod
    def from_head(cls, head: LGMHead) -> ClassGaussians:
        """The L-GM head's own Gaussians: means mu_k and diagonal covariances Lambda_k."""
        with torch.no_grad():
            var = head.variances().double()  # (K, D)
            whiten = torch.diag_embed(var.rsqrt())  # (K, D, D)
            return cls(head.means.detach().double().clone(), whiten, torch.log(var).sum(1))

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> ClassGaussians:
        return ClassGaussians(
            *(t.to(device=device, dtype=dtype) for t in (self.means, self.whiten, self.logdet))
        )

    def log_density(self, f: torch.Tensor) -> torch.Tensor:
        """log N(f; mu_k, Sigma_k) for every class: f (N, D) -> (N, K), in the Gaussians' dtype."""
        f = f.to(self.means.dtype)
        if self.tied:
            diff = (f @ self.whiten).unsqueeze(1) - (self.means @ self.whiten).unsqueeze(0)  # (N, K, D)
        else:
            diff = torch.einsum("nkd,kde->nke", f.unsqueeze(1) - self.means.unsqueeze(0), self.whiten)
        maha = diff.pow(2).sum(-1)  # (N, K)
        return -0.5 * maha - 0.5 * self.logdet.unsqueeze(0) - 0.5 * self.dim * math.log(2.0 * math.pi)

    def covariance(self) -> torch.Tensor:
        """Sigma (D, D) or (K, D, D), recovered from the whitening factor (for tests and reports)."""
        prec = self.whiten @ self.whiten.transpose(-1, -2)
        return torch.linalg.inv(prec)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.means": self.means,
            f"{prefix}.whiten": self.whiten,
            f"{prefix}.logdet": self.logdet,
        }

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str) -> ClassGaussians:
        return cls(t[f"{prefix}.means"], t[f"{prefix}.whiten"], t[f"{prefix}.logdet"])
