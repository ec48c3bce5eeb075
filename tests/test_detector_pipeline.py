"""Detector end to end on a tiny digits model: scoring, calibration, evaluation, sharding and bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from procs import run_group
from safetensors.torch import load_file

from detector import Detector, NotCalibratedError
from detector.calibration import calibrate
from detector.harness.evaluation import EvalConfig, evaluate
from detector.harness.report import markdown
from training.artifacts import ArtifactError
from training.data import load_digits, stratified_split
from training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {"steps": 5, "adaptive_steps": 15, "adaptive_restarts": 1, "restarts": 1, "deepfool_steps": 10}


@pytest.fixture(scope="session")
def art(tmp_path_factory, tiny_config_factory) -> Path:
    """A calibrated digits L-GM model with its softmax twin (seconds to train)."""
    out = tmp_path_factory.mktemp("detector") / "digits"
    cfg = tiny_config_factory(epochs=5)
    train(cfg, out)
    cfg.head = "softmax"
    train(cfg, out / "softmax_twin")
    calibrate(out, progress=False, device="cpu")
    return out


def _config(art: Path, out: Path, **overrides) -> EvalConfig:
    """The test evaluation: three attacks on 48 test digits at tiny budgets."""
    base = dict(
        limit=48,
        budgets=TINY,
        batch_size=12,
        device="cpu",
        quiet=True,
        n_boot=200,
        command="lgm evaluate (test)",
    )
    return EvalConfig(str(art), str(out), ["fgsm", "pgd", "adaptive"], **{**base, **overrides})


@pytest.fixture(scope="session")
def report(art, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("report")
    cfg = _config(art, out)
    return evaluate(cfg), out


# Deadline of one `lgm` command: a few seconds for a refused option on an idle 2-core machine, about 20 s with both
# cores kept busy by another process, a minute or two for the tiny evaluations below there. Two of them fit in the
# torchrun test's pytest timeout.
LGM_DEADLINE_S = 300


def _lgm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **(env or {}))
    return run_group([BIN / "lgm", *args], deadline_s=LGM_DEADLINE_S, env=e, cwd=ROOT)


# -- scoring ----------------------------------------------------------------------------------------------
def test_scores_shapes_and_ranges(art):
    det = Detector.load(art, "cpu")
    ds = load_digits()
    s = det.score(ds.test.float()[:50])
    assert s.pred.shape == (50,) and s.pred.dtype == torch.int64
    assert s.probs.shape == (50, 10)
    torch.testing.assert_close(s.probs.sum(1), torch.ones(50))
    assert ((s.abnormality >= 0) & (s.abnormality <= 1)).all()
    assert not (s.log_likelihood < s.threshold)[
        ~s.is_adversarial
    ].any()  # below the threshold implies flagged
    assert s.surprises.shape == (50, len(det.score_model.names)) and (s.surprises >= 0).all()
    assert not s.log_likelihood.requires_grad
    info = det.info()
    assert info["mode"] == "clean" and info["target_fpr"] == 0.05 and len(info["class_thresholds"]) == 10


def test_clean_false_positive_rate_holds_on_unseen_inputs(art):
    """The thresholds are set at the target FPR on the calibration split; the share of clean inputs flagged is
    at most the target there, and on the unseen test split within three binomial standard errors of it."""
    det = Detector.load(art, "cpu")
    target = float(det.calibration["target_fpr"])
    ds = load_digits()
    cal_fpr = float(det.score(ds.calibration.float()).is_adversarial.double().mean())
    assert cal_fpr <= target
    n = len(ds.test)
    test_fpr = float(det.score(ds.test.float()).is_adversarial.double().mean())
    assert test_fpr <= target + 3 * (target * (1 - target) / n) ** 0.5


def test_abnormality_monotone_in_score(art):
    det = Detector.load(art, "cpu")
    s = det.score(load_digits().test.float())
    for k in s.pred.unique():
        sel = s.pred == k
        order = torch.argsort(s.score[sel])
        a = s.abnormality[sel][order]
        assert (a[1:] >= a[:-1] - 1e-6).all()  # a higher score is never less abnormal


def test_clean_calibration_fpr_at_most_target(art):
    cal = json.loads((art / "detector.json").read_text())
    assert cal["figures"]["clean_fpr"] <= cal["target_fpr"] + 1e-9
    assert cal["split"] == "calibration"


def test_calibration_split_disjoint_from_train_and_test():
    y = np.repeat(np.arange(10), 57)
    tr, ca, te = stratified_split(y, (0.7, 0.1, 0.2), seed=3)
    assert not set(tr) & set(ca) and not set(ca) & set(te) and not set(tr) & set(te)
    assert len(tr) + len(ca) + len(te) == len(y)
    ds = load_digits()  # the real split: no calibration image is a train or test image (byte for byte)
    key = lambda x: {bytes(r) for r in x.reshape(len(x), -1).numpy()}  # noqa: E731
    assert not key(ds.calibration.x) & key(ds.test.x)
    assert len(key(ds.calibration.x) & key(ds.train.x)) == 0


def test_missing_and_uncalibrated_artifacts(art, tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact"):
        Detector.load(tmp_path / "nope")
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("model.json", "model.safetensors"):
        shutil.copy(art / f, bare / f)
    with pytest.raises(NotCalibratedError, match="lgm calibrate"):
        Detector.load(bare)
    cal = json.loads((art / "detector.json").read_text())
    cal["model_sha256"] = "0" * 64
    (bare / "detector.json").write_text(json.dumps(cal))
    with pytest.raises(NotCalibratedError, match="other weights: run `lgm calibrate"):
        Detector.load(bare)


def test_roc_mode_calibration(art, tmp_path):
    roc_art = tmp_path / "roc"
    shutil.copytree(art, roc_art, ignore=shutil.ignore_patterns("softmax_twin"))
    from detector.harness.calibration_roc import calibrate_roc

    cal = calibrate_roc(
        roc_art,
        rule="youden",
        kind="global",
        attacks=["fgsm"],
        budgets={"steps": 2},
        limit=40,
        device="cpu",
        progress=False,
    )
    assert cal["mode"] == "roc" and cal["attacks"] == ["fgsm"] and cal["threshold_kind"] == "global"
    assert 0.0 <= cal["figures"]["auroc"] <= 1.0 and "fgsm" in cal["figures"]["attacks"]
    det = Detector.load(roc_art, "cpu")
    assert det.info()["attacks"] == ["fgsm"]


# -- evaluation -------------------------------------------------------------------------------------------
def test_report_schema(report):
    rep, out = report
    for key in ("dataset", "n_clean", "clean_accuracy", "attacks", "worst_case"):
        assert key in rep
    assert rep["dataset"] == "digits" and rep["n_clean"] == 48
    assert rep["data_root"] is None and (out / "report.md").read_text().startswith(
        "# Detection report: digits\n"
    )
    # a folder dataset's report names its files by the card's digest
    folder = markdown({**rep, "data_root": "data/x", "data_digest": "ab" * 32})
    assert folder.startswith("# Detection report: digits `data/x` (sha256 abababababab)\n")
    for name, a in rep["attacks"].items():
        assert set(a) >= {"budget", "success_rate", "n_success", "seen_in_calibration", "detectors"}
        assert a["seen_in_calibration"] is False and a["budget"]["eps"] == 0.3
        for d in ("lgm", "msp", "mahalanobis", "mahalanobis_full", "lid", "kd"):
            m = a["detectors"][d]
            assert set(m) >= {
                "auroc",
                "auroc_ci",
                "tpr_at_5fpr",
                "tpr_at_5fpr_ci",
                "detection_accuracy",
                "fooled_and_undetected",
                "detect_or_correct",
                "robust_accuracy",
            }, (name, d)
            if m["auroc_ci"] is not None:
                assert m["auroc_ci"][0] <= m["auroc"] <= m["auroc_ci"][1]
            assert m["seen_in_fit"] == (d in ("mahalanobis_full", "lid") and name == "fgsm")
    assert set(rep["worst_case"]["all"]) == {"lgm", "msp", "mahalanobis", "mahalanobis_full", "lid", "kd"}
    assert rep["baseline_fit_attacks"] == ["fgsm", "deepfool"]
    assert rep["baselines_option"] == "all" and rep["baselines"] == [
        "msp",
        "mahalanobis",
        "mahalanobis_full",
        "lid",
        "kd",
    ]
    assert json.loads((out / "report.json").read_text())["attacks"].keys() == rep["attacks"].keys()
    md = (out / "report.md").read_text()
    assert "| fgsm |" in md and "lgm evaluate (test)" in md
    for png in ("roc.png", "loglik_hist.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_only_successful_adversarials_are_positives(art, report):
    rep, out = report
    det = Detector.load(art, "cpu")
    for name, a in rep["attacks"].items():
        saved = load_file(str(out / "adversarial" / f"{name}.safetensors"))
        pred = det.score(saved["lgm"]).pred
        n_success = int((pred != saved["y"]).sum())
        assert a["n_success"] == n_success == a["detectors"]["lgm"]["n_positive"]
        assert a["detectors"]["lgm"]["n_negative"] == a["n_attacked"] == len(saved["y"])
        x_clean = load_digits().test.float()[saved["index"]]
        assert (det.score(x_clean).pred == saved["y"]).all()  # only correctly classified inputs were attacked
        assert (saved["lgm"] - x_clean).abs().max() <= 0.3 + 1e-6


@pytest.mark.parametrize("det", ["lgm", "mahalanobis", "mahalanobis_full", "kd"])
def test_adaptive_attack_defeats_each_detector_it_follows_more_than_pgd(report, det):
    rep, _ = report
    pgd, ada = rep["attacks"]["pgd"]["detectors"][det], rep["attacks"]["adaptive"]["detectors"][det]
    assert ada["fooled_and_undetected"] > pgd["fooled_and_undetected"], (det, pgd, ada)
    assert det in rep["adaptive_aims_at"]


def test_reuse_rescores_without_attacking(art, report, monkeypatch):
    rep, out = report
    import detector.harness.evaluation as ev

    def boom(*a, **k):
        raise AssertionError("attacked again")

    monkeypatch.setattr(ev, "sharded_attack", boom)
    cfg = _config(art, out, reuse=True)
    again = evaluate(cfg)
    assert again["attacks"] == rep["attacks"]


def _comparable(rep: dict) -> dict:
    return {k: v for k, v in rep.items() if k not in ("timing", "run", "command", "artifact")}


@pytest.mark.timeout(3 * LGM_DEADLINE_S)  # two commands, each with its own deadline, and the comparison
def test_two_rank_torchrun_equals_one_rank(art, tmp_path):
    args = [
        "evaluate",
        str(art),
        "--attacks",
        "fgsm,pgd",
        "--limit",
        "40",
        "--batch-size",
        "10",
        "--steps",
        "3",
        "--restarts",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ]
    one = _lgm(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    # run_group: on the deadline torchrun's ranks are killed with it, not left to load the tests after this one.
    # --local-addr: the ranks reach the rendezvous store on the loopback address, not through the host's name.
    two = run_group(
        [
            BIN / "torchrun",
            "--standalone",
            "--nproc-per-node",
            "2",
            "--local-addr",
            "127.0.0.1",
            BIN / "lgm",
            *args,
            "--out",
            tmp_path / "two",
        ],
        deadline_s=LGM_DEADLINE_S,
        env=e,
        cwd=ROOT,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    r1 = json.loads((tmp_path / "one" / "report.json").read_text())
    r2 = json.loads((tmp_path / "two" / "report.json").read_text())
    assert r2["run"]["world_size"] == 2 and r1["run"]["world_size"] == 1
    assert _comparable(r1) == _comparable(r2)
    for name in ("fgsm", "pgd"):
        a = load_file(str(tmp_path / "one" / "adversarial" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "two" / "adversarial" / f"{name}.safetensors"))
        for k in a:
            torch.testing.assert_close(a[k], b[k])


# -- bad inputs from the command line ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["evaluate", "{art}", "--attacks", "fgsm,nope", "--out", "{tmp}/r"], "unknown attack 'nope'"),
        (["evaluate", "{tmp}/missing", "--out", "{tmp}/r"], "no such artifact folder"),
        (["evaluate", "{bare}", "--out", "{tmp}/r"], "run `lgm calibrate"),
        (["evaluate", "{art}", "--eps", "1.5", "--out", "{tmp}/r"], "--eps must be in (0, 1]"),
        (["evaluate", "{art}", "--steps", "0", "--out", "{tmp}/r"], "--steps must be in [1, 10000]"),
        (["evaluate", "{art}", "--eps-l2", "-1", "--out", "{tmp}/r"], "--eps-l2 must be > 0"),
        (["calibrate", "{art}", "--target-fpr", "1.5"], "--target-fpr must be in (0, 1)"),
        (["calibrate", "{art}", "--gaussians", "full"], "--gaussians must be one of tied, per-class, head"),
        (["calibrate", "{art}", "--statistics", "likelihood,lid"], "--statistics must be a comma list of"),
        (
            ["evaluate", "{art}", "--bootstrap", "5", "--out", "{tmp}/r"],
            "--bootstrap must be in [10, 100000]",
        ),
        (["calibrate", "{art}", "--mode", "roc", "--attacks", "nope"], "unknown attack 'nope'"),
        (["calibrate", "{tmp}/missing"], "no such artifact folder"),
    ],
)
def test_cli_bad_inputs_one_line(art, tmp_path, args, needle):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("model.json", "model.safetensors"):
        shutil.copy(art / f, bare / f)
    before = (art / "detector.json").read_bytes()
    r = _lgm(*[a.format(art=art, tmp=tmp_path, bare=bare) for a in args])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in lines[0]
    assert (art / "detector.json").read_bytes() == before  # a failed command changes nothing
    assert not (tmp_path / "r" / "report.json").exists()
