"""ROC analysis and threshold selection on hand-made score sets whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from detector import roc
from detector.calibration import select_thresholds
from detector.evaluation import detector_metrics, worst_case
from detector.scoring import tail_probability


@pytest.mark.parametrize(
    ("neg", "pos", "expected"),
    [
        ([0, 1, 2], [3, 4], 1.0),  # perfectly separated
        ([3, 4], [0, 1, 2], 0.0),  # perfectly reversed
        ([1, 1], [1, 1], 0.5),  # all tied
        ([0, 2], [1, 3], 0.75),  # pairs: (1>0), (1<2), (3>0), (3>2) -> 3/4
        ([0, 1], [1, 2], 0.875),  # (1 = 1 counts half): (1>0) + 0.5 + (2>0) + (2>1) = 3.5 / 4
    ],
)
def test_auroc_known(neg, pos, expected):
    assert roc.auroc(neg, pos) == pytest.approx(expected)


def test_roc_curve_endpoints_and_area():
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0, 1, 200), rng.normal(1.5, 1, 150)
    r = roc.roc_curve(neg, pos)
    assert (r.fpr[0], r.tpr[0]) == (0.0, 0.0) and (r.fpr[-1], r.tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(r.fpr) >= 0) and np.all(np.diff(r.tpr) >= 0)
    assert np.trapezoid(r.tpr, r.fpr) == pytest.approx(roc.auroc(neg, pos), abs=1e-12)


def test_threshold_at_fpr_known():
    neg = np.arange(1, 21, dtype=float)  # 20 clean scores 1..20
    t = roc.threshold_at_fpr(neg, 0.05)  # one of 20 may lie above: t = 19
    assert t == 19.0 and np.mean(neg > t) == pytest.approx(0.05)
    assert roc.threshold_at_fpr(neg, 0.0) == 20.0  # nothing flagged
    assert roc.threshold_at_fpr(neg, 0.12) == 18.0  # floor(2.4) = 2 above
    assert roc.tpr_at_fpr(neg, [18.5, 19.5, 25.0], 0.05) == pytest.approx(2 / 3)


def test_youden_known():
    # separated sets: J = 1 for any threshold in the gap [4, 6), and nowhere else
    neg = np.array([0, 1, 2, 3, 4], dtype=float)
    pos = np.array([6, 7, 8, 9, 10], dtype=float)
    t = roc.youden_threshold(neg, pos)
    assert 4.0 <= t < 6.0
    flags = roc.rates_at(neg, pos, t)
    assert flags["tpr"] == 1.0 and flags["fpr"] == 0.0 and flags["accuracy"] == 1.0


def test_youden_with_overlap_maximises_j():
    neg = np.array([0.0, 1.0, 2.0, 3.0])
    pos = np.array([2.5, 4.0, 5.0, 0.5])
    t = roc.youden_threshold(neg, pos)
    r = roc.rates_at(neg, pos, t)
    best = max(np.mean(pos > c) - np.mean(neg > c) for c in np.concatenate([neg, pos, [-1.0]]))
    assert r["tpr"] - r["fpr"] == pytest.approx(best)


def test_select_thresholds_per_class_and_fallback():
    rng = np.random.default_rng(1)
    ll = np.concatenate([rng.normal(-10, 1, 100), rng.normal(-20, 1, 100), rng.normal(-15, 1, 3)])
    pred = np.concatenate([np.zeros(100, int), np.ones(100, int), np.full(3, 2)])
    glob, per = select_thresholds(ll, pred, 3, 0.05)
    for k in (0, 1):
        assert np.mean(ll[pred == k] < per[k]) <= 0.05  # at most the target FPR on each class
    assert per[0] > per[1]  # class 1 is less likely: its threshold is lower
    assert per[2] == glob  # too few inputs of class 2: global threshold
    assert np.mean(ll < glob) <= 0.05


def test_tail_probability_monotone_and_bounded():
    levels = np.linspace(0, 1, 101)
    rng = np.random.default_rng(2)
    q0 = np.quantile(rng.normal(-10, 2, 500), levels)
    q1 = np.quantile(rng.normal(-30, 5, 500), levels)
    quant = {"levels": levels.tolist(), "per_class": [q0.tolist(), q1.tolist()], "global": q0.tolist()}
    ll = np.linspace(-80, 10, 400)
    for k in (0, 1):
        a = tail_probability(ll, np.full(len(ll), k), quant)
        assert np.all((a >= 0) & (a <= 1))
        assert np.all(np.diff(a) <= 1e-12)  # lower likelihood -> higher abnormality
        assert a[0] == 1.0 and a[-1] == 0.0
    # 0.99 means rarer than 99% of clean inputs of that class
    a = tail_probability(np.array([q0[1]]), np.array([0]), quant)
    assert a[0] == pytest.approx(0.99)


def test_metrics_count_only_positives_given_and_worst_case():
    neg = np.array([0.0, 1.0, 2.0, 3.0])
    pos = np.array([5.0, 6.0])
    m = detector_metrics(neg, pos, neg > 2.5, pos > 5.5, n_attacked=4)
    assert m["auroc"] == 1.0 and m["n_positive"] == 2
    assert m["fooled_and_undetected"] == pytest.approx(
        1 / 4
    )  # one success not flagged, over 4 attacked inputs
    assert m["detection_accuracy"] == pytest.approx((3 + 1) / 6)
    attacks = {
        a: {
            "detectors": {
                d: detector_metrics(neg, pos + s, neg > 2.5, pos + s > 5.5, 4)
                for d in ("lgm", "msp", "mahalanobis")
            }
        }
        for a, s in (("easy", 2.0), ("hard", -3.0))
    }
    wc = worst_case(attacks, ["easy", "hard"])
    assert wc["lgm"]["auroc_attack"] == "hard" and wc["lgm"]["fooled_and_undetected_attack"] == "hard"
