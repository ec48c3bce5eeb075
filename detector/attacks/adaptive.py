"""The adaptive white-box attack: it knows the detector (Carlini & Wagner 2017, "Adversarial Examples Are Not
Easily Detected: Bypassing Ten Detection Methods"; Tramer et al. 2020, "On Adaptive Attacks to Adversarial
Example Defenses").

L-inf PGD (sign steps of 2.5 eps / steps, from the clean input) on a loss that asks for two things at once:
be classified as the target class t (the runner-up class of the clean input), and look clean to every detector
on that network at its deployed threshold. Per input it keeps the iterate that evades (classified as t and not
flagged) with the lowest loss, else the lowest-loss iterate.

Objectives:
- ``LGMObjective`` (detector ``lgm``): loss = relu(max_{k != t} Z_k - Z_t + 1) - min(LL_t - T_t, margin), i.e.
  push the logit of t above the others and the feature's log-likelihood under t's Gaussian to ``margin`` nats
  above t's deployed threshold T_t (log-likelihood under the *new* class, as the detector scores it).
- ``TwinObjective`` (detectors ``msp`` and ``mahalanobis`` on the softmax twin): loss = CE(Z, t) +
  relu(M_t / tau - 0.9), with M_t the squared Mahalanobis distance of the twin's feature to t's mean under the
  tied covariance and tau the Mahalanobis threshold: confident in t (defeats MSP) and close to t's mean
  (defeats Mahalanobis).
Shapes: x (N, C, H, W) in [0, 1], y (N,) -> (N, C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detector.attacks.base import AttackTarget, project_linf
from detector.baselines import squared_mahalanobis
from detector.budgets import Budgets
from detector.scoring import lgm_outputs
from training.model import Classifier


def _runner_up(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).argmax(1)


def _other_max(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(F.one_hot(t, logits.shape[1]).bool(), float("-inf")).amax(1)


class LGMObjective:
    """Misclassify into t while keeping log N(f(x); mu_t, Lambda_t) above the deployed threshold T_t."""

    def __init__(self, model: Classifier, class_thresholds: torch.Tensor, margin: float = 1.0) -> None:
        self.model = model
        self.thr = (
            class_thresholds.float()
        )  # (K,) log-likelihood thresholds actually applied per predicted class
        self.margin = margin

    def targets(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _runner_up(self.model(x), y)

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, ll = lgm_outputs(self.model, x)  # (N, K) each: the detector's own score, differentiable
        ll_t = ll.gather(1, t[:, None]).squeeze(1)
        z_t = logits.gather(1, t[:, None]).squeeze(1)
        thr_t = self.thr.to(x.device)[t]
        loss = F.relu(_other_max(logits, t) - z_t + 1.0) - torch.clamp(ll_t - thr_t, max=self.margin)
        with torch.no_grad():
            evades = (logits.argmax(1) == t) & (t != y) & (ll_t >= thr_t)
        return loss, evades


class TwinObjective:
    """Misclassify the softmax twin into t with high confidence (MSP) and a small Mahalanobis distance."""

    def __init__(self, model: Classifier, means: torch.Tensor, precision: torch.Tensor, msp_threshold: float,
                 maha_threshold: float) -> None:  # fmt: skip
        self.model = model
        self.means = means.float()  # (K, D)
        self.precision = precision.float()  # (D, D)
        self.msp_thr = float(msp_threshold)  # flag when max softmax prob < this
        self.maha_thr = float(maha_threshold)  # flag when min_k M_k > this

    def targets(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _runner_up(self.model(x), y)

    def loss(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.model(x, return_features=True)
        m = squared_mahalanobis(feats, self.means, self.precision)  # (N, K), as the baseline scores it
        m_t = m.gather(1, t[:, None]).squeeze(1)
        tau = max(self.maha_thr, 1e-6)
        loss = F.cross_entropy(logits.float(), t, reduction="none") + F.relu(m_t / tau - 0.9)
        with torch.no_grad():
            p = torch.softmax(logits.float(), 1)
            evades = (
                (logits.argmax(1) == t)
                & (t != y)
                & (p.amax(1) >= self.msp_thr)
                & (m.amin(1) <= self.maha_thr)
            )
        return loss, evades


def adaptive(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int) -> torch.Tensor:
    obj = target.objective
    if obj is None:
        raise ValueError(f"the adaptive attack needs the detector's objective for target {target.name!r}")
    t = obj.targets(x, y)
    step = b.step_size(b.eps, b.adaptive_steps)
    x_adv = x.clone()
    best = x.clone()
    best_loss = torch.full((len(x),), float("inf"), device=x.device)
    best_ev = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for i in range(b.adaptive_steps + 1):
        x_adv.requires_grad_(True)
        loss, ev = obj.loss(x_adv, y, t)
        with torch.no_grad():
            lo = loss.detach()
            better = (ev & ~best_ev) | ((ev == best_ev) & (lo < best_loss))
            best[better] = x_adv.detach()[better]
            best_loss = torch.where(better, lo, best_loss)
            best_ev |= ev
        if i == b.adaptive_steps:
            break
        (g,) = torch.autograd.grad(loss.sum(), x_adv)
        with torch.no_grad():
            x_adv = project_linf(x_adv.detach() - step * g.sign(), x, b.eps)
    return best.detach()
