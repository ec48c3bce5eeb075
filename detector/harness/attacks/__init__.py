"""The attack registry: names -> functions ``(target, x, y, budgets, seed) -> x_adv``.

One file per family: torchattacks wrappers (fgsm, bim, pgd, pgdl2, apgd, apgd_dlr, square, autoattack), our own
batched cw (CW-L2 with a search over c) and deepfool, and the white-box attacks that know the detector
(``adaptive``, ``adaptive_multitarget``, ``adaptive_orthogonal``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from detector.harness.attacks import torchattacks_wrap as _ta
from detector.harness.attacks.adaptive import (
    DetectorObjective,
    TwinObjective,
    adaptive,
    adaptive_multitarget,
    adaptive_orthogonal,
)
from detector.harness.attacks.base import AttackTarget
from detector.harness.attacks.cw import cw
from detector.harness.attacks.deepfool import deepfool
from detector.harness.budgets import Budgets

AttackFn = Callable[[AttackTarget, torch.Tensor, torch.Tensor, Budgets, int], torch.Tensor]

ATTACKS: dict[str, AttackFn] = {
    "fgsm": _ta.fgsm,
    "bim": _ta.bim,
    "pgd": _ta.pgd,
    "pgdl2": _ta.pgdl2,
    "cw": cw,
    "deepfool": deepfool,
    "apgd": _ta.apgd,
    "apgd_dlr": _ta.apgd_dlr,
    "square": _ta.square,
    "adaptive": adaptive,
    "adaptive_multitarget": adaptive_multitarget,
    "adaptive_orthogonal": adaptive_orthogonal,
    "autoattack": _ta.autoattack,
}
# Attacks that know the detector (they need the target's adaptive objective).
ADAPTIVE = ("adaptive", "adaptive_multitarget", "adaptive_orthogonal")
DEFAULT_SUITE = ("fgsm", "bim", "pgd", "pgdl2", "cw", "deepfool", "apgd", "square", "adaptive")
# The suite of robustness evaluations: every detector-aware attack, plus checks against gradient masking.
ROBUST_SUITE = ("pgd", "apgd", "apgd_dlr", "square", *ADAPTIVE)
OPT_IN = ("autoattack", "apgd_dlr", "adaptive_multitarget", "adaptive_orthogonal")

__all__ = [
    "ADAPTIVE",
    "ATTACKS",
    "DEFAULT_SUITE",
    "OPT_IN",
    "ROBUST_SUITE",
    "AttackTarget",
    "DetectorObjective",
    "TwinObjective",
    "parse_attack_list",
    "run_attack",
]


def parse_attack_list(spec: str | list[str] | None) -> list[str]:
    """'fgsm,pgd' -> ['fgsm', 'pgd']; 'default' -> the default suite; 'robust' -> the robustness suite; 'all'
    adds the opt-in ones."""
    if spec is None or spec == "default":
        return list(DEFAULT_SUITE)
    names = spec if isinstance(spec, list) else [s.strip().lower() for s in spec.split(",") if s.strip()]
    out: list[str] = []
    for name in names:
        if name == "default":
            out += [a for a in DEFAULT_SUITE if a not in out]
        elif name == "robust":
            out += [a for a in ROBUST_SUITE if a not in out]
        elif name == "all":
            out += [a for a in (*DEFAULT_SUITE, *OPT_IN) if a not in out]
        elif name not in ATTACKS:
            raise ValueError(
                f"unknown attack {name!r}; choose from {', '.join(ATTACKS)} (or default, robust, all)"
            )
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
    target.model.eval()  # whatever an attack library did to the mode, scoring runs in eval mode
    return x_adv.detach().clamp(0.0, 1.0)
