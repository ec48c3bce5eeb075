"""Baseline detectors, all on the softmax twin of the L-GM network (``twin.py``), scored side by side with it.

One registry, ``REGISTRY``: its order is the report's column order, and every list the evaluation needs (which
baselines need attacks, which the adaptive attacks follow) is derived from it. Each entry implements the
``Baseline`` protocol (``base.py``):

- ``msp``: maximum softmax probability (Hendrycks & Gimpel, ICLR 2017) (``msp.py``).
- ``mahalanobis``: Lee et al. 2018 on the penultimate layer only, tied covariance (``mahalanobis.py``).
- ``mahalanobis_full``: Lee et al. 2018 as published: feature ensemble, input pre-processing, logistic
  regression (``mahalanobis.py``).
- ``lid``: local intrinsic dimensionality (Ma et al., ICLR 2018), per layer, logistic regression (``lid.py``).
- ``kd``: kernel density of the last hidden layer (Feinman et al. 2017) (``kd.py``).

Every score is larger for more abnormal inputs; each threshold is the target-FPR quantile of the clean
calibration scores. The ``needs_attacks`` baselines fit their regressions on attacks generated on the
calibration split (``FIT_ATTACKS`` by default), never test inputs, and are left out of a run without them.
``lgm evaluate --baselines`` chooses which of them run (``resolve_baselines``: a subset, ``all`` or ``none``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detector.harness import roc
from detector.harness.baselines.base import Baseline, FitData, Forward
from detector.harness.baselines.kd import KDBaseline
from detector.harness.baselines.lid import LIDBaseline
from detector.harness.baselines.mahalanobis import MahalanobisBaseline, MahalanobisFullBaseline
from detector.harness.baselines.msp import MSPBaseline
from detector.harness.baselines.twin import ensure_twin, twin_dir, twin_ready
from training.artifacts import load_artifact
from training.batched import batched, model_device
from training.data import Dataset
from training.model import Classifier

REGISTRY: tuple[type[Baseline], ...] = (
    MSPBaseline,
    MahalanobisBaseline,
    MahalanobisFullBaseline,
    LIDBaseline,
    KDBaseline,
)
FIT_ATTACKS = ("fgsm", "deepfool")  # one large-budget L-inf attack, one minimal L2 attack


def _check_registry(registry: tuple[type, ...]) -> None:
    """A malformed entry is an error at import, not a missing column at the end of a run."""
    names = [getattr(c, "name", None) for c in registry]
    if len(set(names)) != len(names) or "lgm" in names:
        raise TypeError(f"baseline names must be unique and not 'lgm': {names}")
    for c in registry:
        missing = [a for a in ("name", "needs_attacks", "differentiable") if not hasattr(c, a)]
        missing += [
            m for m in ("fit", "score", "attack_score", "describe") if not callable(getattr(c, m, None))
        ]
        if missing:
            raise TypeError(
                f"baseline {c.__name__} lacks {', '.join(missing)} (see detector/harness/baselines/base.py)"
            )


_check_registry(REGISTRY)
BASELINES = tuple(c.name for c in REGISTRY)
NEEDS_ATTACKS = tuple(c.name for c in REGISTRY if c.needs_attacks)
ADAPTIVE_BASELINES = tuple(
    c.name for c in REGISTRY if c.differentiable
)  # what the twin's adaptive attacks follow
CHOICES = (*BASELINES, "all", "none")  # what ``--baselines`` accepts


def resolve_baselines(spec: list[str]) -> list[str]:
    """``--baselines`` as the baselines to run, in registry order: ``all`` -> every one, ``none`` -> [] (no twin
    is trained or loaded), else the names given. ValueError (one line) for an unknown name, for ``none``
    together with names, and for an empty list."""
    unknown = [n for n in spec if n not in CHOICES]
    if unknown:
        raise ValueError(f"--baselines: unknown baseline {unknown[0]!r}; choose from {', '.join(CHOICES)}")
    if not spec:
        raise ValueError("--baselines: give baseline names, 'all' or 'none'")
    if "none" in spec:
        if len(spec) > 1:
            raise ValueError("--baselines: 'none' cannot be combined with other names")
        return []
    return list(BASELINES) if "all" in spec else [n for n in BASELINES if n in spec]


@dataclass
class Baselines:
    """The twin network, the fitted baselines (registry order) and their thresholds (flag when score > it)."""

    model: Classifier
    meta: dict[str, Any]
    members: dict[str, Baseline]
    thresholds: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)  # spread of each score on clean calibration inputs
    fit_attacks: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.members)

    def scores(self, x: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
        """pred (N,) and every fitted baseline's score (N,) float64 (larger = more abnormal); one twin forward
        per batch serves them all."""

        def one(xb: torch.Tensor) -> dict[str, torch.Tensor]:
            out = Forward.of(self.model, xb)
            scores = {n: b.score(out).double().to(xb.device) for n, b in self.members.items()}
            return {"pred": out.logits.argmax(1), **scores}

        return batched(one, x, batch_size, model_device(self.model))

    def attack_scores(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """The differentiable baselines' scores as functions of x (N,) each, for inputs the attacker wants
        classified as t (what ``TwinObjective`` follows)."""
        out = Forward.of(self.model, x)
        return {n: b.attack_score(out, t) for n, b in self.members.items() if b.differentiable}

    def seen_attacks(self, name: str) -> list[str]:
        """The attacks a baseline was fitted on."""
        return list(self.fit_attacks) if self.members[name].needs_attacks else []

    def describe(self) -> dict[str, Any]:
        """What the report states about each baseline's fit."""
        return {
            n: {
                "network": "twin",
                **b.describe(),
                **({"fit_attacks": list(self.fit_attacks)} if b.needs_attacks else {}),
                "threshold": self.thresholds.get(n),
            }
            for n, b in self.members.items()
        }


def load_twin(
    art_dir: str | Path, meta: dict[str, Any], device: torch.device
) -> tuple[Classifier, dict[str, Any]]:
    """The twin network (trained first if missing)."""
    return load_artifact(ensure_twin(art_dir, meta), device)


def fit_baselines(
    model: Classifier,
    tmeta: dict[str, Any],
    ds: Dataset,
    target_fpr: float,
    noise: float = 0.0,
    calibration_adversarial: torch.Tensor | None = None,
    fit_attacks: list[str] | None = None,
    seed: int = 0,
    only_differentiable: bool = False,
    names: list[str] | None = None,
) -> Baselines:
    """Fit the registered baselines in ``names`` (default: every one; those that need attacks only when
    calibration adversarials are given; with ``only_differentiable``, only those an adaptive attack follows)
    and set each threshold at the target FPR on the clean calibration split."""
    adv = (
        calibration_adversarial
        if calibration_adversarial is not None and len(calibration_adversarial)
        else None
    )
    data = FitData(model, ds, noise, adv, seed)
    members: dict[str, Baseline] = {}
    for cls in REGISTRY:
        if (
            (names is not None and cls.name not in names)
            or (cls.needs_attacks and adv is None)
            or (only_differentiable and not cls.differentiable)
        ):
            continue
        member = cls()
        member.fit(data)
        members[cls.name] = member
    base = Baselines(model, tmeta, members, fit_attacks=list(fit_attacks or []) if adv is not None else [])
    s = base.scores(data.clean)
    base.thresholds = {n: float(roc.threshold_at_fpr(s[n].numpy(), target_fpr)) for n in base.names}
    base.scales = {n: float(s[n].std()) or 1.0 for n in base.names}
    return base


__all__ = [
    "ADAPTIVE_BASELINES",
    "BASELINES",
    "CHOICES",
    "FIT_ATTACKS",
    "NEEDS_ATTACKS",
    "REGISTRY",
    "Baseline",
    "Baselines",
    "FitData",
    "Forward",
    "ensure_twin",
    "fit_baselines",
    "load_twin",
    "resolve_baselines",
    "twin_dir",
    "twin_ready",
]
