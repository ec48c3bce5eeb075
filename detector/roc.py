"""ROC analysis and threshold selection for detectors, in NumPy.

Convention everywhere in this module: a *score* is larger for inputs that look more adversarial, and an input
is flagged when ``score > threshold`` (strictly). Negatives are clean inputs, positives successful adversarials.

- ``roc_curve``: the full ROC (Fawcett 2006, "An introduction to ROC analysis"), one point per distinct score.
- ``auroc``: the area under it, equal to the Mann-Whitney U statistic P(pos > neg) + 0.5 P(pos == neg).
- ``threshold_at_fpr``: the lowest threshold whose false-positive rate on the negatives is <= the target
  (the ROC point at the target FPR with the highest TPR).
- ``youden_threshold``: the threshold maximising Youden's J = TPR - FPR (Youden 1950).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _as1d(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1)


@dataclass
class Roc:
    """ROC points sorted by increasing FPR; ``thresholds[i]`` gives (fpr[i], tpr[i]) under ``score > t``."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def roc_curve(neg, pos) -> Roc:
    """Every operating point of ``score > t``, from flagging nothing (t = +inf) to flagging all (t = -inf)."""
    neg, pos = _as1d(neg), _as1d(pos)
    if len(neg) == 0 or len(pos) == 0:
        raise ValueError("an ROC curve needs at least one negative and one positive score")
    values = np.unique(np.concatenate([neg, pos]))[::-1]  # descending distinct scores
    # threshold t_i = values[i] flags scores strictly greater than values[i]; then -inf flags everything
    thresholds = np.concatenate([[np.inf], values])
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    fp = len(neg) - np.searchsorted(neg_sorted, thresholds, side="right")
    tp = len(pos) - np.searchsorted(pos_sorted, thresholds, side="right")
    thresholds = np.concatenate([thresholds, [-np.inf]])
    fp = np.concatenate([fp, [len(neg)]])
    tp = np.concatenate([tp, [len(pos)]])
    return Roc(fp / len(neg), tp / len(pos), thresholds)


def auroc(neg, pos) -> float:
    """Area under the ROC curve, P(pos > neg) + 0.5 * P(pos == neg), via average ranks (exact with ties)."""
    neg, pos = _as1d(neg), _as1d(pos)
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    allv = np.concatenate([neg, pos])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv), dtype=np.float64)
    sorted_v = allv[order]
    # average ranks for ties (1-based)
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[len(neg) :].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(neg) * len(pos)))


def threshold_at_fpr(neg, target_fpr: float) -> float:
    """Lowest t with mean(neg > t) <= target_fpr. Only negatives matter: positives move TPR, never FPR."""
    neg = np.sort(_as1d(neg))[::-1]  # descending
    if len(neg) == 0:
        raise ValueError("no negative (clean) scores to set a threshold on")
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target FPR must be in [0, 1], got {target_fpr}")
    k = int(np.floor(target_fpr * len(neg) + 1e-9))  # at most k negatives may lie above t
    if k >= len(neg):
        return -np.inf
    return float(neg[k])  # neg[0..k-1] > t (ties with neg[k] are not flagged)


def tpr_at_fpr(neg, pos, target_fpr: float = 0.05) -> float:
    """TPR at the highest ROC point whose FPR is <= target_fpr."""
    t = threshold_at_fpr(neg, target_fpr)
    return float(np.mean(_as1d(pos) > t))


def youden_threshold(neg, pos) -> float:
    """Threshold maximising TPR - FPR; among ties the largest J-maximising threshold (fewest flags).

    Every threshold between the chosen score and the next higher distinct score flags the same inputs; the
    midpoint is returned, so that it generalises rather than sitting on a calibration sample.
    """
    roc = roc_curve(neg, pos)
    j = roc.tpr - roc.fpr
    i = int(np.argmax(j))  # first max: the largest threshold
    t = roc.thresholds[i]
    if np.isinf(t) or i == 0:
        return float(t)
    upper = roc.thresholds[i - 1]  # every threshold in [t, upper) flags the same inputs
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
