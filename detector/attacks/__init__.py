"""The attack registry: names -> functions ``(target, x, y, budgets, seed) -> x_adv``.

One file per family: torchattacks wrappers (fgsm, bim, pgd, pgdl2, apgd, square, autoattack), our own batched
cw (CW-L2 with a search over c) and deepfool, and ``adaptive``, the white-box attack that knows the detector.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from detector.attacks import torchattacks_wrap as _ta
from detector.attacks.adaptive import LGMObjective, TwinObjective, adaptive
from detector.attacks.base import AttackTarget
from detector.attacks.cw import cw
from detector.attacks.deepfool import deepfool
from detector.budgets import Budgets

AttackFn = Callable[[AttackTarget, torch.Tensor, torch.Tensor, Budgets, int], torch.Tensor]

ATTACKS: dict[str, AttackFn] = {
    "fgsm": _ta.fgsm,
    "bim": _ta.bim,
    "pgd": _ta.pgd,
    "pgdl2": _ta.pgdl2,
    "cw": cw,
    "deepfool": deepfool,
    "apgd": _ta.apgd,
    "square": _ta.square,
    "adaptive": adaptive,
    "autoattack": _ta.autoattack,
}
DEFAULT_SUITE = ("fgsm", "bim", "pgd", "pgdl2", "cw", "deepfool", "apgd", "square", "adaptive")
OPT_IN = ("autoattack",)

__all__ = ["ATTACKS", "DEFAULT_SUITE", "OPT_IN", "AttackTarget", "LGMObjective", "TwinObjective", "parse_attack_list",
           "run_attack"]  # fmt: skip


def parse_attack_list(spec: str | list[str] | None) -> list[str]:
    """'fgsm,pgd' -> ['fgsm', 'pgd']; 'default' -> the default suite; 'all' adds the opt-in ones."""
    if spec is None or spec == "default":
        return list(DEFAULT_SUITE)
    names = spec if isinstance(spec, list) else [s.strip().lower() for s in spec.split(",") if s.strip()]
    out: list[str] = []
    for name in names:
        if name == "default":
            out += [a for a in DEFAULT_SUITE if a not in out]
        elif name == "all":
            out += [a for a in (*DEFAULT_SUITE, *OPT_IN) if a not in out]
        elif name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)} (or default, all)")
        elif name not in out:
            out.append(name)
    if not out:
        raise ValueError("no attack given")
    return out


def run_attack(
    name: str, target: AttackTarget, x: torch.Tensor, y: torch.Tensor, budgets: Budgets, seed: int
) -> torch.Tensor:
    """Run one attack on a batch with a fixed seed; returns x_adv (N, C, H, W) detached, clamped to [0, 1]."""
    torch.manual_seed(seed)
    target.model.eval()
    x_adv = ATTACKS[name](target, x, y, budgets, seed)
    return x_adv.detach().clamp(0.0, 1.0)
