"""Attack budgets in [0, 1] pixel space: one dataclass, defaulted per dataset, validated, stated in reports.

Each attack's budget as reports state it comes from its spec (``detector/harness/attacks/__init__.py``).
Defaults: grey digit datasets (MNIST and friends) L-inf 0.3 (the usual MNIST ceiling, Madry et al. 2018) and
L2 3.0; colour datasets (CIFAR) L-inf 8/255 and L2 0.5.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

from training.configargs import add_arguments, check_options, given, option

GREY = ("mnist5k", "digits", "mnist", "fashion-mnist")
FAMILIES = ("grey", "colour")  # what budgets and the literature figures are defaulted by


def family(dataset: str) -> str:
    """The dataset's family: grey digits (MNIST and friends) or colour images (CIFAR and the rest)."""
    return "grey" if dataset in GREY else "colour"


GROUP = "attack budgets ([0, 1] pixel space)"


_b = partial(option, group=GROUP)


@dataclass
class Budgets:
    eps: float = _b(
        0.3,
        "L-inf radius: fgsm, bim, pgd, apgd, square, autoattack and the adaptive attacks",
        gt=0,
        le=1,
        default_help="0.3 for grey digits, 8/255 for colour",
    )
    eps_l2: float = _b(3.0, "L2 radius of pgdl2", gt=0, default_help="3.0 for grey digits, 0.5 for colour")
    steps: int = _b(20, "iterations of bim, pgd, pgdl2, apgd, apgd_dlr", ge=1, le=10_000)
    step_frac: float = _b(
        2.5, "step size = step_frac * eps / steps (Madry et al.'s 2.5 eps / steps)", gt=0, le=10
    )
    restarts: int = _b(
        2, "pgd random restarts (later ones only on inputs the earlier ones failed)", ge=1, le=100
    )
    cw_c: float = _b(1.0, "CW-L2 initial constant c (a per-input binary search adjusts it)", gt=0, le=1e6)
    cw_search: int = _b(3, "CW-L2 binary-search rounds over c (1: the stated c only)", ge=1, le=20)
    cw_steps: int = _b(50, "CW-L2 Adam iterations per round", ge=1, le=10_000)
    cw_lr: float = _b(0.2, "CW-L2 Adam learning rate in tanh space", gt=0, le=10)
    cw_kappa: float = _b(0.0, "CW-L2 confidence margin", ge=0, le=1e3)
    deepfool_steps: int = _b(50, "DeepFool iterations", ge=1, le=1_000)
    deepfool_overshoot: float = _b(0.02, "DeepFool overshoot", ge=0, le=1)
    deepfool_candidates: int = _b(
        4, "DeepFool: classes of highest logit considered (Foolbox's candidates)", ge=2
    )
    square_queries: int = _b(1000, "Square attack query budget", ge=1, le=100_000)
    adaptive_steps: int = _b(200, "adaptive attacks: iterations per run", ge=1, le=10_000)
    adaptive_restarts: int = _b(
        5, "adaptive attacks: runs per target (clean start, then random starts)", ge=1, le=100
    )
    adaptive_margin: float = _b(
        1.0, "adaptive attacks: how far under the deployed threshold to aim (score units)", ge=0, le=1e3
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Budgets:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def step_size(self, eps: float, steps: int | None = None) -> float:
        return self.step_frac * eps / (steps or self.steps)

    def validate(self, input_shape: tuple[int, int, int] | None = None) -> None:
        """Raise ValueError with one line for a budget out of range (and an L2 radius beyond the image's)."""
        check_options(self)
        l2_max = math.sqrt(math.prod(input_shape)) if input_shape else float("inf")
        if self.eps_l2 > l2_max:
            raise ValueError(f"--eps-l2 must be in (0, {l2_max:.4g}], got {self.eps_l2}")


def default_budgets(dataset: str) -> Budgets:
    if family(dataset) == "grey":
        return Budgets()
    return Budgets(eps=8 / 255, eps_l2=0.5, cw_c=1.0)


def add_budget_args(p: argparse.ArgumentParser) -> None:
    """Every budget as a flag that, left off, defers to the dataset's default (``resolve_budgets``)."""
    add_arguments(p, Budgets, only_given=True)


def budgets_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Only the budgets given on the command line (the rest default per dataset later)."""
    return given(Budgets, args)


def resolve_budgets(dataset: str, overrides: dict[str, Any] | None, input_shape=None) -> Budgets:
    b = default_budgets(dataset).to_dict()
    b.update(overrides or {})
    out = Budgets.from_dict(b)
    out.validate(input_shape)
    return out
