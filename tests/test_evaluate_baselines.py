"""``lgm evaluate --baselines``: none (no softmax twin trained or loaded, the L-GM detector alone in every table
and renderer), a subset (exactly those columns, fit attacks only when one of them needs them), and
``bench/detection/detect.py``'s rule for which artifact it retrains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench import provenance
from bench.detection import detect
from bench.records import results
from detector import Detector
from detector.calibration import calibrate
from detector.harness.baselines import BASELINES, resolve_baselines
from detector.harness.evaluation import EvalConfig, evaluate
from training.data import load_digits
from training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["--steps", "3", "--adaptive-steps", "10", "--adaptive-restarts", "1", "--restarts", "1"]


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny_config_factory) -> Path:
    """A calibrated digits L-GM model with no softmax twin beside it."""
    out = tmp_path_factory.mktemp("baselines") / "digits"
    train(tiny_config_factory(epochs=5), out)
    calibrate(out, progress=False, device="cpu")
    return out


def _copy(art: Path, to: Path) -> Path:
    shutil.copytree(art, to, ignore=shutil.ignore_patterns("softmax_twin"))
    return to


@pytest.fixture(scope="module")
def none_run(art, tmp_path_factory) -> tuple[dict, Path]:
    """``lgm evaluate --baselines none`` from the command line, one adaptive attack and Square among three."""
    out = tmp_path_factory.mktemp("none") / "report"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    args = ["evaluate", str(art), "--attacks", "pgd,adaptive,square", "--limit", "40", *TINY,
            "--bootstrap", "50", "--batch-size", "20", "--device", "cpu", "--quiet", "--baselines", "none",
            "--out", str(out)]  # fmt: skip
    done = subprocess.run(
        [str(BIN / "lgm"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads((out / "report.json").read_text()), out


def test_none_trains_no_twin_and_reports_lgm_only(art, none_run):
    rep, out = none_run
    assert not (art / "softmax_twin").exists()
    assert not (out / "adversarial" / "calibration").exists()  # no fit attacks without a baseline
    assert list(rep["detectors"]) == ["lgm"] and rep["baselines"] == [] and rep["baselines_option"] == "none"
    for a in rep["attacks"].values():
        assert list(a["detectors"]) == ["lgm"]
    assert set(rep["worst_case"]["all"]) == {"lgm"}
    assert all(list(g["detectors"]) == ["lgm"] for g in rep["per_input_worst"].values())
    assert rep["twin_clean_accuracy"] is None and set(rep["clean_fpr"]) == {"lgm"}
    assert rep["adaptive_aims_at"] == ["lgm"] and set(rep["adaptive_objectives"]) == {"lgm"}
    assert set(rep["gradient_masking_check"]) == {"lgm"}
    assert rep["baseline_fit_attacks"] == []


def test_none_attacks_what_the_lgm_network_classifies_correctly(art, none_run):
    rep, out = none_run
    det = Detector.load(art, "cpu")
    test = load_digits().test
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:40]
    correct = det.score(test.float()[idx]).pred == test.y[idx]
    assert rep["n_attacked"] == int(correct.sum()) > 0
    for name in rep["attacks"]:
        saved = load_file(str(out / "adversarial" / f"{name}.safetensors"))
        assert set(saved) == {"lgm", "index", "y"}  # attacked on the L-GM network only
        assert torch.equal(saved["index"], idx[correct])


def test_none_report_and_renderers_say_baselines_were_not_run(none_run, tmp_path):
    rep, out = none_run
    md = (out / "report.md").read_text()
    assert "| attack | success (lgm) | literature | lgm |" in md
    assert "Baselines were not run (`--baselines none`)" in md and "softmax twin 0." not in md
    provenance.write(out, "lgm evaluate (test)", 1.5, {"evaluate_seconds": 1.0})
    rec = json.loads(results.collect("detect", out, tmp_path).read_text())
    head = results.headline(rec)
    assert "best baseline" not in head and "baselines not run" in head
    assert all(line.count("|") == 5 for line in head.splitlines() if line.startswith("|"))  # four columns
    summary = results.detect_summary(rec)
    assert "Baselines: not run" in summary and "classified correctly by the L-GM network" in summary
    assert "Baselines were not run" in results.detect_deployed(rec)


@pytest.mark.parametrize(
    ("chosen", "expect", "fitted"),
    [(["kd", "msp"], ["msp", "kd"], False), (["lid"], ["lid"], True)],
)
def test_subset_reports_exactly_that_subset(art, tmp_path, chosen, expect, fitted):
    a = _copy(art, tmp_path / "digits")
    out = tmp_path / "report"
    cfg = EvalConfig(str(a), str(out), ["fgsm", "adaptive"], baselines=chosen, limit=40, batch_size=20,
                     device="cpu", quiet=True, n_boot=50,
                     budgets={"steps": 3, "adaptive_steps": 10, "adaptive_restarts": 1})  # fmt: skip
    rep = evaluate(cfg)
    assert list(rep["detectors"]) == ["lgm", *expect] and rep["baselines"] == expect
    for at in rep["attacks"].values():
        assert list(at["detectors"]) == ["lgm", *expect]
    assert set(rep["worst_case"]["all"]) == {"lgm", *expect} and set(rep["clean_fpr"]) == {"lgm", *expect}
    assert rep["adaptive_aims_at"] == ["lgm", *(n for n in expect if n != "lid")]  # lid is not differentiable
    # the calibration attacks are made only when a chosen baseline is fitted on them
    assert (out / "adversarial" / "calibration" / "fgsm.safetensors").exists() == fitted
    assert rep["baseline_fit_attacks"] == (["fgsm", "deepfool"] if fitted else [])
    assert (
        f"Baselines run: {', '.join(expect)} (`--baselines {','.join(chosen)}`)"
        in (out / "report.md").read_text()
    )


def test_resolve_baselines_from_the_registry():
    assert resolve_baselines(["all"]) == list(BASELINES) and resolve_baselines(["none"]) == []
    assert resolve_baselines(["kd", "msp", "kd"]) == ["msp", "kd"]  # registry order, no repeats
    for bad, needle in (
        (["nope"], "unknown baseline 'nope'"),
        (["none", "kd"], "cannot be combined"),
        ([], "give"),
    ):
        with pytest.raises(ValueError, match=needle):
            resolve_baselines(bad)


@pytest.mark.parametrize(
    ("value", "needle"),
    [("msp,nope", "--baselines must be a comma list of msp, "), ("none,kd", "'none' cannot be combined")],
)
def test_bad_baselines_fail_with_one_line(art, tmp_path, value, needle):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    args = ["evaluate", str(art), "--baselines", value, "--out", str(tmp_path / "r")]
    r = subprocess.run(
        [str(BIN / "lgm"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in lines[0]
    assert not (tmp_path / "r").exists() and not (art / "softmax_twin").exists()


def test_bench_detect_never_retrains_a_given_artifact(art, tmp_path, monkeypatch):
    assert detect.stale_reason(art) is None  # a digits model, not the mnist5k defaults: measured as it is
    assert detect.stale_reason(tmp_path / "missing") == "missing"
    # the same model in the default folder is the script's stale cache: retrained
    monkeypatch.setattr(detect, "ROOT", tmp_path)
    default = _copy(art, tmp_path / detect.DEFAULT_ARTIFACT)
    assert detect.stale_reason(default).startswith("trained with other defaults")
    assert detect.stale_reason(Path(os.path.relpath(default))) is not None  # however the path is spelt
