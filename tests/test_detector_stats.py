"""The detector's statistics on hand-made data whose answers are known: fitted covariances, tail models, the
clean-mode rule's false-positive rate, LID, KD, bootstrap intervals, and the detector file checks."""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from detector.calibration import select_thresholds
from detector.gaussians import ClassGaussians
from detector.harness.baselines.kd import log_kd
from detector.harness.baselines.lid import mle_lid
from detector.harness.bootstrap import paired_intervals, weighted_auroc, weighted_tpr_at_fpr
from detector.statistics import ScoreModel
from detector.tails import TailModel, TailStack


def _features(seed: int = 0, n: int = 400):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n // 3)
    mix = rng.normal(size=(4, 4))
    feats = rng.normal(size=(len(y), 4)) @ mix + 5.0 * y[:, None]
    return feats, y


def test_tied_empirical_covariance_equals_np_cov():
    feats, y = _features()
    g = ClassGaussians.fit(feats, y, 3, tied=True, shrinkage="empirical")
    means = np.stack([feats[y == k].mean(0) for k in range(3)])
    np.testing.assert_allclose(g.means.numpy(), means, atol=1e-12)
    expected = np.cov((feats - means[y]).T, bias=True)  # maximum likelihood: 1/N
    np.testing.assert_allclose(g.covariance().numpy(), expected, rtol=1e-9, atol=1e-9)


def test_per_class_covariance_and_log_density_match_scipy():
    from scipy.stats import multivariate_normal

    feats, y = _features(1)
    g = ClassGaussians.fit(feats, y, 3, tied=False, shrinkage="empirical")
    x = feats[:5]
    ll = g.log_density(torch.from_numpy(x)).numpy()
    for k in range(3):
        fk = feats[y == k]
        cov = np.cov(fk.T, bias=True)
        np.testing.assert_allclose(g.covariance()[k].numpy(), cov, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ll[:, k], multivariate_normal(fk.mean(0), cov).logpdf(x), rtol=1e-9)


def test_shrinkage_stays_close_with_many_samples_and_invertible_with_few():
    feats, y = _features(2, n=3000)
    emp = ClassGaussians.fit(feats, y, 3, shrinkage="empirical").covariance()
    lw = ClassGaussians.fit(feats, y, 3, shrinkage="ledoit_wolf").covariance()
    assert torch.linalg.norm(lw - emp) / torch.linalg.norm(emp) < 0.05
    few = np.random.default_rng(0).normal(
        size=(6, 20)
    )  # fewer rows than dimensions: singular sample covariance
    g = ClassGaussians.fit(few, np.array([0, 0, 0, 1, 1, 1]), 2, shrinkage="oas")
    assert torch.isfinite(g.log_density(torch.from_numpy(few))).all()


def test_tail_model_is_monotone_invertible_and_extends_past_the_data():
    rng = np.random.default_rng(3)
    clean = rng.exponential(2.0, 5000)
    t = TailModel.fit(clean)
    v = torch.linspace(-1.0, 40.0, 500, dtype=torch.float64)
    s = t.surprise(v)
    assert (s >= 0).all() and (s[1:] >= s[:-1] - 1e-12).all()
    assert s[-1] > -math.log(1.0 / len(clean))  # ranks inputs beyond every clean value
    for level in (0.05, 0.5, 2.0, 5.0, 12.0):  # inverse
        assert t.surprise(torch.tensor([t.value_at(level)], dtype=torch.float64)).item() == pytest.approx(
            level, abs=1e-6
        )
    # an exponential's tail is exponential: P(S > q) is right far beyond the bulk
    q = 2.0 * math.log(1000.0)  # P = 1e-3 for an exponential of mean 2
    assert t.surprise(torch.tensor([q], dtype=torch.float64)).item() == pytest.approx(
        math.log(1000.0), rel=0.1
    )


def test_stacked_tail_models_equal_each_model_alone_values_and_gradients():
    """The detector evaluates all its statistics' tail models in one batched pass; each column must be exactly
    what that statistic's model gives alone (bulk, ties in the bulk, tail), and so must its gradient."""
    rng = np.random.default_rng(4)
    tails = [
        TailModel.fit(rng.normal(0.0, 1.0, 800)),
        TailModel.fit(rng.normal(2.0, 3.0, 800)),
        TailModel.fit(np.r_[np.zeros(400), rng.exponential(1.0, 400)]),  # ties: flat knots in the bulk
    ]
    v = torch.tensor(rng.normal(0.0, 6.0, (300, 3)), dtype=torch.float64, requires_grad=True)
    stacked = TailStack(tails).surprise(v)
    alone = torch.stack([t.surprise(v[:, i]) for i, t in enumerate(tails)], dim=1)
    assert torch.equal(stacked, alone)
    assert (stacked[v.detach() > 20.0] > 0).all()
    g_stacked = torch.autograd.grad(stacked.sum(), v)[0]
    g_alone = torch.autograd.grad(alone.sum(), v)[0]
    assert torch.equal(g_stacked, g_alone)
    other = TailModel.fit(rng.normal(size=100), bulk_level=0.8)
    with pytest.raises(ValueError, match="share their bulk levels"):
        TailStack([tails[0], other])


def _dummy_model(tails: list[TailModel]) -> ScoreModel:
    g = ClassGaussians(torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1))
    return ScoreModel(["likelihood", "boundary"], g, [], tails)


def test_two_statistic_clean_rule_holds_its_fpr_on_synthetic_gaussians():
    rng = np.random.default_rng(4)
    cov = [[1.0, 0.3], [0.3, 1.0]]
    cal = rng.multivariate_normal([0, 0], cov, 2000)
    test = rng.multivariate_normal([0, 0], cov, 40000)
    sm = _dummy_model([TailModel.fit(cal[:, 0]), TailModel.fit(cal[:, 1])])
    score_cal = sm.combined(sm.surprises(torch.from_numpy(cal))).numpy()
    glob, _ = select_thresholds(score_cal, np.zeros(len(cal), int), 1, 0.05)
    assert np.mean(score_cal > glob) == pytest.approx(0.05, abs=1e-3)
    s_test = sm.surprises(torch.from_numpy(test)).numpy()
    fpr = np.mean(s_test.max(1) > glob)
    assert fpr == pytest.approx(0.05, abs=0.01)
    each = (s_test > glob).mean(0)  # each statistic is tested at a share of the target
    assert (each < 0.05).all() and (each > 0.015).all()
    shifted = test + np.array([0.0, 3.0])  # an input extreme in one statistic only is caught
    assert np.mean(sm.surprises(torch.from_numpy(shifted)).numpy().max(1) > glob) > 0.5


def test_mle_lid_recovers_intrinsic_dimension():
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    for dim in (2, 6):
        pts = rng.uniform(-1, 1, (3000, dim)) @ basis[:dim]  # a dim-dimensional cube embedded in 12-D
        ref, query = torch.from_numpy(pts[:2500]), torch.from_numpy(pts[2500:2600])
        est = mle_lid(query, ref, k=20).numpy()
        assert np.median(est) == pytest.approx(dim, rel=0.3)
    point = torch.zeros(1, 3)
    assert torch.isfinite(mle_lid(point, torch.cat([point, torch.randn(30, 3)]), k=5)).all()  # self skipped


def test_log_kd_matches_the_formula():
    train = [torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [3.0, 4.0]])]
    f = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    sigma = 2.0
    got = log_kd(f, torch.tensor([0, 1]), train, sigma)
    norm = -math.log(math.pi * sigma**2)  # -(D/2) log(pi sigma^2) with D = 2
    torch.testing.assert_close(got, torch.tensor([-1.0 / 4.0 + norm, norm], dtype=torch.float64))


def test_weighted_statistics_equal_resampled_arrays_and_sklearn():
    from sklearn.metrics import roc_auc_score

    from detector.harness import roc

    rng = np.random.default_rng(6)
    neg, pos = np.round(rng.normal(0, 1, 60), 1), np.round(rng.normal(1, 1, 40), 1)
    w_neg, w_pos = rng.integers(0, 3, (5, 60)).astype(float), rng.integers(0, 3, (5, 40)).astype(float)
    a = weighted_auroc(neg, pos, w_neg, w_pos)
    t = weighted_tpr_at_fpr(neg, pos, w_neg, w_pos, 0.05)
    for b in range(5):
        y = np.r_[np.zeros(60), np.ones(40)]
        assert a[b] == pytest.approx(
            roc_auc_score(y, np.r_[neg, pos], sample_weight=np.r_[w_neg[b], w_pos[b]])
        )
        rn, rp = np.repeat(neg, w_neg[b].astype(int)), np.repeat(pos, w_pos[b].astype(int))
        assert t[b] == pytest.approx(roc.tpr_at_fpr(rn, rp, 0.05))


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_samples():
    from detector.harness import roc

    rng = np.random.default_rng(7)
    widths = []
    for n in (100, 1600):
        clean, adv = rng.normal(0, 1, n), rng.normal(1.5, 1, n)
        success = rng.random(n) < 0.8
        ci = paired_intervals(clean, adv, success, n_boot=500, seed=1)
        point = roc.auroc(clean, adv[success])
        assert ci["auroc_ci"][0] <= point <= ci["auroc_ci"][1]
        tpr = roc.tpr_at_fpr(clean, adv[success], 0.05)
        assert ci["tpr_at_5fpr_ci"][0] <= tpr <= ci["tpr_at_5fpr_ci"][1]
        widths.append(ci["auroc_ci"][1] - ci["auroc_ci"][0])
    assert widths[1] < 0.5 * widths[0]  # about 1/sqrt(16) = 0.25 in theory


def test_detector_files_that_do_not_match_the_weights_are_refused(tiny_artifact, tmp_path):
    from detector import Detector, NotCalibratedError
    from detector.calibration import calibrate

    art = tmp_path / "a"
    shutil.copytree(tiny_artifact, art)
    calibrate(art, device="cpu", progress=False)
    Detector.load(art, "cpu")
    tensors = load_file(str(art / "detector.safetensors"))
    good = (art / "detector.safetensors").read_bytes()
    save_file(tensors, str(art / "detector.safetensors"), metadata={"model_sha256": "0" * 64})
    cal = json.loads((art / "detector.json").read_text())  # even with detector.json pointing at that file
    cal["tensors_sha256"] = hashlib.sha256((art / "detector.safetensors").read_bytes()).hexdigest()
    (art / "detector.json").write_text(json.dumps(cal))
    with pytest.raises(NotCalibratedError, match=r"fitted to other weights: run `lgm calibrate") as e:
        Detector.load(art, "cpu")
    assert "\n" not in str(e.value)
    (art / "detector.safetensors").write_bytes(good)  # the right file, but detector.json now names another
    with pytest.raises(NotCalibratedError, match=r"does not match detector.json.*run `lgm calibrate"):
        Detector.load(art, "cpu")
    (art / "detector.safetensors").unlink()
    with pytest.raises(NotCalibratedError, match=r"detector.safetensors missing: run `lgm calibrate"):
        Detector.load(art, "cpu")
