"""The attack registry: one ``AttackSpec`` per attack, from which ``--attacks`` help, the attack suites, each
attack's stated budget and the report's literature column are built.

An attack is a function ``(target, x, y, budgets, seed) -> x_adv`` (``base.py``). One file per family:
torchattacks wrappers (fgsm, bim, pgd, pgdl2, apgd, apgd_dlr, square, autoattack), our own batched cw (CW-L2
with a search over c) and deepfool, and the white-box attacks that know the detector (``adaptive``,
``adaptive_multitarget``, ``adaptive_orthogonal``). Adding an attack is its function and one ``AttackSpec``
below; a spec that lacks a field, a literature entry for a dataset family or a budget is an error at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
from detector.harness.budgets import FAMILIES, Budgets

AttackFn = Callable[[AttackTarget, torch.Tensor, torch.Tensor, Budgets, int], torch.Tensor]
SUITES = ("default", "robust")  # the named lists ``--attacks`` accepts besides 'all'


@dataclass(frozen=True)
class AttackSpec:
    """Everything the harness knows about one attack.

    ``budget`` states the attack's budget from the run's ``Budgets`` (what the report prints and what a saved
    set must match); ``white_box``: it uses the network's gradients; ``adaptive``: it knows the detector;
    ``masking_reference``: a white-box L-inf attack in Square's ball, which the gradient-masking check compares
    Square with; ``literature``: per dataset family (``budgets.FAMILIES``) what an attack of this kind achieves
    against an undefended network at the default budget, or None where no figure is quoted; ``suites``: the
    named lists it belongs to (an attack in none is opt-in, run by naming it or by 'all')."""

    name: str
    fn: AttackFn
    help: str
    budget: Callable[[Budgets], dict[str, Any]]
    white_box: bool
    literature: dict[str, str | None]
    suites: tuple[str, ...] = ()
    adaptive: bool = False
    masking_reference: bool = False


def _linf(b: Budgets) -> dict[str, Any]:
    return {"norm": "Linf", "eps": b.eps}


def _iterative(b: Budgets) -> dict[str, Any]:
    return {**_linf(b), "steps": b.steps, "step_size": b.step_size(b.eps)}


def _adaptive_budget(targets: str, **extra: Any) -> Callable[[Budgets], dict[str, Any]]:
    def budget(b: Budgets) -> dict[str, Any]:
        return {
            **_linf(b),
            "steps": b.adaptive_steps,
            "restarts": b.adaptive_restarts,
            "step_size": b.step_size(b.eps, b.adaptive_steps),
            "margin": b.adaptive_margin,
            "targets": targets,
            **extra,
        }

    return budget


# Iterative L-inf attacks at MNIST's 0.3 have about twice the mean L-inf distance Carlini & Wagner's attack needs
# (0.13, "Towards Evaluating the Robustness of Neural Networks", 2017, 100% success), so they should succeed on
# every input; minimal-perturbation attacks succeed by construction. MNIST FGSM: Goodfellow, Shlens & Szegedy
# 2015 ("Explaining and Harnessing Adversarial Examples", Sec. 4): eps 0.25 gives a maxout network an 89.4% error
# rate. CIFAR-10 at L-inf 8/255: Madry et al. 2018 ("Towards Deep Learning Models Resistant to Adversarial
# Attacks", the CIFAR10 table of the capacity study, Sec. 4 / Fig. 4): their naturally trained wide ResNet keeps
# 95.2% clean accuracy, 32.7% under FGSM and 3.5% under PGD (the 3.5% / 95.2% pair is also quoted in Table 1 of
# Raghunathan et al. 2019, "Adversarial Training Can Hurt Generalization"). The registry's figures are success
# rates over correctly classified inputs, as the reports count them: 1 - 32.7 / 95.2 = 66% and
# 1 - 3.5 / 95.2 = 96%. (Goodfellow et al.'s CIFAR-10 figure, an 87.15% error rate at eps 0.1 of their
# preprocessed inputs, is not on the [0, 1] pixel scale and is not used.)
_ALWAYS = {"grey": "~100%", "colour": None}
_MINIMAL_CW = {"grey": "100% (Carlini & Wagner 2017)", "colour": "100% (Carlini & Wagner 2017)"}
_MINIMAL_DF = {"grey": "100% (Moosavi-Dezfooli 2016)", "colour": "100% (Moosavi-Dezfooli 2016)"}
_NONE = {"grey": None, "colour": None}

SPECS: dict[str, AttackSpec] = {
    s.name: s
    for s in (
        AttackSpec(
            "fgsm",
            _ta.fgsm,
            "one signed-gradient step (Goodfellow 2015)",
            _linf,
            True,
            {
                "grey": "89% (maxout, eps 0.25; Goodfellow 2015)",
                "colour": "~66% (Madry 2018, natural wide ResNet)",
            },
            ("default",),
        ),
        AttackSpec(
            "bim",
            _ta.bim,
            "iterative FGSM (Kurakin 2017)",
            _iterative,
            True,
            _ALWAYS,
            ("default",),
            masking_reference=True,
        ),
        AttackSpec(
            "pgd",
            _ta.pgd,
            "L-inf PGD with random restarts (Madry 2018)",
            lambda b: {**_iterative(b), "restarts": b.restarts, "random_start": True},
            True,
            {"grey": "~100%", "colour": "~96% (Madry 2018, natural wide ResNet)"},
            ("default", "robust"),
            masking_reference=True,
        ),
        AttackSpec(
            "pgdl2",
            _ta.pgdl2,
            "L2 PGD",
            lambda b: {"norm": "L2", "eps": b.eps_l2, "steps": b.steps, "step_size": b.step_size(b.eps_l2)},
            True,
            _ALWAYS,
            ("default",),
        ),
        AttackSpec(
            "cw",
            cw,
            "CW-L2 with a binary search over c (Carlini & Wagner 2017)",
            lambda b: {
                "norm": "L2",
                "eps": None,
                "c": b.cw_c,
                "search_rounds": b.cw_search,
                "steps": b.cw_steps,
                "lr": b.cw_lr,
                "kappa": b.cw_kappa,
            },
            True,
            _MINIMAL_CW,
            ("default",),
        ),
        AttackSpec(
            "deepfool",
            deepfool,
            "minimal L2 perturbation (Moosavi-Dezfooli 2016)",
            lambda b: {
                "norm": "L2",
                "eps": None,
                "steps": b.deepfool_steps,
                "overshoot": b.deepfool_overshoot,
                "candidates": b.deepfool_candidates,
            },
            True,
            _MINIMAL_DF,
            ("default",),
        ),
        AttackSpec(
            "apgd",
            _ta.apgd,
            "APGD, cross-entropy loss (Croce & Hein 2020)",
            lambda b: {**_linf(b), "steps": b.steps, "restarts": 1, "loss": "ce"},
            True,
            _ALWAYS,
            ("default", "robust"),
            masking_reference=True,
        ),
        AttackSpec(
            "apgd_dlr",
            _ta.apgd_dlr,
            "APGD, difference-of-logits-ratio loss (Croce & Hein 2020)",
            lambda b: {**_linf(b), "steps": b.steps, "restarts": 1, "loss": "dlr"},
            True,
            _ALWAYS,
            ("robust",),
            masking_reference=True,
        ),
        AttackSpec(
            "square",
            _ta.square,
            "gradient-free score-based search (Andriushchenko 2020)",
            lambda b: {**_linf(b), "queries": b.square_queries},
            False,
            _ALWAYS,
            ("default", "robust"),
        ),
        AttackSpec(
            "adaptive",
            adaptive,
            "white-box, knows the detector: runner-up target",
            _adaptive_budget("runner-up"),
            True,
            _NONE,
            ("default", "robust"),
            adaptive=True,
        ),
        AttackSpec(
            "adaptive_multitarget",
            adaptive_multitarget,
            "white-box, knows the detector: every wrong class as target",
            _adaptive_budget("every wrong class"),
            True,
            _NONE,
            ("robust",),
            adaptive=True,
        ),
        AttackSpec(
            "adaptive_orthogonal",
            adaptive_orthogonal,
            "white-box, knows the detector: orthogonal projected steps (Bryniarski 2022)",
            _adaptive_budget("runner-up", steps_kind="orthogonal projection"),
            True,
            _NONE,
            ("robust",),
            adaptive=True,
        ),
        AttackSpec(
            "autoattack",
            _ta.autoattack,
            "the standard AutoAttack ensemble (Croce & Hein 2020), slow",
            lambda b: {**_linf(b), "version": "standard"},
            True,
            _ALWAYS,
        ),
    )
}


def _check_specs(specs: dict[str, AttackSpec]) -> None:
    """A spec that cannot serve every run is an error at import, not a KeyError mid-run."""
    probe = Budgets()
    for name, s in specs.items():
        if name != s.name or not callable(s.fn) or not s.help:
            raise TypeError(f"attack spec {name!r}: name, function and help must be set")
        if set(s.literature) != set(FAMILIES):
            raise TypeError(
                f"attack spec {name!r}: literature must name every family {FAMILIES}, got {s.literature}"
            )
        if not set(s.suites) <= set(SUITES):
            raise TypeError(f"attack spec {name!r}: unknown suite in {s.suites}")
        if "norm" not in s.budget(probe):
            raise TypeError(f"attack spec {name!r}: its budget must state a norm")


_check_specs(SPECS)
ATTACKS: dict[str, AttackFn] = {n: s.fn for n, s in SPECS.items()}
ADAPTIVE = tuple(
    n for n, s in SPECS.items() if s.adaptive
)  # attacks that need the target's adaptive objective
DEFAULT_SUITE = tuple(n for n, s in SPECS.items() if "default" in s.suites)
ROBUST_SUITE = tuple(n for n, s in SPECS.items() if "robust" in s.suites)
OPT_IN = tuple(n for n, s in SPECS.items() if not s.suites)
MASKING_REFERENCES = tuple(n for n, s in SPECS.items() if s.masking_reference)


def budget_of(name: str, budgets: Budgets) -> dict[str, Any]:
    """The budget of one attack, as stated in reports."""
    return SPECS[name].budget(budgets)


def literature_of(name: str, dataset: str) -> str | None:
    """The literature figure for an attack on this dataset's family, or None."""
    from detector.harness.budgets import family

    return SPECS[name].literature[family(dataset)]


def attacks_help() -> str:
    """``--attacks`` help, from the registry."""
    rest = (n for n in SPECS if n not in DEFAULT_SUITE)
    return (
        f"comma list of {', '.join(SPECS)}; 'default' = {', '.join(DEFAULT_SUITE)}; 'robust' = "
        f"{', '.join(ROBUST_SUITE)}; 'all' = default + {', '.join(rest)}"
    )


def parse_attack_list(spec: str | list[str] | None) -> list[str]:
    """'fgsm,pgd' -> ['fgsm', 'pgd']; 'default' -> the default suite; 'robust' -> the robustness suite; 'all'
    -> every attack."""
    if spec is None or spec == "default":
        return list(DEFAULT_SUITE)
    names = spec if isinstance(spec, list) else [s.strip().lower() for s in spec.split(",") if s.strip()]
    named = {"default": DEFAULT_SUITE, "robust": ROBUST_SUITE, "all": (*DEFAULT_SUITE, *SPECS)}
    out: dict[str, None] = {}  # ordered, without repeats
    for name in names:
        if name not in named and name not in SPECS:
            raise ValueError(
                f"unknown attack {name!r}; choose from {', '.join(SPECS)} (or default, robust, all)"
            )
        out.update(dict.fromkeys(named.get(name, (name,))))
    if not out:
        raise ValueError("no attack given")
    return list(out)


def run_attack(
    name: str, target: AttackTarget, x: torch.Tensor, y: torch.Tensor, budgets: Budgets, seed: int
) -> torch.Tensor:
    """Run one attack on a batch with a fixed seed; returns x_adv (N, C, H, W) detached, clamped to [0, 1]."""
    torch.manual_seed(seed)
    target.model.eval()
    x_adv = SPECS[name].fn(target, x, y, budgets, seed)
    target.model.eval()  # whatever an attack library did to the mode, scoring runs in eval mode
    return x_adv.detach().clamp(0.0, 1.0)


__all__ = [
    "ADAPTIVE",
    "ATTACKS",
    "DEFAULT_SUITE",
    "MASKING_REFERENCES",
    "OPT_IN",
    "ROBUST_SUITE",
    "SPECS",
    "AttackSpec",
    "AttackTarget",
    "DetectorObjective",
    "TwinObjective",
    "attacks_help",
    "budget_of",
    "literature_of",
    "parse_attack_list",
    "run_attack",
]
