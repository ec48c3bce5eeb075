"""White-box attacks that know the detector (Carlini & Wagner 2017, "Adversarial Examples Are Not Easily
Detected: Bypassing Ten Detection Methods"; Tramer et al. 2020, "On Adaptive Attacks to Adversarial Example
Defenses"; Bryniarski et al. 2022, "Evading Adversarial Example Detectors via Orthogonal Projected Gradient
Descent").

Every attack here is L-inf PGD (sign steps of 2.5 eps / steps; the first run from the clean input, restarts from
a uniform random point of the eps-ball) towards a target class t on two objectives, held by an objective object:
be classified as t (``cls_loss``: relu(max_{k != t} Z_k - Z_t + 1)) and look clean to every detector of that
network at its deployed threshold (``det_loss``). An input *evades* when it is classified as t != y and no
detector flags it. Per input the attack keeps the evading iterate with the lowest loss, else the lowest-loss
iterate, and stops working on an input once both losses are 0.

- ``adaptive``: target t = the runner-up class of the clean input; minimise cls_loss + det_loss.
- ``adaptive_multitarget``: every wrong class as t in turn, the best result per input (an input that evaded
  with one target keeps it). The K - 1 targeted runs replace restarts: each target gets
  ceil(restarts / (K - 1)) runs (one for MNIST's 9 wrong classes at 5 restarts), so the attack spends at least
  as many runs per input as the single-target ones.
- ``adaptive_orthogonal`` (Bryniarski et al. 2022, orthogonal PGD): while the input is not yet classified as t,
  step along the classifier gradient with its component along the detector gradient projected out; once it is,
  step along the detector gradient with its component along the classifier gradient projected out, so that
  neither objective undoes the other. Runner-up target.

Objectives:
- ``DetectorObjective`` (detector ``lgm``): det_loss = relu(score_t(x) - T_t + margin), the deployed score of
  ``detector/scoring.py`` computed for class t (all its statistics: likelihood, boundary, earlier layers) and
  t's deployed threshold T_t; margin in the score's units.
- ``TwinObjective`` (the baselines on the softmax twin): det_loss = sum over msp, mahalanobis,
  mahalanobis_full and kd of relu((s - T) / spread + 0.05), each baseline's score s for class t against its
  deployed threshold T, in units of its spread on clean calibration inputs. ``lid`` is not followed: its
  nearest-neighbour search over 25k-dimensional activations is too slow to differentiate for hundreds of steps.
Shapes: x (N, C, H, W) in [0, 1], y (N,) -> (N, C, H, W).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from detector.harness.attacks.base import AttackTarget, project_linf
from detector.harness.budgets import Budgets
from training.model import Classifier

if TYPE_CHECKING:
    from detector.harness.baselines import Baselines
    from detector.scoring import Detector


def _mask(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.one_hot(t, logits.shape[1]).bool()


def runner_up(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(_mask(logits, y), float("-inf")).argmax(1)


def cls_hinge(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """relu(max_{k != t} Z_k - Z_t + 1): 0 once t wins by a logit margin of 1."""
    z_t = logits.gather(1, t[:, None]).squeeze(1)
    return F.relu(logits.masked_fill(_mask(logits, t), float("-inf")).amax(1) - z_t + 1.0)


class DetectorObjective:
    """Classified as t, with the deployed detector's score for t at least ``margin`` under t's threshold."""

    def __init__(self, det: Detector, margin: float = 1.0) -> None:
        self.det = det
        self.model: Classifier = det.model
        self.thr = torch.as_tensor(det.thresholds, dtype=torch.float64)  # (K,) deployed score thresholds
        self.margin = margin

    def losses(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cls_loss (N,), det_loss (N,), evades (N,) bool)."""
        out = self.det.outputs(x, cls=t)
        logits, score = out["logits"], out["score"]
        thr_t = self.thr.to(x.device)[t]
        det = F.relu(score - thr_t + self.margin).float()
        with torch.no_grad():
            evades = (logits.argmax(1) == t) & (t != y) & (score <= thr_t)
        return cls_hinge(logits, t), det, evades


class TwinObjective:
    """Classified by the softmax twin as t and accepted by every baseline the attack can follow
    (``Baselines.attack_scores``: msp, mahalanobis, mahalanobis_full, kd) at its deployed threshold."""

    def __init__(self, base: Baselines, margin: float = 0.05) -> None:
        self.base = base
        self.model: Classifier = base.model
        self.margin = margin  # in units of each score's clean spread

    def losses(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(x).float()
        scores = self.base.attack_scores(x, t)
        det = torch.zeros(len(x), device=x.device)
        accepted = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for name, s in scores.items():
            thr, scale = self.base.thresholds[name], self.base.scales[name]
            det = det + F.relu((s.float() - thr) / scale + self.margin)
            accepted &= s.detach() <= thr
        with torch.no_grad():
            evades = (logits.argmax(1) == t) & (t != y) & accepted
        return cls_hinge(logits, t), det, evades


def _objective(target: AttackTarget):
    if target.objective is None:
        raise ValueError(f"an adaptive attack needs the detector's objective for target {target.name!r}")
    return target.objective


def _pgd_towards(
    obj, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, b: Budgets, start: torch.Tensor, orthogonal: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One PGD run towards targets t from ``start``: (best x_adv, its loss, whether it evades), per input."""
    step = b.step_size(b.eps, b.adaptive_steps)
    x_adv = start.clone()
    best = start.clone()
    best_loss = torch.full((len(x),), float("inf"), device=x.device)
    best_ev = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    active = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for i in range(b.adaptive_steps + 1):
        idx = active.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        xa = x_adv[idx].clone().requires_grad_(True)
        lc, ld, ev = obj.losses(xa, y[idx], t[idx])
        loss = lc + ld
        with torch.no_grad():
            lo = loss.detach()
            better = (ev & ~best_ev[idx]) | ((ev == best_ev[idx]) & (lo < best_loss[idx]))
            upd = idx[better]
            best[upd] = xa.detach()[better]
            best_loss[upd] = lo[better]
            best_ev[idx] |= ev
            active[idx[lo <= 0]] = False  # both objectives met: nothing left to gain on this input
        if i == b.adaptive_steps:
            break
        if orthogonal:
            g_c = torch.autograd.grad(lc.sum(), xa, retain_graph=True)[0].flatten(1)
            g_d = torch.autograd.grad(ld.sum(), xa)[0].flatten(1)
            on_c = (lc.detach() > 0)[
                :, None
            ]  # not yet classified as t: classifier step, detector part removed
            main, other = torch.where(on_c, g_c, g_d), torch.where(on_c, g_d, g_c)
            coef = (main * other).sum(1, keepdim=True) / other.pow(2).sum(1, keepdim=True).clamp_min(1e-20)
            g = (main - coef * other).view_as(xa)
        else:
            (g,) = torch.autograd.grad(loss.sum(), xa)
        with torch.no_grad():
            x_adv[idx] = project_linf(xa.detach() - step * g.sign(), x[idx], b.eps)
    return best, best_loss, best_ev


def _restarts(
    obj, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, b: Budgets, orthogonal: bool, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``adaptive_restarts`` runs (clean start, then random starts) on the inputs that have not evaded yet."""
    best, loss, ev = _pgd_towards(obj, x, y, t, b, x, orthogonal)
    for _ in range(b.adaptive_restarts - 1):
        todo = (~ev).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        noise = torch.rand(x[todo].shape, generator=gen).to(x.device) * 2.0 - 1.0
        start = project_linf(x[todo] + b.eps * noise, x[todo], b.eps)
        cand, c_loss, c_ev = _pgd_towards(obj, x[todo], y[todo], t[todo], b, start, orthogonal)
        take = (c_ev & ~ev[todo]) | ((c_ev == ev[todo]) & (c_loss < loss[todo]))
        best[todo[take]], loss[todo[take]], ev[todo[take]] = cand[take], c_loss[take], c_ev[take]
    return best, loss, ev


def _runner_up_targets(obj, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return runner_up(obj.model(x).float(), y)


def _towards_runner_up(
    target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int, orthogonal: bool
) -> torch.Tensor:
    obj = _objective(target)
    gen = torch.Generator().manual_seed(seed)
    return _restarts(obj, x, y, _runner_up_targets(obj, x, y), b, orthogonal, gen)[0].detach()


def adaptive(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int) -> torch.Tensor:
    return _towards_runner_up(target, x, y, b, seed, orthogonal=False)


def adaptive_orthogonal(
    target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int
) -> torch.Tensor:
    return _towards_runner_up(target, x, y, b, seed, orthogonal=True)


def adaptive_multitarget(
    target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int
) -> torch.Tensor:
    """Every wrong class as the target, most probable first; per input the evading (else lowest-loss) result."""
    obj = _objective(target)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits = obj.model(x).float()
    ranked = logits.masked_fill(_mask(logits, y), float("-inf")).argsort(1, descending=True)
    order = ranked[:, :-1]  # (N, K-1): the wrong classes, most probable first
    b = dataclasses.replace(b, adaptive_restarts=math.ceil(b.adaptive_restarts / order.shape[1]))
    best = x.clone()
    loss = torch.full((len(x),), float("inf"), device=x.device)
    ev = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for j in range(order.shape[1]):
        todo = (~ev).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        cand, c_loss, c_ev = _restarts(obj, x[todo], y[todo], order[todo, j], b, False, gen)
        take = c_ev | (c_loss < loss[todo])
        best[todo[take]], loss[todo[take]], ev[todo[take]] = cand[take], c_loss[take], c_ev[take]
    return best.detach()
