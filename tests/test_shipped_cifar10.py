"""The CIFAR-10 model shipped in models/cifar10: its files are intact, it was made by the training line its
provenance records on the CIFAR-10 copy its card names, and it classifies its example image."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from shipped_checks import assert_calibrated_as_recorded, assert_trained_with, recorded_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "cifar10"
PROVENANCE = json.loads((SHIPPED / "provenance.json").read_text())
# sha256 over (relative path, NUL, bytes) of the 60,000 JPEG files of the public CIFAR-10-images repository
JPEG_COPY_DIGEST = "cab9d0dd9f093e7c0ce3d5bb14b7a8f156116071f97a80f383eafa3d736c4f5a"


def test_every_shipped_file_matches_its_recorded_sha256() -> None:
    files = PROVENANCE["files"]
    assert set(files) == {"model.safetensors", "model.json", "detector.safetensors", "detector.json"}
    for name, digest in files.items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest, name
    assert sum((SHIPPED / name).stat().st_size for name in files) < 8 * 2**20  # a few MB


def test_the_detector_was_made_by_the_recorded_calibration_line() -> None:
    assert_calibrated_as_recorded(SHIPPED)


def test_the_model_was_made_by_the_recorded_training_line_on_the_named_data() -> None:
    """The recorded ``lgm train`` line, parsed by lgm's own parser, is the config model.json was trained with
    (all but --data-root, which names a folder on the machine that trained it), on the data its digest names."""
    cfg = recorded_config(PROVENANCE["train_command"])
    meta = json.loads((SHIPPED / "model.json").read_text())
    assert_trained_with(dict(meta["train"], data_root=cfg.data_root), cfg)
    assert meta["dataset"]["name"] == "folder" and meta["dataset"]["digest"] == JPEG_COPY_DIGEST
    assert meta["dataset"]["sizes"] == {"train": 45000, "calibration": 5000, "test": 10000}
    assert len(meta["history"]) == cfg.epochs
    detector = json.loads((SHIPPED / "detector.json").read_text())
    assert detector["model_sha256"] == meta["weights_sha256"]
    makefile = (ROOT / "Makefile").read_text()
    assert "CIFAR10_SHIPPED := models/cifar10" in makefile and "run-cifar10:" in makefile


def test_shipped_model_classifies_its_example_image() -> None:
    from detector.scoring import Detector

    det = Detector.load(SHIPPED, device="cpu")  # checks the weights' sha256 and the detector's model hash
    assert det.input_shape == (3, 32, 32) and len(det.class_names) == 10
    clean = [p for p in (ROOT / "examples").glob("cifar10_*.png") if not p.stem.endswith("_adversarial")]
    assert len(clean) == 1
    label = clean[0].stem.removeprefix("cifar10_")
    x = [
        np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB"), dtype=np.float32) / 255.0
        for p in (clean[0], clean[0].with_name(clean[0].stem + "_adversarial.png"))
    ]
    batch = torch.from_numpy(np.stack(x).transpose(0, 3, 1, 2).copy())
    scores = det.score(batch)
    assert det.class_names[int(scores.pred[0])] == label  # the clean image: its own class
    assert det.class_names[int(scores.pred[1])] != label  # its attacked copy: another class
    assert float((batch[1] - batch[0]).abs().max()) <= 8 / 255 + 1e-6  # within the stated budget
    noise = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(det.score(noise).is_adversarial.float().mean()) >= 0.75  # far out-of-distribution: flagged
