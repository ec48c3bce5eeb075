"""Per-attack, per-detector figures of ``lgm evaluate`` (Carlini & Wagner 2017; Tramer et al. 2020).

For N attacked inputs (clean inputs both networks classify correctly), a detector has clean scores and flags
(negatives) and adversarial scores and flags, and each attack either succeeded (prediction != label) or not:

- ``auroc``, ``tpr_at_5fpr``: clean attacked inputs against the *successful* adversarials, with 95% paired
  bootstrap intervals (``detector/harness/bootstrap.py``);
- ``detection_accuracy``, ``tpr_at_threshold``, ``fpr_at_threshold``: at the deployed threshold;
- ``fooled_and_undetected``: share of attacked inputs misclassified and not flagged;
- ``detect_or_correct`` = 1 - fooled_and_undetected: share of attacked inputs that, after the attack, are still
  classified correctly or are flagged (Tramer et al. 2020's accuracy at a fixed clean FPR, over attacked inputs);
- ``robust_accuracy``: share still classified correctly, detection ignored.
Proportions over attacked inputs carry 95% Wilson score intervals (Wilson 1927). ``per_input_worst`` takes, per
input, the worst over a group of attacks (an input counts as defeated when any attack of the group fooled the
network without being flagged): the figure a set of attacks achieves together, which Tramer et al. report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.harness import roc
from detector.harness.bootstrap import paired_intervals

REPORT_FPR = 0.05
WORST = (
    ("auroc", min),
    ("tpr_at_5fpr", min),
    ("detection_accuracy", min),
    ("fooled_and_undetected", max),
    ("detect_or_correct", min),
)


@dataclass
class DetectorScores:
    """One detector on one attack: N attacked inputs' clean and adversarial scores and flags, and success."""

    clean: np.ndarray  # (N,) larger = more abnormal
    clean_flag: np.ndarray  # (N,) bool, at the deployed threshold
    adv: np.ndarray  # (N,)
    adv_flag: np.ndarray  # (N,) bool
    success: np.ndarray  # (N,) bool: the attack changed the prediction


def wilson(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(max(0.0, centre - half)), 6), round(float(min(1.0, centre + half)), 6)]


def _r(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


def detector_metrics(s: DetectorScores, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Every figure of one detector on one attack (see the module docstring)."""
    n = len(s.clean)
    neg, pos = s.clean, s.adv[s.success]
    have = len(pos) > 0 and n > 0
    fooled = s.success & ~s.adv_flag
    out: dict[str, Any] = {
        "auroc": roc.auroc(neg, pos) if have else None,
        "tpr_at_5fpr": roc.tpr_at_fpr(neg, pos, REPORT_FPR) if have else None,
        **paired_intervals(s.clean, s.adv, s.success, REPORT_FPR, n_boot=n_boot, seed=seed),
        "detection_accuracy": (int((~s.clean_flag).sum()) + int(s.adv_flag[s.success].sum())) / (n + len(pos))
        if n
        else None,
        "tpr_at_threshold": float(s.adv_flag[s.success].mean()) if len(pos) else None,
        "fpr_at_threshold": float(s.clean_flag.mean()) if n else None,
        "fooled_and_undetected": float(fooled.mean()) if n else None,
        "detect_or_correct": 1.0 - float(fooled.mean()) if n else None,
        "detect_or_correct_ci": wilson(int((~fooled).sum()), n),
        "robust_accuracy": 1.0 - float(s.success.mean()) if n else None,
        "robust_accuracy_ci": wilson(int((~s.success).sum()), n),
        "success_rate": float(s.success.mean()) if n else None,
        "n_success": int(s.success.sum()),
        "n_positive": int(len(pos)),
        "n_negative": int(n),
    }
    return {k: _r(v) for k, v in out.items()}


def worst_case(attacks: dict[str, Any], names: list[str], detectors: list[str]) -> dict[str, Any]:
    """Per detector, the worst figure over the given attacks, and which attack it came from."""
    out: dict[str, Any] = {}
    for det in detectors:
        rows = [(a, attacks[a]["detectors"][det]) for a in names if det in attacks[a]["detectors"]]
        rows = [(a, m) for a, m in rows if m["auroc"] is not None]
        if not rows:
            out[det] = None
            continue
        worst: dict[str, Any] = {}
        for key, pick in WORST:
            a, m = pick(rows, key=lambda r, k=key: r[1][k])
            worst[key] = m[key]
            worst[key + "_attack"] = a
            if key in ("auroc", "tpr_at_5fpr"):
                worst[key + "_ci"] = m.get(key + "_ci")
        out[det] = worst
    return out


def per_input_worst(scores: list[DetectorScores]) -> dict[str, Any]:
    """Over several attacks on the same inputs: detect-or-correct and robust accuracy when, per input, the
    attack that did most damage is kept (fooled-and-undetected by any; misclassified by any)."""
    fooled = np.any([s.success & ~s.adv_flag for s in scores], axis=0)
    broken = np.any([s.success for s in scores], axis=0)
    n = len(fooled)
    return {
        "detect_or_correct": _r(1.0 - float(fooled.mean())),
        "detect_or_correct_ci": wilson(int((~fooled).sum()), n),
        "robust_accuracy": _r(1.0 - float(broken.mean())),
        "robust_accuracy_ci": wilson(int((~broken).sum()), n),
        "n": n,
    }
