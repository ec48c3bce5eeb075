"""Attack budgets in [0, 1] pixel space: one dataclass, defaulted per dataset, validated, stated in reports.

Defaults: grey digit datasets (MNIST and friends) L-inf 0.3 (the usual MNIST ceiling, Madry et al. 2018) and
L2 3.0; colour datasets (CIFAR) L-inf 8/255 and L2 0.5.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

GREY = ("mnist5k", "digits", "mnist", "fashion-mnist")


@dataclass
class Budgets:
    eps: float = 0.3  # L-inf radius (fgsm, bim, pgd, apgd, square, autoattack, adaptive)
    eps_l2: float = 3.0  # L2 radius (pgdl2)
    steps: int = 20  # iterations of bim, pgd, pgdl2, apgd
    step_frac: float = 2.5  # step size = step_frac * eps / steps (Madry et al.'s 2.5 eps / steps)
    restarts: int = 2  # pgd random restarts (later restarts only on inputs the earlier ones failed)
    cw_c: float = 1.0  # CW-L2 initial constant c; a binary search adjusts it per input
    cw_search: int = 3  # binary-search rounds over c (1: the stated c only)
    cw_steps: int = 50  # Adam iterations per round
    cw_lr: float = 0.05  # Adam learning rate in tanh space
    cw_kappa: float = 0.0  # confidence margin
    deepfool_steps: int = 50
    deepfool_overshoot: float = 0.02
    deepfool_candidates: int = 4  # classes of highest logit considered (Foolbox's `candidates`)
    square_queries: int = 1000
    adaptive_steps: int = 200  # iterations of each run of the adaptive attacks
    adaptive_restarts: int = 5  # runs of the adaptive attacks (clean start, then random starts) per target
    adaptive_margin: float = (
        1.0  # how far under the deployed threshold (score units) the adaptive attacks aim
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Budgets:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def for_attack(self, name: str) -> dict[str, Any]:
        """The budget of one attack, as stated in reports."""
        it = {"steps": self.steps, "step_size": self.step_size(self.eps)}
        table: dict[str, dict[str, Any]] = {
            "fgsm": {"norm": "Linf", "eps": self.eps},
            "bim": {"norm": "Linf", "eps": self.eps, **it},
            "pgd": {"norm": "Linf", "eps": self.eps, **it, "restarts": self.restarts, "random_start": True},
            "pgdl2": {
                "norm": "L2",
                "eps": self.eps_l2,
                "steps": self.steps,
                "step_size": self.step_size(self.eps_l2),
            },
            "cw": {
                "norm": "L2",
                "eps": None,
                "c": self.cw_c,
                "search_rounds": self.cw_search,
                "steps": self.cw_steps,
                "lr": self.cw_lr,
                "kappa": self.cw_kappa,
            },
            "deepfool": {
                "norm": "L2",
                "eps": None,
                "steps": self.deepfool_steps,
                "overshoot": self.deepfool_overshoot,
                "candidates": self.deepfool_candidates,
            },
            "apgd": {"norm": "Linf", "eps": self.eps, "steps": self.steps, "restarts": 1, "loss": "ce"},
            "apgd_dlr": {"norm": "Linf", "eps": self.eps, "steps": self.steps, "restarts": 1, "loss": "dlr"},
            "square": {"norm": "Linf", "eps": self.eps, "queries": self.square_queries},
            "autoattack": {"norm": "Linf", "eps": self.eps, "version": "standard"},
        }
        ada = {
            "norm": "Linf",
            "eps": self.eps,
            "steps": self.adaptive_steps,
            "restarts": self.adaptive_restarts,
            "step_size": self.step_size(self.eps, self.adaptive_steps),
            "margin": self.adaptive_margin,
        }
        table["adaptive"] = dict(ada, targets="runner-up")
        table["adaptive_multitarget"] = dict(ada, targets="every wrong class")
        table["adaptive_orthogonal"] = dict(ada, targets="runner-up", steps_kind="orthogonal projection")
        return table[name]

    def step_size(self, eps: float, steps: int | None = None) -> float:
        return self.step_frac * eps / (steps or self.steps)

    def validate(self, input_shape: tuple[int, int, int] | None = None) -> None:
        """Raise ValueError with one line for a budget out of range."""
        l2_max = math.sqrt(math.prod(input_shape)) if input_shape else float("inf")
        checks = [
            (0.0 < self.eps <= 1.0, f"--eps must be in (0, 1] (L-inf in [0, 1] pixel space), got {self.eps}"),
            (0.0 < self.eps_l2 <= l2_max, f"--eps-l2 must be in (0, {l2_max:.4g}], got {self.eps_l2}"),
            (1 <= self.steps <= 10_000, f"--steps must be in [1, 10000], got {self.steps}"),
            (0.0 < self.step_frac <= 10.0, f"--step-frac must be in (0, 10], got {self.step_frac}"),
            (1 <= self.restarts <= 100, f"--restarts must be in [1, 100], got {self.restarts}"),
            (0.0 < self.cw_c <= 1e6, f"--cw-c must be in (0, 1e6], got {self.cw_c}"),
            (1 <= self.cw_search <= 20, f"--cw-search must be in [1, 20], got {self.cw_search}"),
            (1 <= self.cw_steps <= 10_000, f"--cw-steps must be in [1, 10000], got {self.cw_steps}"),
            (0.0 < self.cw_lr <= 10.0, f"--cw-lr must be in (0, 10], got {self.cw_lr}"),
            (0.0 <= self.cw_kappa <= 1e3, f"--cw-kappa must be in [0, 1000], got {self.cw_kappa}"),
            (
                1 <= self.deepfool_steps <= 1_000,
                f"--deepfool-steps must be in [1, 1000], got {self.deepfool_steps}",
            ),
            (
                0.0 <= self.deepfool_overshoot <= 1.0,
                f"--deepfool-overshoot must be in [0, 1], got {self.deepfool_overshoot}",
            ),
            (
                self.deepfool_candidates >= 2,
                f"--deepfool-candidates must be >= 2, got {self.deepfool_candidates}",
            ),
            (
                1 <= self.square_queries <= 100_000,
                f"--square-queries must be in [1, 100000], got {self.square_queries}",
            ),
            (
                1 <= self.adaptive_steps <= 10_000,
                f"--adaptive-steps must be in [1, 10000], got {self.adaptive_steps}",
            ),
            (
                1 <= self.adaptive_restarts <= 100,
                f"--adaptive-restarts must be in [1, 100], got {self.adaptive_restarts}",
            ),
            (
                0.0 <= self.adaptive_margin <= 1e3,
                f"--adaptive-margin must be in [0, 1000], got {self.adaptive_margin}",
            ),
        ]
        for ok, msg in checks:
            if not ok or any(isinstance(v, float) and not math.isfinite(v) for v in asdict(self).values()):
                raise ValueError(msg if not ok else "budgets must be finite numbers")


def default_budgets(dataset: str) -> Budgets:
    if dataset in GREY:
        return Budgets()
    return Budgets(eps=8 / 255, eps_l2=0.5, cw_c=1.0)


_HELP = {
    "eps": "L-inf radius (default: 0.3 for grey digits, 8/255 for colour)",
    "eps_l2": "L2 radius of pgdl2 (default: 3.0 grey, 0.5 colour)",
    "steps": "iterations of bim, pgd, pgdl2, apgd",
    "step_frac": "step size = step_frac * eps / steps",
    "restarts": "pgd random restarts",
    "cw_c": "CW-L2 initial c (a per-input binary search adjusts it)",
    "cw_search": "CW-L2 binary-search rounds (1 = the stated c only)",
    "cw_steps": "CW-L2 Adam iterations per round",
    "cw_lr": "CW-L2 Adam learning rate",
    "cw_kappa": "CW-L2 confidence margin",
    "deepfool_steps": "DeepFool iterations",
    "deepfool_overshoot": "DeepFool overshoot",
    "deepfool_candidates": "DeepFool: classes of highest logit considered",
    "square_queries": "Square attack query budget",
    "adaptive_steps": "adaptive attacks: iterations per run",
    "adaptive_restarts": "adaptive attacks: runs per target (clean start, then random starts)",
    "adaptive_margin": "adaptive attacks: how far under the deployed threshold to aim (score units)",
}


def add_budget_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attack budgets ([0, 1] pixel space)")
    for f in fields(Budgets):
        flag = "--" + f.name.replace("_", "-")
        typ = int if f.type in (int, "int") else float
        g.add_argument(
            flag,
            type=typ,
            default=None,
            help=_HELP[f.name] + (f" [{f.default}]" if f.name not in ("eps", "eps_l2") else ""),
        )


def budgets_from_args(args: argparse.Namespace, dataset: str | None = None) -> dict[str, Any]:
    """Only the budgets given on the command line (the rest default per dataset later)."""
    return {f.name: getattr(args, f.name) for f in fields(Budgets) if getattr(args, f.name, None) is not None}


def resolve_budgets(dataset: str, overrides: dict[str, Any] | None, input_shape=None) -> Budgets:
    b = default_budgets(dataset).to_dict()
    b.update(overrides or {})
    out = Budgets.from_dict(b)
    out.validate(input_shape)
    return out
