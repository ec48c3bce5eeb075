"""DeepFool, L2 (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016, "DeepFool: a simple and accurate method to
fool deep neural networks", algorithm 2), batched.

At each step, linearise the margins f_k = Z_k - Z_y of the candidate classes and move to the nearest linearised
boundary: r = (|f_l| / ||grad f_l||^2) grad f_l with l = argmin_k |f_k| / ||grad f_k||; stop per input once it
is misclassified. Written here because torchattacks' DeepFool builds a full Jacobian one image at a time, which
is far too slow for a 500-input run on a CPU; we only differentiate the ``candidates`` classes of highest clean
logit (as Foolbox does), one backward pass per candidate for the whole batch.
Shapes: x (N, C, H, W) in [0, 1], y (N,) -> (N, C, H, W). Unbounded: the report states the median L2.
"""

from __future__ import annotations

import torch

from detector.harness.attacks.base import AttackTarget
from detector.harness.budgets import Budgets


def deepfool(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int) -> torch.Tensor:
    model = target.model
    n = len(x)
    with torch.no_grad():
        logits0 = model(x)
    k = min(b.deepfool_candidates, logits0.shape[1])
    cand = logits0.topk(k, dim=1).indices  # (N, k), includes y for correctly classified inputs
    r_tot = torch.zeros_like(x)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    x_adv = x.clone()
    for _ in range(b.deepfool_steps):
        idx = active.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        xa = (x[idx] + (1.0 + b.deepfool_overshoot) * r_tot[idx]).clamp(0.0, 1.0).requires_grad_(True)
        logits = model(xa)
        with torch.no_grad():
            fooled = logits.argmax(1) != y[idx]
        z_y = logits.gather(1, y[idx, None]).squeeze(1)
        best_dist = torch.full((len(idx),), float("inf"), device=x.device)
        best_r = torch.zeros_like(xa)
        for j in range(k):
            cj = cand[idx, j]
            valid = cj != y[idx]
            f = logits.gather(1, cj[:, None]).squeeze(1) - z_y  # (n_active,), negative while correct
            (g,) = torch.autograd.grad(f.sum(), xa, retain_graph=j + 1 < k)
            with torch.no_grad():
                gnorm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
                dist = f.detach().abs() / gnorm
                dist = torch.where(valid, dist, torch.full_like(dist, float("inf")))
                take = dist < best_dist
                best_dist = torch.where(take, dist, best_dist)
                step = ((f.detach().abs() + 1e-4) / gnorm.pow(2)).view(-1, 1, 1, 1) * g
                best_r[take] = step[take]
        with torch.no_grad():
            x_adv[idx[fooled]] = xa[fooled].detach()
            move = idx[~fooled]
            r_tot[move] += best_r[~fooled]
            active[idx[fooled]] = False
    with torch.no_grad():
        still = active.nonzero().squeeze(1)
        x_adv[still] = (x[still] + (1.0 + b.deepfool_overshoot) * r_tot[still]).clamp(0.0, 1.0)
    return x_adv.detach()
