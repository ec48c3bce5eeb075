"""Baseline detectors on a softmax-trained twin of the same backbone.

- ``msp``: maximum softmax probability (Hendrycks & Gimpel, ICLR 2017, "A Baseline for Detecting Misclassified
  and Out-of-Distribution Examples"); score = -max_k p_k (larger is more adversarial).
- ``mahalanobis``: Lee, Lee, Lee, Shin, NeurIPS 2018, "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks": class means and one tied covariance of the twin's
  penultimate features on the training split; score = min_k (f - mu_k)^T Sigma^-1 (f - mu_k) (the negative of
  their confidence score). Their optional input preprocessing (a small step that lowers the distance) is
  ``noise`` (default 0: off); their feature ensemble over layers is not used (penultimate layer only).

The twin is trained by ``training.trainer.train`` with the L-GM artifact's own config and ``head=softmax``,
into ARTIFACT/softmax_twin/, the first time an evaluation needs it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detector import roc
from training.artifacts import has_artifact, load_artifact, load_meta
from training.config import LGM_KEYS, RUN_ONLY, TrainConfig
from training.data import Split
from training.model import Classifier, split_features

TWIN_DIR = "softmax_twin"


@contextlib.contextmanager
def _single_process_env():
    """Hide torchrun's variables so that train() runs as one process inside a multi-rank evaluation."""
    keys = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    saved = {k: os.environ.pop(k) for k in keys if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def twin_dir(art_dir: str | Path) -> Path:
    return Path(art_dir) / TWIN_DIR


def twin_ready(art_dir: str | Path, meta: dict[str, Any]) -> bool:
    """Whether ARTIFACT/softmax_twin/ holds a twin trained like the artifact (L-GM-only settings aside)."""
    out = twin_dir(art_dir)
    return has_artifact(out) and twin_matches(out, meta)


def ensure_twin(art_dir: str | Path, meta: dict[str, Any], quiet: bool = True) -> Path:
    """Train the softmax twin into ARTIFACT/softmax_twin/ unless it is there. Returns its folder."""
    out = twin_dir(art_dir)
    if twin_ready(art_dir, meta):
        return out
    from training.trainer import train

    cfg = TrainConfig.from_dict(dict(meta["train"]))
    cfg.head = "softmax"
    cfg.quiet = quiet
    cfg.device = "auto"
    with _single_process_env():
        train(cfg, out)
    return out


TWIN_IRRELEVANT = {"head", *RUN_ONLY, *LGM_KEYS}


def twin_matches(tdir: Path, meta: dict[str, Any]) -> bool:
    """Whether the twin in ``tdir`` was trained with the L-GM artifact's config (L-GM-only settings aside)."""
    try:
        tmeta = load_meta(tdir)
    except ValueError:
        return False
    a, b = tmeta.get("train", {}), meta.get("train", {})
    keys = (set(a) | set(b)) - TWIN_IRRELEVANT
    return tmeta.get("arch", {}).get("head") == "softmax" and all(a.get(k) == b.get(k) for k in keys)


def squared_mahalanobis(feats: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(f - mu_k)^T Sigma^-1 (f - mu_k) for every class: feats (N, D), means (K, D), precision (D, D) -> (N, K),
    in float32 on the features' device; differentiable in feats."""
    diff = feats.float().unsqueeze(1) - means.to(feats.device).unsqueeze(0)  # (N, K, D)
    return torch.einsum("nkd,de,nke->nk", diff, precision.to(feats.device), diff)


@dataclass
class Baselines:
    """The twin network, its Mahalanobis statistics and both detectors' thresholds (flag when score > thr)."""

    model: Classifier
    meta: dict[str, Any]
    means: torch.Tensor  # (K, D)
    precision: torch.Tensor  # (D, D)
    thresholds: dict[str, float]
    noise: float = 0.0

    def scores(self, x: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
        """pred (N,), msp (N,) = -max prob, mahalanobis (N,) = min_k M_k; larger scores are more adversarial."""
        dev = next(self.model.parameters()).device
        preds, msp, maha = [], [], []
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(dev).float()
            with torch.no_grad():
                logits, feats = self.model(xb, return_features=True)
            if self.noise > 0:
                xb = self._preprocess(xb)
                with torch.no_grad():
                    feats = self.model.features(xb)
            preds.append(logits.argmax(1).cpu())
            msp.append((-torch.softmax(logits.float(), 1).amax(1)).cpu())
            maha.append(self.mahalanobis(feats).amin(1).cpu())
        return {"pred": torch.cat(preds), "msp": torch.cat(msp), "mahalanobis": torch.cat(maha)}

    def mahalanobis(self, feats: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distances to every class mean under the tied covariance, (N, K)."""
        return squared_mahalanobis(feats, self.means, self.precision)

    def _preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Lee et al.'s input preprocessing: x - noise * sign(grad_x min_k M_k(x)), clamped to [0, 1]."""
        x = x.clone().requires_grad_(True)
        m = self.mahalanobis(self.model.features(x)).amin(1).sum()
        (g,) = torch.autograd.grad(m, x)
        return (x - self.noise * g.sign()).clamp(0.0, 1.0).detach()


@torch.no_grad()
def fit_mahalanobis(
    model: Classifier, split: Split, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (K, D) and the precision (D, D) of the tied covariance of the penultimate features."""
    feats = split_features(model, split.x, next(model.parameters()).device, batch_size).double()  # (N, D)
    y = split.y
    k = int(model.spec.num_classes)
    means = torch.stack([feats[y == c].mean(0) for c in range(k)])  # (K, D)
    centred = feats - means[y]
    cov = centred.T @ centred / len(feats)
    precision = torch.linalg.pinv(cov, hermitian=True)
    return means.float(), precision.float()


def load_baselines(
    art_dir: str | Path, meta: dict[str, Any], train: Split, calibration: Split, target_fpr: float,
    device: torch.device, noise: float = 0.0, quiet: bool = True,
) -> Baselines:  # fmt: skip
    """Twin (trained if missing), Mahalanobis fit on train, thresholds at the target FPR on clean calibration."""
    tdir = ensure_twin(art_dir, meta, quiet=quiet)
    model, tmeta = load_artifact(tdir, device)
    means, precision = fit_mahalanobis(model, train)
    base = Baselines(model, tmeta, means, precision, {}, noise)
    s = base.scores(calibration.float())
    base.thresholds = {name: float(roc.threshold_at_fpr(s[name].double().numpy(), target_fpr))
                       for name in ("msp", "mahalanobis")}  # fmt: skip
    return base


def msp_probability_threshold(base: Baselines) -> float:
    """MSP's threshold as a probability: flag when max_k p_k < this."""
    return float(-base.thresholds["msp"])
