"""ROC analysis and threshold selection on hand-made score sets whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from detector.calibration import select_thresholds
from detector.harness import roc
from detector.harness.metrics import DetectorScores, detector_metrics, worst_case
from detector.scoring import abnormality_from_quantiles


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


def test_roc_and_auroc_agree_with_sklearn():
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc_curve

    rng = np.random.default_rng(3)
    neg, pos = np.round(rng.normal(0, 1, 300), 1), np.round(rng.normal(0.7, 1, 200), 1)  # many ties
    y, s = np.r_[np.zeros(300), np.ones(200)], np.r_[neg, pos]
    assert roc.auroc(neg, pos) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    r = roc.roc_curve(neg, pos)
    np.testing.assert_allclose(r.fpr, fpr)
    np.testing.assert_allclose(r.tpr, tpr)
    for t, f, tp in zip(r.thresholds, r.fpr, r.tpr, strict=True):  # our strict convention: flag score > t
        assert np.mean(neg > t) == pytest.approx(f) and np.mean(pos > t) == pytest.approx(tp)


def test_select_thresholds_per_class_and_fallback():
    rng = np.random.default_rng(1)
    score = np.concatenate([rng.normal(10, 1, 100), rng.normal(20, 1, 100), rng.normal(15, 1, 3)])
    pred = np.concatenate([np.zeros(100, int), np.ones(100, int), np.full(3, 2)])
    glob, per = select_thresholds(score, pred, 3, 0.05)
    for k in (0, 1):
        assert np.mean(score[pred == k] > per[k]) <= 0.05  # at most the target FPR on each class
    assert per[0] < per[1]  # class 1 scores higher when clean: its threshold is higher
    assert per[2] == glob  # too few inputs of class 2: global threshold
    assert np.mean(score > glob) <= 0.05


def test_abnormality_monotone_and_bounded():
    levels = np.linspace(0, 1, 101)
    rng = np.random.default_rng(2)
    q0 = np.quantile(rng.normal(1, 0.5, 500), levels)
    q1 = np.quantile(rng.normal(3, 1, 500), levels)
    quant = {"levels": levels.tolist(), "per_class": [q0.tolist(), q1.tolist()], "global": q0.tolist()}
    score = np.linspace(-5, 10, 400)
    for k in (0, 1):
        a = abnormality_from_quantiles(score, np.full(len(score), k), quant)
        assert np.all((a >= 0) & (a <= 1))
        assert np.all(np.diff(a) >= -1e-12)  # a higher score is never less abnormal
        assert a[0] == 0.0 and a[-1] == 1.0
    # 0.99 means more abnormal than 99% of clean inputs of that class
    a = abnormality_from_quantiles(np.array([q0[99]]), np.array([0]), quant)
    assert a[0] == pytest.approx(0.99)


def _scores(shift: float) -> DetectorScores:
    clean = np.array([0.0, 1.0, 2.0, 3.0])
    adv = np.array([5.0, 6.0, 0.5, 0.2]) + shift
    success = np.array([True, True, False, False])
    return DetectorScores(clean, clean > 2.5, adv, adv > 5.5, success)


def test_metrics_count_only_positives_and_detect_or_correct():
    m = detector_metrics(_scores(0.0), n_boot=200)
    assert m["auroc"] == 1.0 and m["n_positive"] == 2 and m["n_negative"] == 4
    assert m["fooled_and_undetected"] == pytest.approx(1 / 4)  # one success not flagged, over 4 attacked
    assert m["detect_or_correct"] == pytest.approx(3 / 4)  # two still correct, one flagged
    assert m["robust_accuracy"] == pytest.approx(2 / 4)
    assert m["detection_accuracy"] == pytest.approx((3 + 1) / 6)
    lo, hi = m["auroc_ci"]
    assert lo <= m["auroc"] <= hi


def test_detect_or_correct_hand_made():
    # 5 attacked inputs: correct+unflagged, correct+flagged, fooled+flagged, fooled+unflagged, fooled+unflagged
    success = np.array([False, False, True, True, True])
    adv_flag = np.array([False, True, True, False, False])
    s = DetectorScores(np.zeros(5), np.zeros(5, bool), adv_flag.astype(float), adv_flag, success)
    m = detector_metrics(s, n_boot=50)
    assert m["detect_or_correct"] == pytest.approx(3 / 5)
    assert m["fooled_and_undetected"] == pytest.approx(2 / 5)
    assert m["robust_accuracy"] == pytest.approx(2 / 5)


def test_worst_case_names_the_attack():
    dets = ["lgm", "msp"]
    attacks = {
        a: {"detectors": {d: detector_metrics(_scores(s), n_boot=50) for d in dets}}
        for a, s in (("easy", 2.0), ("hard", -3.0))
    }
    wc = worst_case(attacks, ["easy", "hard"], dets)
    assert wc["lgm"]["auroc_attack"] == "hard" and wc["lgm"]["fooled_and_undetected_attack"] == "hard"
    assert wc["lgm"]["detect_or_correct_attack"] == "hard"


def test_masking_check_flags_a_gradient_free_attack_ahead_of_white_box():
    from detector.harness.assemble import masking_check

    def attack(lgm: float, twin: float) -> dict:
        return {"detectors": {"lgm": {"success_rate": lgm}, "msp": {"success_rate": twin}}}

    attacks = {"pgd": attack(0.40, 0.95), "apgd_dlr": attack(0.45, 0.90), "square": attack(0.60, 0.96)}
    m = masking_check(attacks)
    assert m["lgm"]["masked_gradients_suspected"] and m["lgm"]["best_white_box"] == "apgd_dlr"
    assert not m["twin"]["masked_gradients_suspected"]  # 0.96 against 0.95: within the slack
    assert masking_check({"pgd": attack(1.0, 1.0)}) is None  # no gradient-free attack: nothing to compare
