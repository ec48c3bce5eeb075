"""Attacks taken from torchattacks (Kim 2020, "Torchattacks: A PyTorch Repository for Adversarial Attacks").

- ``fgsm``: Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples".
- ``bim``: Kurakin et al. 2017, "Adversarial examples in the physical world".
- ``pgd``: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks"; L-inf with random
  start, restarted on the inputs earlier restarts failed to fool.
- ``pgdl2``: the same in L2.
- ``apgd`` and ``apgd_dlr``: Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
  of diverse parameter-free attacks": APGD with the cross-entropy loss, and with the difference-of-logits-ratio
  loss, which is invariant to the scale of the logits.
- ``square``: Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial attack".
- ``autoattack``: Croce & Hein 2020, the standard ensemble (APGD-CE, APGD-T, FAB-T, Square); opt-in, slow.

All take x (N, C, H, W) in [0, 1], y (N,), and return x_adv of the same shape. Every attack sees the network's
logits in float64 (``Float64Logits``, ``detector/gradient.py``): an L-GM network's logits are tens of nats
apart, its float32 softmax rounds to one-hot and the cross-entropy's gradient loses the term that moves the
predicted class (single-step FGSM suffers most). torchattacks is imported lazily so that importing this module
costs nothing until an attack runs.
"""

from __future__ import annotations

import torch

from detector.harness.attacks.base import AttackTarget, Float64Logits
from detector.harness.budgets import Budgets


def _ta():
    import torchattacks

    return torchattacks


def _net(target: AttackTarget) -> Float64Logits:
    return Float64Logits(target.model)


def fgsm(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int) -> torch.Tensor:
    return _ta().FGSM(_net(target), eps=b.eps)(x, y)


def bim(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int) -> torch.Tensor:
    return _ta().BIM(_net(target), eps=b.eps, alpha=b.step_size(b.eps), steps=b.steps)(x, y)


@torch.no_grad()
def _fooled(model, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x_adv).argmax(1) != y


def pgd(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    atk = _ta().PGD(_net(target), eps=b.eps, alpha=b.step_size(b.eps), steps=b.steps, random_start=True)
    x_adv = atk(x, y)
    for _ in range(b.restarts - 1):
        todo = ~_fooled(_net(target), x_adv, y)
        if not todo.any():
            break
        x_adv[todo] = atk(x[todo], y[todo])
    return x_adv


def pgdl2(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return _ta().PGDL2(
        _net(target), eps=b.eps_l2, alpha=b.step_size(b.eps_l2), steps=b.steps, random_start=True
    )(x, y)


def apgd(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int) -> torch.Tensor:
    return _ta().APGD(
        _net(target), norm="Linf", eps=b.eps, steps=b.steps, n_restarts=1, seed=seed, loss="ce"
    )(x, y)


def apgd_dlr(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int) -> torch.Tensor:
    return _ta().APGD(
        _net(target), norm="Linf", eps=b.eps, steps=b.steps, n_restarts=1, seed=seed, loss="dlr"
    )(x, y)


def square(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int) -> torch.Tensor:
    return _ta().Square(
        _net(target), norm="Linf", eps=b.eps, n_queries=b.square_queries, n_restarts=1, seed=seed
    )(x, y)


def autoattack(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, b: Budgets, seed: int) -> torch.Tensor:
    k = int(target.model.spec.num_classes)
    return _ta().AutoAttack(_net(target), norm="Linf", eps=b.eps, version="standard", n_classes=k, seed=seed)(
        x, y
    )
