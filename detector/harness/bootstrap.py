"""Bootstrap confidence intervals for AUROC and TPR at a fixed FPR (Efron & Tibshirani 1993, percentile method).

The resampling unit is the attacked input: each attacked clean input is a negative, and its adversarial is a
positive when the attack succeeded, so a replicate draws attacked inputs with replacement (multinomial weights)
and keeps each input's clean and adversarial scores together. Replicates are computed at once as weighted
statistics, which equal the statistics of the resampled arrays (``tests/test_detector_stats.py`` checks this
against ``sklearn.metrics.roc_auc_score`` with sample weights).
"""

from __future__ import annotations

import numpy as np

N_BOOT = 1000
LEVEL = 0.95


def weighted_auroc(neg: np.ndarray, pos: np.ndarray, w_neg: np.ndarray, w_pos: np.ndarray) -> np.ndarray:
    """AUROC = P(pos > neg) + 0.5 P(pos == neg) under weights: neg (n,), pos (m,), w_neg (B, n), w_pos (B, m)
    -> (B,). NaN where a replicate has no negative or no positive weight."""
    order = np.argsort(neg, kind="mergesort")
    sorted_neg = neg[order]
    cum = np.concatenate([np.zeros((len(w_neg), 1)), np.cumsum(w_neg[:, order], axis=1)], axis=1)  # (B, n+1)
    below = np.searchsorted(sorted_neg, pos, side="left")  # negatives strictly below each positive
    upto = np.searchsorted(sorted_neg, pos, side="right")  # negatives <= each positive
    credit = 0.5 * (cum[:, below] + cum[:, upto])  # (B, m): weight below + half the ties
    total = cum[:, -1] * w_pos.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (credit * w_pos).sum(1) / total, np.nan)


def weighted_tpr_at_fpr(
    neg: np.ndarray, pos: np.ndarray, w_neg: np.ndarray, w_pos: np.ndarray, fpr: float
) -> np.ndarray:
    """TPR of ``score > t`` with t the lowest present negative score whose weighted share of negatives above it
    is <= fpr (``roc.threshold_at_fpr`` under weights); -> (B,)."""
    values = np.unique(neg)[::-1]  # distinct negative scores, descending
    slot = np.searchsorted(-values, -neg)  # each negative's distinct value
    w_val = np.zeros((len(w_neg), len(values)))
    np.add.at(w_val.T, slot, w_neg.T)
    above = np.cumsum(w_val, axis=1) - w_val  # weight strictly above each distinct value
    total = w_val.sum(1, keepdims=True)
    ok = (above <= fpr * total + 1e-9) & (w_val > 0)
    last = np.where(ok.any(1), len(values) - 1 - np.argmax(ok[:, ::-1], axis=1), 0)
    thr = np.where(ok.any(1), values[last], np.inf)
    flagged = pos[None, :] > thr[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(w_pos.sum(1) > 0, (flagged * w_pos).sum(1) / w_pos.sum(1), np.nan)


def paired_intervals(
    neg: np.ndarray,
    pos: np.ndarray,
    success: np.ndarray,
    fpr: float = 0.05,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, list[float] | None]:
    """Percentile intervals of AUROC and TPR at ``fpr`` for N attacked inputs: clean scores ``neg`` (N,),
    adversarial scores ``pos`` (N,) and whether each attack succeeded (N,) bool; only successes are positives."""
    neg, pos = np.asarray(neg, np.float64), np.asarray(pos, np.float64)
    success = np.asarray(success, bool)
    n = len(neg)
    if n == 0 or not success.any():
        return {"auroc_ci": None, "tpr_at_5fpr_ci": None}
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # (B, N)
    w_pos = w[:, success]
    pos = pos[success]
    q = [(1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0]

    def interval(v: np.ndarray) -> list[float]:
        v = v[np.isfinite(v)]
        return [round(float(x), 6) for x in np.quantile(v, q)] if len(v) else None

    return {
        "auroc_ci": interval(weighted_auroc(neg, pos, w, w_pos)),
        "tpr_at_5fpr_ci": interval(weighted_tpr_at_fpr(neg, pos, w, w_pos, fpr)),
    }
