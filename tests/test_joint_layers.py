"""The opt-in ``layers-joint`` statistic (detector/statistics.py): one Gaussian over the tapped blocks' outputs
concatenated, scored as one statistic named ``layers``; what it computes against a direct formula, its round
trip through the stored detector, and the refusal of ``layers`` and ``layers-joint`` together."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from detector.calibration import calibrate
from detector.layers import forward_with_layers
from detector.scoring import Detector
from service.cli import main
from training.data import load_dataset

STATS = ["likelihood", "boundary", "layers-joint"]


@pytest.fixture(scope="module")
def joint_artifact(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    art = tmp_path_factory.mktemp("joint")
    for f in ("model.safetensors", "model.json"):
        shutil.copy(tiny_artifact / f, art / f)
    calibrate(art, statistics=STATS, progress=False, device="cpu")
    return art


def _test_images(art: Path, n: int = 64) -> torch.Tensor:
    meta = json.loads((art / "model.json").read_text())
    return load_dataset("digits", seed=meta["dataset"]["split_seed"]).test.x[:n].float() / 255.0


def test_one_statistic_over_the_concatenated_block_outputs(joint_artifact: Path) -> None:
    det = Detector.load(joint_artifact, "cpu")
    sm = det.score_model
    assert sm.names == ["likelihood", "boundary", "layers"]
    x = _test_images(joint_artifact)
    logits, _, layers = forward_with_layers(det.model, x)
    joint = torch.cat(layers, dim=1).double()
    assert len(sm.layer_gaussians) == 1 and sm.layer_gaussians[0].means.shape[1] == joint.shape[1]
    k = logits.argmax(1)
    direct = -sm.layer_gaussians[0].log_density(joint).gather(1, k[:, None]).squeeze(1)
    _, _, stats = sm.forward(det.model, x)
    torch.testing.assert_close(stats[:, 2], direct.to(stats.dtype), rtol=1e-5, atol=1e-4)


def test_the_stored_detector_scores_as_calibrated(joint_artifact: Path) -> None:
    x = _test_images(joint_artifact)
    a = Detector.load(joint_artifact, "cpu").score(x)
    b = Detector.load(joint_artifact, "cpu").score(x)
    assert torch.equal(a.score, b.score) and a.surprises.shape == (len(x), 3)


def test_layers_and_layers_joint_together_are_refused(tiny_artifact: Path, tmp_path: Path, capsys) -> None:
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    assert main(["calibrate", str(art), "--statistics", "likelihood,layers,layers-joint"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layers or layers-joint" in err[0]
    assert not (art / "detector.json").exists()
