"""Kernel density (Feinman, Curtin, Shintre, Gardner 2017, "Detecting Adversarial Samples from Artifacts",
section 4.1) on the softmax twin's last hidden layer: the comparison the L-GM paper itself made.

    KD(x) = (1 / |X_t|) sum_{x_i in X_t} exp(-||f(x) - f(x_i)||^2 / sigma^2)

with X_t the training inputs of the predicted class t and f the penultimate features; score = -log KD(x),
computed with logsumexp (larger = more abnormal). Their MNIST bandwidth, sigma = 1.20, was for their network's
feature scale; here sigma is chosen without attacks, as the value from a grid around the median nearest-
neighbour distance that maximises the mean log density of the clean calibration inputs (held-out likelihood).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from detector.harness.baselines.base import FitData, Forward
from training.batched import model_device
from training.data import Split
from training.model import Classifier, split_features


def log_kd(
    feats: torch.Tensor, pred: torch.Tensor, train_feats: list[torch.Tensor], sigma: float
) -> torch.Tensor:
    """log of the normalised density (1/M) sum_i N(f; f_i, sigma^2/2 I) of each row (N, D) under its class's
    training features; -> (N,) float64. The normalising constant -(D/2) log(pi sigma^2) does not change the
    ranking but makes densities of different bandwidths comparable."""
    f = feats.double()
    out = torch.zeros(len(f), dtype=torch.float64, device=f.device)
    dim = f.shape[1]
    for c in pred.unique().tolist():
        sel = pred == c
        d2 = torch.cdist(f[sel], train_feats[c].to(f.device).double()).pow(2)  # (n_c, M_c)
        out[sel] = (
            torch.logsumexp(-d2 / sigma**2, dim=1)
            - math.log(d2.shape[1])
            - 0.5 * dim * math.log(math.pi * sigma**2)
        )
    return out


@dataclass
class KernelDensity:
    train_feats: list[torch.Tensor]  # per class (M_c, D)
    sigma: float
    grid: dict[float, float]  # bandwidth -> mean clean calibration log density

    @classmethod
    def fit(
        cls, model: Classifier, train_feats: torch.Tensor, train_y: torch.Tensor, calibration: Split
    ) -> KernelDensity:
        """Bandwidth from the clean calibration split, densities over ``train_feats`` (N, D) of labels y (N,)."""
        dev = model_device(model)
        feats = train_feats
        k = int(model.spec.num_classes)
        per_class = [feats[train_y == c] for c in range(k)]
        cal = split_features(model, calibration.x, dev)
        with torch.no_grad():
            cal_pred = model.head(cal.to(dev)).argmax(1).cpu()
        nn = torch.cdist(feats[:2000].double(), feats[:2000].double())
        nn.fill_diagonal_(float("inf"))
        scale = float(nn.amin(1).median())
        grid = {}
        for mult in (0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0):
            sigma = scale * mult
            grid[round(sigma, 6)] = float(log_kd(cal, cal_pred, per_class, sigma).mean())
        best = max(grid, key=grid.__getitem__)
        return cls(per_class, best, grid)


class KDBaseline:
    """``kd``: kernel density of the twin's last hidden layer under the predicted (or target) class."""

    name = "kd"
    needs_attacks = False
    differentiable = True

    def fit(self, data: FitData) -> None:
        self.state = KernelDensity.fit(
            data.model, data.train_features(), data.ds.train.y, data.ds.calibration
        )

    def score(self, out: Forward) -> torch.Tensor:
        pred = out.logits.argmax(1)
        return -log_kd(out.feats, pred, self.state.train_feats, self.state.sigma)

    def attack_score(self, out: Forward, t: torch.Tensor) -> torch.Tensor:
        return -log_kd(out.feats, t, self.state.train_feats, self.state.sigma).to(out.x.device).float()

    def describe(self) -> dict[str, Any]:
        return {"bandwidth": self.state.sigma, "bandwidth_grid": self.state.grid}
