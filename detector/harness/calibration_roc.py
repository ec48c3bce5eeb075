"""``lgm calibrate --mode roc``: a logistic combination of the detector's statistics fitted on attacks.

Attacks are generated on the calibration split (correctly classified inputs only; positives are the successful
adversarials; ``adaptive`` aims at the clean-mode detector of the same fit), a logistic regression over the
statistics' surprises is fitted on clean versus adversarial calibration inputs (as Lee et al. 2018 combine
their layers), and the threshold is picked on its calibration ROC at the target FPR or at Youden's J
(Youden 1950). It starts from clean mode's ``fit_clean`` and ends in its ``finish``
(``detector/calibration.py``); nothing here is fitted on test inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from detector.calibration import (
    CalibrationConfig,
    CleanFit,
    finish,
    fit_clean,
    select_thresholds,
    statistics_of,
    surprises_of,
)
from detector.harness import roc
from detector.harness.attacks import AttackTarget, DetectorObjective, budget_of, parse_attack_list, run_attack
from detector.harness.budgets import resolve_budgets
from detector.scoring import Detector, deployed_thresholds
from training.artifacts import load_meta
from training.data import subset


def fit_logistic(clean: np.ndarray, adv: np.ndarray) -> tuple[list[float], float]:
    """Weights and bias of a logistic regression of adversarial (1) against clean (0) surprises, classes
    balanced (sklearn ``LogisticRegression``)."""
    from sklearn.linear_model import LogisticRegression

    xs = np.concatenate([clean, adv])
    ys = np.concatenate([np.zeros(len(clean)), np.ones(len(adv))])
    lr = LogisticRegression(class_weight="balanced", max_iter=5000).fit(xs, ys)
    return [float(w) for w in lr.coef_[0]], float(lr.intercept_[0])


def attack_calibration_split(
    det: Detector, dataset: str, x: torch.Tensor, y: torch.Tensor, pred: np.ndarray, cfg: CalibrationConfig
) -> dict[str, Any]:
    """Attack the correctly classified calibration inputs with each of ``cfg.attacks``; return the successful
    adversarials' statistics (pooled) and per-attack figures. ``adaptive`` aims at ``det``."""
    names = cfg.attacks  # expanded by calibrate_roc()
    b = resolve_budgets(dataset, cfg.budgets, tuple(x.shape[1:]))
    # --limit: a seeded subset of the correct inputs, not the first (an image folder's split is class-sorted)
    correct = np.flatnonzero(pred == y.numpy())
    keep = torch.from_numpy(correct[subset(len(correct), cfg.limit, cfg.seed)])
    xs, ys = x[keep], y[keep]
    target = AttackTarget("lgm", det.model, DetectorObjective(det, b.adaptive_margin))
    stats, preds, figures = [], [], {}
    for name in names:
        parts = []
        chunks = range(0, len(xs), cfg.batch_size)
        for i in tqdm(chunks, desc=f"calibrate {name}", disable=not cfg.progress, leave=False, unit="batch"):
            xb, yb = xs[i : i + cfg.batch_size].to(det.device), ys[i : i + cfg.batch_size].to(det.device)
            parts.append(run_attack(name, target, xb, yb, b, cfg.seed * 1_000_003 + i).cpu())
        s = statistics_of(det.model, det.score_model, torch.cat(parts) if parts else xs[:0])
        ok = s["pred"] != ys.numpy()
        stats.append(s["stats"][ok])
        preds.append(s["pred"][ok])
        figures[name] = {"n_attacked": len(ys), "n_success": int(ok.sum()), "success_rate": float(ok.mean())}
    return {
        "stats": np.concatenate(stats),
        "pred": np.concatenate(preds),
        "per_attack": stats,
        "attacks": names,
        "budgets": {n: budget_of(n, b) for n in names},
        "figures": figures,
    }


def _youden(neg: np.ndarray, pos: np.ndarray) -> float:
    return roc.youden_threshold(neg, pos)


def calibrate_roc(art_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Calibrate the artifact in ``art_dir`` in roc mode (options: the fields of CalibrationConfig; ``mode`` is
    roc whatever it says) and write detector.json and detector.safetensors atomically."""
    cfg = CalibrationConfig(**{**options, "mode": "roc"})
    cfg.validate()
    meta = load_meta(art_dir)  # fail on a bad attack list or budget before any work
    cfg.attacks = parse_attack_list(cfg.attacks)
    resolve_budgets(meta["dataset"]["name"], cfg.budgets, tuple(int(v) for v in meta["arch"]["input_shape"]))
    fit: CleanFit = fit_clean(art_dir, cfg)
    sm, pred, k = fit.score_model, fit.pred, fit.num_classes
    adv = attack_calibration_split(fit.clean_detector(), fit.meta["dataset"]["name"], fit.x, fit.y, pred, cfg)
    figures: dict[str, Any] = {"attacks": adv["figures"]}
    s_adv = surprises_of(sm, adv["stats"])
    if len(s_adv) == 0:
        raise ValueError("no attack succeeded on the calibration split: nothing to fit roc mode on")
    sm.combine = "logistic"
    sm.weights, sm.bias = fit_logistic(fit.surprises, s_adv)
    w = np.asarray(sm.weights)
    score = fit.surprises @ w + sm.bias
    adv_score, adv_pred = s_adv @ w + sm.bias, adv["pred"]
    for name, st in zip(adv["attacks"], adv["per_attack"], strict=True):
        a = surprises_of(sm, st) @ w + sm.bias if len(st) else np.zeros(0)
        figures["attacks"][name]["auroc"] = roc.auroc(score, a) if len(a) else None
    pick = _youden if cfg.rule == "youden" else None
    glob, per = select_thresholds(score, pred, k, cfg.target_fpr, adv_score, adv_pred, pick)
    deployed = deployed_thresholds(cfg.kind, per, glob)
    figures["adversarial_tpr"] = float(np.mean(adv_score > deployed[adv_pred]))
    figures["auroc"] = roc.auroc(score, adv_score)
    return finish(fit, score, (glob, per), figures, adv["attacks"], adv["budgets"])
