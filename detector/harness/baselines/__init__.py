"""Baseline detectors, all on the softmax twin of the L-GM network (``twin.py``), scored side by side with it.

- ``msp``: maximum softmax probability (Hendrycks & Gimpel, ICLR 2017); score = -max_k p_k.
- ``mahalanobis``: Lee et al. 2018 on the penultimate layer only, tied covariance (``mahalanobis.py``).
- ``mahalanobis_full``: Lee et al. 2018 as published: feature ensemble, input pre-processing, logistic
  regression (``mahalanobis.py``).
- ``lid``: local intrinsic dimensionality (Ma et al., ICLR 2018), per layer, logistic regression (``lid.py``).
- ``kd``: kernel density of the last hidden layer (Feinman et al. 2017) (``kd.py``).

Every score is larger for more abnormal inputs; each threshold is the target-FPR quantile of the clean
calibration scores. ``mahalanobis_full`` and ``lid`` need adversarial examples to fit their regressions: they get
attacks generated on the calibration split (``FIT_ATTACKS`` by default), never test inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.harness import roc
from detector.harness.baselines.kd import KernelDensity, log_kd
from detector.harness.baselines.lid import LID
from detector.harness.baselines.mahalanobis import MahalanobisFull, squared_mahalanobis, tied_statistics
from detector.harness.baselines.twin import ensure_twin, twin_dir, twin_ready
from training.artifacts import load_artifact
from training.data import Dataset
from training.model import Classifier, split_features

BASELINES = ("msp", "mahalanobis", "mahalanobis_full", "lid", "kd")
NEEDS_ATTACKS = ("mahalanobis_full", "lid")
FIT_ATTACKS = ("fgsm", "deepfool")
ADAPTIVE_BASELINES = (
    "msp",
    "mahalanobis",
    "mahalanobis_full",
    "kd",
)  # what Baselines.attack_scores follows  # one large-budget L-inf attack, one minimal L2 attack

__all__ = [
    "ADAPTIVE_BASELINES",
    "BASELINES",
    "FIT_ATTACKS",
    "NEEDS_ATTACKS",
    "Baselines",
    "ensure_twin",
    "fit_baselines",
    "load_twin",
    "squared_mahalanobis",
    "twin_dir",
    "twin_ready",
]


@dataclass
class Baselines:
    """The twin network, every baseline's fitted state and its threshold (flag when score > threshold)."""

    model: Classifier
    meta: dict[str, Any]
    means: torch.Tensor  # (K, D) one-layer Mahalanobis
    precision: torch.Tensor  # (D, D)
    kd: KernelDensity
    maha_full: MahalanobisFull | None = None
    lid: LID | None = None
    noise: float = 0.0  # one-layer Mahalanobis input pre-processing
    thresholds: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)  # spread of each score on clean calibration inputs
    fit_attacks: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [n for n in BASELINES if n not in NEEDS_ATTACKS or getattr(self, _ATTR[n]) is not None]

    def scores(self, x: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
        """pred (N,) and every fitted baseline's score (N,) (larger = more abnormal)."""
        dev = next(self.model.parameters()).device
        preds, msp, maha, feats_all = [], [], [], []
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(dev).float()
            with torch.no_grad():
                logits, feats = self.model(xb, return_features=True)
            if self.noise > 0:
                with torch.no_grad():
                    feats = self.model.features(self._preprocess(xb))
            preds.append(logits.argmax(1).cpu())
            msp.append((-torch.softmax(logits.float(), 1).amax(1)).cpu())
            maha.append(squared_mahalanobis(feats, self.means, self.precision).amin(1).cpu())
            feats_all.append(self.model.features(xb).detach().cpu() if self.noise > 0 else feats.cpu())
        pred = torch.cat(preds)
        out = {"pred": pred, "msp": torch.cat(msp).double(), "mahalanobis": torch.cat(maha).double()}
        out["kd"] = torch.from_numpy(self.kd.score(torch.cat(feats_all), pred))
        if self.maha_full is not None:
            out["mahalanobis_full"] = torch.from_numpy(self.maha_full.score(self.model, x))
        if self.lid is not None:
            out["lid"] = torch.from_numpy(self.lid.score(self.model, x))
        return out

    def attack_scores(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """The baselines an adaptive attack optimises, as differentiable functions of x (N,) each, for inputs the
        attacker wants classified as t: msp, mahalanobis, mahalanobis_full and kd (lid's nearest-neighbour
        search over 25k-dimensional activations is too slow to follow for hundreds of steps on a CPU).
        Input pre-processing is treated as the identity (its one small step barely moves the score)."""
        logits, feats = self.model(x, return_features=True)
        out = {
            "msp": -torch.softmax(logits.float(), 1).gather(1, t[:, None]).squeeze(1),
            "mahalanobis": squared_mahalanobis(feats, self.means, self.precision).amin(1),
            "kd": -log_kd(feats, t, self.kd.train_feats, self.kd.sigma).to(x.device).float(),
        }
        if self.maha_full is not None:
            d = torch.stack(self.maha_full.layers.distances(self.model, x), 1)  # (N, L)
            out["mahalanobis_full"] = torch_decision(self.maha_full.regression, d)
        return out

    def _preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Lee et al.'s input pre-processing: x - noise * sign(grad_x min_k M_k(x)), clamped to [0, 1]."""
        x = x.clone().requires_grad_(True)
        m = squared_mahalanobis(self.model.features(x), self.means, self.precision).amin(1).sum()
        (g,) = torch.autograd.grad(m, x)
        return (x - self.noise * g.sign()).clamp(0.0, 1.0).detach()


_ATTR = {"mahalanobis_full": "maha_full", "lid": "lid"}


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
) -> Baselines:
    """Fit every baseline on the training split, the attack-fitted ones on calibration adversarials when given,
    and set each threshold at the target FPR on the clean calibration split."""
    dev = next(model.parameters()).device
    k = int(model.spec.num_classes)
    feats = split_features(model, ds.train.x, dev).double().numpy()
    means, precision = tied_statistics(feats, ds.train.y.numpy(), k)
    base = Baselines(
        model, tmeta, means, precision, KernelDensity.fit(model, ds.train, ds.calibration), noise=noise
    )
    clean = ds.calibration.float()
    if calibration_adversarial is not None and len(calibration_adversarial):
        base.maha_full = MahalanobisFull.fit(model, ds.train, clean, calibration_adversarial, seed)
        base.lid = LID.from_training(model, ds.train, seed=seed).fit(
            model, clean, calibration_adversarial, seed
        )
        base.fit_attacks = list(fit_attacks or [])
    s = base.scores(clean)
    base.thresholds = {n: float(roc.threshold_at_fpr(s[n].numpy(), target_fpr)) for n in base.names}
    base.scales = {n: float(s[n].std()) or 1.0 for n in base.names}
    return base


def torch_decision(pipeline, feats: torch.Tensor) -> torch.Tensor:
    """A fitted sklearn pipeline (StandardScaler, then a logistic regression)'s decision function in torch, so
    that it can be differentiated: ((f - mean) / scale) . w + b."""
    scaler, lr = pipeline[0], pipeline[-1]
    as_t = lambda a: torch.as_tensor(a, dtype=feats.dtype, device=feats.device)  # noqa: E731
    z = (feats - as_t(scaler.mean_)) / as_t(scaler.scale_)
    return z @ as_t(lr.coef_[0]) + float(lr.intercept_[0])


def describe(base: Baselines) -> dict[str, Any]:
    """What the report states about each baseline's fit."""
    out: dict[str, Any] = {
        "msp": {"network": "twin"},
        "mahalanobis": {"network": "twin", "layers": "penultimate", "noise": base.noise},
        "kd": {"network": "twin", "bandwidth": base.kd.sigma, "bandwidth_grid": base.kd.grid},
    }
    if base.maha_full is not None:
        out["mahalanobis_full"] = {
            "network": "twin",
            "noise": base.maha_full.noise,
            "cv_auroc_by_noise": base.maha_full.cv_auroc,
            "fit_attacks": base.fit_attacks,
        }
    if base.lid is not None:
        out["lid"] = {
            "network": "twin",
            "k": base.lid.k,
            "fit_attacks": base.fit_attacks,
            "reference": f"{len(base.lid.reference)} x {len(base.lid.reference[0][0])} training inputs",
        }
    for n, d in out.items():
        d["threshold"] = base.thresholds.get(n)
    return out


def seen_attacks(base: Baselines, detector: str) -> list[str]:
    return list(base.fit_attacks) if detector in NEEDS_ATTACKS else []


__all__ += ["describe", "seen_attacks"]
_ = np  # numpy is used by the submodules' return types
