"""The opt-in ``stability`` statistic (detector/statistics.py): its batched formula against a per-input,
per-draw loop, its noise drawn once and stored (so the score is deterministic across loads), the default
statistics unchanged, and the ONNX export computing it as ``Detector.score`` does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.calibration import calibrate
from detector.scoring import Detector
from detector.statistics import DEFAULT_GROUPS, stability
from detector.store import load_detector
from service.cli import main
from training.artifacts import load_artifact
from training.data import load_dataset

STATS = ["likelihood", "boundary", "layers", "stability"]


@pytest.fixture(scope="module")
def stable_artifact(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    art = tmp_path_factory.mktemp("stable")
    for f in ("model.safetensors", "model.json"):
        shutil.copy(tiny_artifact / f, art / f)
    calibrate(art, statistics=STATS, stability_draws=3, stability_sigma=0.05, progress=False, device="cpu")
    return art


def _test_images(art: Path, n: int = 64) -> torch.Tensor:
    meta = json.loads((art / "model.json").read_text())
    return load_dataset("digits", seed=meta["dataset"]["split_seed"]).test.x[:n].float() / 255.0


def test_batched_formula_equals_a_loop_over_inputs_and_draws(stable_artifact: Path) -> None:
    model, _ = load_artifact(stable_artifact, torch.device("cpu"))
    model.eval()
    x = _test_images(stable_artifact, 12)
    noise = torch.randn(5, *x.shape[1:], generator=torch.Generator().manual_seed(3)) * 0.1
    with torch.no_grad():
        logits = model(x).float()
        k = logits.argmax(1)
        got = stability(model, x, logits, k, noise)
        want = []
        for i in range(len(x)):
            z0 = logits[i]
            m0 = z0[k[i]] - torch.cat([z0[: k[i]], z0[k[i] + 1 :]]).max()
            drops = []
            for n in noise:
                z = model((x[i] + n).clamp(0, 1)[None]).float()[0]
                drops.append((m0 - (z[k[i]] - torch.cat([z[: k[i]], z[k[i] + 1 :]]).max())) / (m0.abs() + 1))
            want.append(torch.stack(drops).mean())
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-5)


def test_noise_is_drawn_once_stored_and_scores_are_the_same_after_loading(stable_artifact: Path) -> None:
    meta = json.loads((stable_artifact / "model.json").read_text())
    cal, sm = load_detector(stable_artifact, meta)
    assert sm.names[-1] == "stability" and "stability" in cal["score"]["statistics"]
    assert cal["score"]["stability"] == {"sigma": 0.05, "draws": 3}
    assert sm.noise is not None and tuple(sm.noise.shape) == (3, *meta["arch"]["input_shape"])
    assert 0.03 < float(sm.noise.std()) < 0.07  # the stated sigma
    x = _test_images(stable_artifact)
    a = Detector.load(stable_artifact, "cpu").score(x)
    b = Detector.load(stable_artifact, "cpu").score(x)
    assert torch.equal(a.score, b.score) and torch.equal(a.surprises, b.surprises)
    assert a.surprises.shape[1] == len(sm.names)


def test_default_calibration_leaves_it_out(tiny_artifact: Path, tmp_path: Path) -> None:
    assert "stability" not in DEFAULT_GROUPS
    for f in ("model.safetensors", "model.json"):
        shutil.copy(tiny_artifact / f, tmp_path / f)
    cal = calibrate(tmp_path, progress=False, device="cpu")
    assert "stability" not in cal["score"]["statistics"] and "stability" not in cal["score"]


def test_cli_flags_reach_the_statistic(tiny_artifact: Path, tmp_path: Path) -> None:
    for f in ("model.safetensors", "model.json"):
        shutil.copy(tiny_artifact / f, tmp_path / f)
    argv = ["calibrate", str(tmp_path), "--statistics", ",".join(STATS), "--stability-draws", "2", "--quiet"]
    assert main([*argv, "--stability-sigma", "0.02", "--device", "cpu"]) == 0
    cal = json.loads((tmp_path / "detector.json").read_text())
    assert cal["score"]["stability"] == {"sigma": 0.02, "draws": 2}
    assert main(["calibrate", str(tmp_path), "--stability-draws", "0", "--quiet"]) != 0  # out of range


def test_onnx_export_computes_it_as_the_detector_does(stable_artifact: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "stable.onnx"
    assert main(["export", str(stable_artifact), "--out", str(out)]) == 0
    det = Detector.load(stable_artifact, "cpu")
    x = _test_images(stable_artifact, 200)
    ref = det.score(x)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x.numpy()}), strict=True))
    np.testing.assert_array_equal(got["class"], ref.pred.numpy())
    thr = det.thresholds[ref.pred.numpy()]
    far = np.abs(ref.score.numpy() - thr) > 1e-3
    np.testing.assert_array_equal(got["is_adversarial"][far], ref.is_adversarial.numpy()[far])
    assert float(np.abs(got["score"] - ref.score.numpy()).max()) < 1e-2
