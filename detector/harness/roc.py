"""ROC analysis and threshold selection for detectors, in NumPy.

Convention everywhere in this module: a *score* is larger for inputs that look more adversarial, and an input
is flagged when ``score > threshold`` (strictly). Negatives are clean inputs, positives successful adversarials.

- ``roc_curve``, ``auroc``: the full ROC (Fawcett 2006, "An introduction to ROC analysis") and its area, the
  Mann-Whitney U statistic P(pos > neg) + 0.5 P(pos == neg), from ``sklearn.metrics``.
- ``threshold_at_fpr``: the lowest threshold whose false-positive rate on the negatives is <= the target
  (the ROC point at the target FPR with the highest TPR); the deployed rule's, from ``detector/calibration.py``.
- ``youden_threshold``: the threshold maximising Youden's J = TPR - FPR (Youden 1950).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.calibration import threshold_at_fpr

__all__ = ["auroc", "rates_at", "roc_curve", "threshold_at_fpr", "tpr_at_fpr", "youden_threshold"]


def _as1d(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1)


@dataclass
class Roc:
    """ROC points sorted by increasing FPR; ``thresholds[i]`` gives (fpr[i], tpr[i]) under ``score > t``."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def _labels_scores(neg, pos) -> tuple[np.ndarray, np.ndarray]:
    neg, pos = _as1d(neg), _as1d(pos)
    return np.concatenate([np.zeros(len(neg)), np.ones(len(pos))]), np.concatenate([neg, pos])


def roc_curve(neg, pos) -> Roc:
    """Every operating point, from flagging nothing to flagging all (``sklearn.metrics.roc_curve``).

    sklearn flags ``score >= thr[i]``, which flags the same inputs as ``score > thr[i + 1]`` (the next lower
    distinct score), so the thresholds are shifted by one to keep this module's strict convention."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    if len(_as1d(neg)) == 0 or len(_as1d(pos)) == 0:
        raise ValueError("an ROC curve needs at least one negative and one positive score")
    fpr, tpr, thr = sk_roc_curve(*_labels_scores(neg, pos), drop_intermediate=False)
    return Roc(fpr, tpr, np.concatenate([thr[1:], [-np.inf]]))


def auroc(neg, pos) -> float:
    """Area under the ROC curve, P(pos > neg) + 0.5 * P(pos == neg) (``sklearn.metrics.roc_auc_score``); NaN
    when either side is empty."""
    from sklearn.metrics import roc_auc_score

    if len(_as1d(neg)) == 0 or len(_as1d(pos)) == 0:
        return float("nan")
    return float(roc_auc_score(*_labels_scores(neg, pos)))


def tpr_at_fpr(neg, pos, target_fpr: float = 0.05) -> float:
    """TPR at the highest ROC point whose FPR is <= target_fpr."""
    t = threshold_at_fpr(neg, target_fpr)
    return float(np.mean(_as1d(pos) > t))


def youden_threshold(neg, pos) -> float:
    """Threshold maximising TPR - FPR; among ties the largest J-maximising threshold (fewest flags).

    Every threshold between the chosen score and the next higher distinct score flags the same inputs; the
    midpoint is returned, so that it generalises rather than sitting on a calibration sample.
    """
    curve = roc_curve(neg, pos)
    j = curve.tpr - curve.fpr
    i = int(np.argmax(j))  # first max: the largest threshold
    t = curve.thresholds[i]
    if np.isinf(t) or i == 0:
        return float(t)
    upper = curve.thresholds[i - 1]  # every threshold in [t, upper) flags the same inputs
    return float(t if np.isinf(upper) else 0.5 * (t + upper))


def rates_at(neg, pos, threshold: float | np.ndarray, neg_thr=None, pos_thr=None) -> dict[str, float]:
    """FPR, TPR and detection accuracy of ``score > threshold`` (or per-sample thresholds)."""
    neg, pos = _as1d(neg), _as1d(pos)
    tn = neg_thr if neg_thr is not None else threshold
    tp = pos_thr if pos_thr is not None else threshold
    flags_neg = neg > tn
    flags_pos = pos > tp
    n = len(neg) + len(pos)
    correct = int((~flags_neg).sum()) + int(flags_pos.sum())
    return {
        "fpr": float(flags_neg.mean()) if len(neg) else float("nan"),
        "tpr": float(flags_pos.mean()) if len(pos) else float("nan"),
        "accuracy": correct / n if n else float("nan"),
    }
